"""The proofs on real models: 20 prompts of the sample data get base-vs-adapter pairs from the
default model and the shared quick-plan run; two annotators rate them through the queue, the majority
export passes the data check, and a DPO run trains on it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from studio import rundir, workspace
from studio.prefs import agreement, pairs, queue, records, store
from studio.train import runs
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "studio", *args], cwd=ROOT, capture_output=True, text=True, timeout=1500,
        env={**os.environ},
    )  # fmt: skip


def test_base_vs_adapter_pairs_on_the_default_model(default_model, default_tuned_run):
    adapter = str(default_tuned_run / "adapter")
    made = _run(
        "pairs", "generate", "--dataset", "sample:alpaca.jsonl", "--limit", "20",
        "--a", default_model, "--b", default_model, "--b-adapter", adapter, "--max-new-tokens", "16",
    )  # fmt: skip
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    [job_id] = pairs.list_jobs()
    got = pairs.read_pairs(job_id)
    assert sorted(p.prompt_id for p in got) == list(range(20))
    assert all(p.answer_a.strip() and p.answer_b.strip() for p in got)
    assert sum(p.answer_a != p.answer_b for p in got) >= 5  # the adapter changes what it says
    assert got[0].source_b == f"{default_model} + {adapter} (greedy)"

    for name in ("alice", "bob"):  # both prefer the adapter's answer
        q = queue.RatingQueue(job_id, name, overlap=2)
        while (shown := q.next()) is not None:
            q.vote("first" if shown.shown_first == "B" else "second")
    resolved = agreement.majority(store.all_votes())
    assert (resolved.resolved, resolved.dropped_ties) == (20, 0)
    assert agreement.agreement(store.all_votes()).percent == 1.0
    out = workspace.exports_dir() / "team.jsonl"
    records.write_jsonl(out, records.dpo_records(resolved.votes))
    check = _run("data", "check", str(out), "--method", "dpo")
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_dpo_run_trains_on_the_majority_export(tiny_model, tmp_path):
    job = pairs.new_job(
        [[{"role": "user", "content": f"Q{i}?"}] for i in range(4)], pairs.Source(), pairs.Source()
    )
    for p in job.prompts:
        i = p["id"]
        pair = pairs.Pair(
            pairs.pair_id(job.job_id, i), i, p["messages"], f"Good answer {i}.", f"Bad {i}.", "a", "b"
        )
        pairs.append_pair(job.job_id, pair)
    for name in ("alice", "bob", "carol"):
        q = queue.RatingQueue(job.job_id, name, overlap=3)
        while (shown := q.next()) is not None:
            q.vote("first" if shown.shown_first == "A" else "second")
    out = tmp_path / "team.jsonl"
    exported = _run("votes", "export", str(out), "--majority")
    assert exported.returncode == 0 and "4 records" in exported.stdout, exported.stderr
    sets = [f"model={tiny_model}", f"dataset={out}", "max_steps=2"]
    run_id = runs.submit(str(ROOT / "recipes" / "dpo.yaml"), sets, "dpo")
    deadline = time.monotonic() + 300
    while (state := runs.get(run_id).state) not in ("completed", "failed", "stopped"):
        runs.schedule()
        assert time.monotonic() < deadline, f"DPO run stuck in {state}"
        time.sleep(1)
    assert state == "completed", rundir.log_tail(workspace.run_path(run_id))
    assert (runs.get(run_id).path / "adapter" / "adapter_config.json").is_file()
