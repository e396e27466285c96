"""The proof that the guided path's defaults visibly teach: on the embedded model and the sample
data, the quick plan's run (the recipe and `--set`s that `python -m studio tune` and the Train tab's
guided view queue; run once per session by the `default_tuned_run` fixture) makes the greedy answers
to held-out questions open in the data's style ("Short answer: ... Why: ...") on at least 4 of 5,
within 10 minutes on a 2-core CPU."""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest


@pytest.mark.slow
def test_the_quick_plan_teaches_the_sample_style_within_ten_minutes(default_tuned_run):
    run_dir = default_tuned_run
    plan = json.loads((run_dir / "plan.json").read_text())
    assert "quantization.load_in_4bit=false" in plan["sets"]  # the plan the guided path makes on a CPU
    probes = json.loads((run_dir / "probes.json").read_text())
    assert len(probes["prompts"]) == 5
    before = sum(a.lstrip().startswith("Short answer:") for a in probes["before"])
    after = sum(a.lstrip().startswith("Short answer:") for a in probes["after"])
    status = json.loads((run_dir / "status.json").read_text())
    took = datetime.fromisoformat(status["ended_at"]) - datetime.fromisoformat(status["started_at"])
    print(f"quick plan: {plan['steps']} steps in {took}; style before {before}/5, after {after}/5")
    assert after >= 4, probes["after"]
    assert before <= 1, probes["before"]  # the base does not answer this way on its own
    assert took.total_seconds() < 600 * max(1.0, os.getloadavg()[0] / 2), took  # 10 min on an idle 2-core CPU
