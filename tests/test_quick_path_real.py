"""The proof that the guided path's defaults visibly teach: on the embedded model and the sample
data, the quick plan's run (the recipe and `--set`s `python -m studio tune` and the Train tab's
guided view queue) makes the greedy answers to held-out questions open in the data's style
("Short answer: ... Why: ...") on at least 4 of 5, within 10 minutes of training on a 2-core CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_the_quick_plan_teaches_the_sample_style_within_ten_minutes(default_model, tmp_path):
    from studio.train import tune

    prompts = [p for p in (ROOT / "sample_data" / "heldout_prompts.txt").read_text().splitlines() if p][:5]
    plan = tune.plan("sample:alpaca.jsonl", default_model, "style", "quick")
    sets = tune.sets_for(plan, "sample:alpaca.jsonl", default_model)
    sets += ["probes.prompts=" + json.dumps(prompts), "probes.max_new_tokens=24"]
    run_dir = tmp_path / "quick"
    argv = [sys.executable, "-m", "studio", "train", plan.recipe, "--run-dir", str(run_dir)]
    for item in sets:
        argv += ["--set", item]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1800, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    probes = json.loads((run_dir / "probes.json").read_text())
    before = sum(a.lstrip().startswith("Short answer:") for a in probes["before"])
    after = sum(a.lstrip().startswith("Short answer:") for a in probes["after"])
    status = json.loads((run_dir / "status.json").read_text())
    took = datetime.fromisoformat(status["ended_at"]) - datetime.fromisoformat(status["started_at"])
    print(
        f"quick plan: {plan.steps} steps in {took}; style before {before}/5, after {after}/5, load {os.getloadavg()}"
    )
    assert after >= 4, probes["after"]
    assert before <= 1, probes["before"]  # the base does not answer this way on its own
    assert took.total_seconds() < 600 * max(1.0, os.getloadavg()[0] / 2), took  # 10 min on an idle 2-core CPU
