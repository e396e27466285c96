"""The honest time estimate: the pace of recent steps (not elapsed / steps, which counts loading),
the time left read back from status.json, the plain note when the machine is busy, the warm-up's
output read back; and for real on the tiny model, `python -m studio tune --measure` times a
warm-up, queues the run, and the run takes what the estimate said, within 2x."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime

import pytest

from studio.train import autotune, pace, warmup
from tests.conftest import ROOT

GB = 1e9


def test_the_pace_leaves_out_the_first_step_and_restarts_after_a_resume():
    clock = pace.StepClock(window=3)
    clock.step_ended(1, 100.0)  # the first step also paid for loading: only a starting mark
    assert clock.seconds_per_step() is None and clock.status_fields(1, 10) == {}
    for step, at in [(2, 101.0), (3, 102.0), (4, 103.0), (5, 107.0)]:
        clock.step_ended(step, at)
    assert clock.seconds_per_step() == pytest.approx(2.0)  # steps 2-5 only: (107 - 101) / 3
    fields = clock.status_fields(5, 10, now_wall=5000.0)
    assert fields == {"step_seconds": 2.0, "seconds_left": 10.0, "pace_at": 5000.0}
    clock.step_ended(3, 200.0)  # resumed from a checkpoint at step 2
    assert clock.seconds_per_step() is None


def test_time_left_counts_down_from_what_the_trainer_wrote():
    status = {"state": "running", "step": 5, "max_steps": 10, "step_seconds": 2.0, "seconds_left": 10.0}
    status["pace_at"] = 5000.0
    assert pace.time_left(status, now_wall=5004.0) == pytest.approx(6.0)
    assert pace.time_left(status, now_wall=5100.0) == 0.0
    assert pace.time_left({**status, "state": "completed"}, now_wall=5004.0) is None
    assert (
        pace.progress_words(status, now_wall=5004.0)
        == "step 5 of 10 · under a minute left (2 s a step lately)"
    )
    slow = {**status, "seconds_left": 1000.0}
    assert "about 17 min left" in pace.progress_words(slow, now_wall=5004.0)
    starting = {"state": "running", "step": 0, "max_steps": 10}
    assert "loading the model" in pace.progress_words(starting)


def test_runs_list_says_the_time_left_of_a_running_run(capsys):
    from studio import cli, rundir, workspace

    folder = workspace.run_path("20261130-030000-sft")
    folder.mkdir(parents=True)
    status = {"state": "running", "step": 10, "max_steps": 100, "step_seconds": 2.0, "seconds_left": 180.0}
    rundir.write_status(folder, {**status, "pace_at": time.time()})
    assert cli.main(["runs", "list"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("20261130-030000-sft  ") and " running " in line
    assert line.endswith("10/100  ?  ?  ?  (about 3 min left)")


def test_the_busy_note_names_what_slows_training_down():
    assert pace.busy_note(2.2, 2, training_here=2) == ""  # the run itself keeps both cores busy
    assert "load 4.5 on 2 cores" in pace.busy_note(4.5, 2, training_here=2)
    both = pace.busy_note(1.0, 8, training_here=8, other_runs=("20261130-0101-sft",))
    assert both.startswith("Another run is training at the same time (20261130-0101-sft)")
    assert "processor" not in both


def test_the_warm_up_output_is_read_back_or_its_failure_named():
    line = warmup.MARK + json.dumps(
        {"step_seconds": [4.0, 1.0, 2.0, 3.0], "load_seconds": 20, "probe_seconds": 2.5, "probes": 2}
    )
    timing = warmup.parse(f"[studio] step=1 loss=2\n{line}\n")
    assert timing.per_step == 2.0  # the first (warm-up) step is not counted
    assert timing.overhead_seconds == 30.0  # loading + 2 questions asked before and after
    assert timing.total_seconds(60) == 150.0
    assert timing.words(60) == (
        "about 2 min on this machine (measured: 2 s a step × 60 steps, plus 20 s to load and 10 s "
        "for the test questions)"
    )
    said = "[studio] cannot start: data/x.jsonl: not found — check the path\nsome library warning"
    with pytest.raises(ValueError, match="the warm-up could not train: cannot start: data/x.jsonl"):
        warmup.parse("[studio] step=1 loss=2", said, 2)
    crash = "Traceback (most recent call last):\n  File x\nRuntimeError: out of memory"
    with pytest.raises(ValueError, match="could not train: RuntimeError: out of memory"):
        warmup.parse("[studio] step=1 loss=2", crash, 1)


def test_the_measured_pace_caps_the_steps_with_loading_counted():
    facts = autotune.Facts(135e6, 16 * GB, "cpu", 4000, 100, step_seconds=2.0, overhead_seconds=60.0)
    plan = autotune.choose(facts)
    assert plan.steps == 120 and plan.seconds == 300.0  # (5 min - 60 s of loading) / 2 s
    reason = next(c.reason for c in plan.choices if c.field == "training.max_steps")
    assert "fit the quick budget on this machine (2 s a step, measured)" in reason
    small = autotune.choose(autotune.Facts(135e6, 16 * GB, "cpu", 42, 90, step_seconds=0.5))
    assert small.steps == 24 and small.seconds == 12.0  # 3 passes fit: the budget does not cut them


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@pytest.mark.slow
@pytest.mark.serial
def test_tune_measure_estimates_the_real_run_within_2x(tiny_model, studio_home):
    env = {**os.environ, "STUDIO_HOME": str(studio_home)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "studio",
            "tune",
            "sample:alpaca.jsonl",
            "--model",
            str(tiny_model),
            "--measure",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = re.search(
        r"Time: .* on this machine \(measured: ([\d.]+) s a step × (\d+) steps, plus (\d+) s to load"
        r" and (\d+) s for the test questions\)",
        proc.stdout,
    )
    assert said, proc.stdout
    per_step, steps, overhead = float(said[1]), int(said[2]), int(said[3]) + int(said[4])
    run_id = re.search(r"Queued run (\S+):", proc.stdout)[1]
    run_dir = studio_home / "runs" / run_id
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = json.loads((run_dir / "status.json").read_text() or "{}")
        if status.get("state") in ("completed", "failed", "stopped"):
            break
        time.sleep(1)
    assert status["state"] == "completed", (run_dir / "train.log").read_text()[-3000:]
    assert status["max_steps"] == steps

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = {row["step"]: row["time"] for row in rows if "loss" in row}
    ran_per_step = (times[steps] - times[1]) / (steps - 1)  # the training steps, loading left out
    assert 0.5 <= per_step / ran_per_step <= 2.0, (per_step, ran_per_step)
    assert 0.5 <= status["step_seconds"] / ran_per_step <= 2.0  # the pace the trainer wrote
    launch = json.loads((run_dir / "launch.json").read_text())
    took = _seconds(status["ended_at"]) - _seconds(launch["created_at"])
    estimate = overhead + steps * per_step
    assert 0.5 <= estimate / took <= 2.0, (estimate, took)
