"""Run lifecycle with real training subprocesses on the tiny model: queue, stop, kill, resume,
re-attach after the app forgets its children, delete and duplicate."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from studio import rundir, workspace
from studio.train import runs

RECIPE = "recipes/lora_sft.yaml"


def _sets(tiny_model, steps: int, save_steps: int = 2) -> list[str]:
    return [
        f"model={tiny_model}",
        f"max_steps={steps}",
        f"training.save_steps={save_steps}",
        "data.eval_split=0",
        "probes.prompts=[]",
    ]


def _wait(run_id: str, states: tuple[str, ...], timeout: float = 120.0, min_step: int = 0) -> runs.RunInfo:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs.schedule()
        info = runs.get(run_id)
        if info.state in states and int(info.status.get("step") or 0) >= min_step:
            return info
        time.sleep(0.5)
    raise AssertionError(
        f"{run_id} stayed {info.state} (step {info.status.get('step')}):\n{rundir.log_tail(workspace.run_path(run_id))}"
    )


def _group(run_id: str) -> list[psutil.Process]:
    pgid = runs.get(run_id).launch["pgid"]
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


def test_two_launches_queue_in_order_never_both_running(tiny_model):
    first = runs.submit(RECIPE, _sets(tiny_model, 3), "sft")
    second = runs.submit(RECIPE, _sets(tiny_model, 2), "sft")
    assert runs.get(second).state == "queued"
    seen = []  # (first's state, second's state) at every tick, in order
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        runs.schedule()  # what the app's scheduler thread does every 2 s
        states = {r.run_id: r.state for r in runs.list_runs()}
        seen.append((states[first], states[second]))
        if all(s == "completed" for s in states.values()):
            break
        time.sleep(0.3)
    a, b = runs.get(first), runs.get(second)
    assert (a.state, b.state) == ("completed", "completed"), rundir.log_tail(workspace.run_path(second))
    # Order is judged by what the ticks saw, not by wall-clock stamps (a stepped clock moves those):
    # the second run waits queued until the first has completed, and the first never looks dead.
    assert "failed" not in {state for pair in seen for state in pair}, seen
    for first_state, second_state in seen:
        if second_state != "queued":
            assert first_state == "completed", seen
    assert (b.path / "adapter" / "adapter_config.json").is_file()


def test_runs_queued_within_one_second_start_in_the_order_they_were_queued(tiny_model):
    ids = [runs.submit(RECIPE, _sets(tiny_model, 2), "sft") for _ in range(4)]
    order = [info.run_id for info in runs.queue_order(runs.list_runs())]
    assert order == ids


def test_listing_runs_only_reads(tiny_model):
    """The Runs tab lists runs every tick: listing must never start a queued run."""
    run_id = runs.submit(RECIPE, _sets(tiny_model, 2), "sft")
    runs.stop(run_id)  # a queued run stops at once; queue another behind nothing
    other = runs.duplicate(run_id)
    for _ in range(3):
        listed = {r.run_id: r.state for r in runs.list_runs()}
    assert listed[other] == "queued" and "pid" not in runs.get(other).launch
    runs.schedule()
    assert runs.get(other).state in ("starting", "running") and runs.get(other).launch["pid"]
    runs.stop(other)
    _wait(other, ("stopped", "completed"))


def test_stop_checkpoints_leaves_no_process_and_resume_completes(tiny_model):
    run_id = runs.submit(RECIPE, _sets(tiny_model, 400, save_steps=1000), "sft")
    _wait(run_id, ("running",), min_step=3)
    assert _group(run_id), "the run's process group should be alive while it trains"
    runs.stop(run_id, grace_s=60)
    info = _wait(run_id, ("stopped",), timeout=90)
    deadline = time.monotonic() + 10
    while _group(run_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group(run_id), "stop left processes of the run alive"
    assert list((info.path / "checkpoints").glob("checkpoint-*")), "SIGTERM should save a checkpoint"
    stopped_at = int(info.status["step"])
    assert 0 < stopped_at < 400

    runs.resume(run_id)
    _wait(run_id, ("running",), min_step=stopped_at + 1)
    runs.stop(run_id, grace_s=60)
    _wait(run_id, ("stopped",), timeout=90)
    steps = [row["step"] for row in rundir.read_metrics(workspace.run_path(run_id)) if "loss" in row]
    assert steps == sorted(set(steps)), "a resumed run must not repeat steps in metrics.jsonl"


def test_killed_run_is_marked_failed_with_its_log_tail(tiny_model):
    run_id = runs.submit(RECIPE, _sets(tiny_model, 400, save_steps=1000), "sft")
    _wait(run_id, ("running",), min_step=2)
    os.killpg(runs.get(run_id).launch["pgid"], signal.SIGKILL)
    info = _wait(run_id, ("failed",), timeout=30)
    assert "ended without reporting" in info.status["error"]
    assert "SIGKILL" in info.status["error"] and "out-of-memory" in info.status["error"]
    assert "[studio]" in info.status["error"], "the failure should carry the last lines of train.log"


def test_run_is_reattached_after_the_app_forgets_it(tiny_model):
    run_id = runs.submit(RECIPE, _sets(tiny_model, 40, save_steps=1000), "sft")
    _wait(run_id, ("running",), min_step=1)
    runs._procs.clear()  # what an app restart looks like: no Popen handles, only the run folder
    assert runs.get(run_id).state == "running"
    assert runs.active_run().run_id == run_id
    info = _wait(run_id, ("completed",), timeout=180)
    assert info.status["step"] == 40


def test_delete_duplicate_and_guards(tiny_model):
    run_id = runs.submit(RECIPE, _sets(tiny_model, 2), "sft")
    with pytest.raises(ValueError, match="only a stopped or failed run"):
        runs.resume(run_id)
    _wait(run_id, ("completed",), timeout=120)
    copy = runs.duplicate(run_id)
    assert copy != run_id
    assert runs.get(copy).launch["sets"] == runs.get(run_id).launch["sets"]
    runs.stop(copy)  # queued or starting: stops before training
    _wait(copy, ("stopped", "completed"), timeout=120)
    runs.delete(run_id)
    assert not (runs.get(copy).path.parent / run_id).exists()
    with pytest.raises(ValueError, match="no run"):
        runs.get(run_id)
    with pytest.raises(ValueError, match="not allowed"):
        runs.get("../etc")


def test_train_command_is_never_a_shell_string(tmp_path):
    argv = runs.train_command("recipes/x.yaml", ["dataset=my data; rm -rf /"], tmp_path, 2)
    assert isinstance(argv, list) and "--multi_gpu" in argv
    assert "dataset=my data; rm -rf /" in argv  # one argument, never interpreted by a shell


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_step_0(tiny_model):
    from studio import cli

    run_id = runs.submit(RECIPE, _sets(tiny_model, 6, save_steps=1000), "sft")
    runs.stop(run_id)  # still queued: no process, no checkpoint
    info = runs.get(run_id)
    assert info.state == "stopped" and info.status["error"] == rundir.NOTHING_TO_RESUME

    assert cli.main(["runs", "resume", run_id]) == 0  # the Runs tab's Resume calls the same function
    info = _wait(run_id, ("completed",), timeout=180)
    assert info.path == workspace.run_path(run_id) and info.status["step"] == 6
    steps = [row["step"] for row in rundir.read_metrics(info.path) if "loss" in row]
    assert steps == list(range(1, 7)), "started again from step 0, with no step logged twice"


def test_the_trainer_stopped_before_training_says_nothing_to_resume_then_resumes(tiny_model, tmp_path):
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "studio", "train", RECIPE, "--run-dir", str(run_dir)]
    for item in _sets(tiny_model, 4, save_steps=1000):
        argv += ["--set", item]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "run folder:" in line:  # printed before the model loads
            proc.send_signal(signal.SIGTERM)
            break
    proc.stdout.read()
    assert proc.wait(timeout=120) == 0
    status = rundir.read_status(run_dir)
    assert status["state"] == "stopped" and status["error"] == rundir.NOTHING_TO_RESUME
    resumed = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    assert rundir.read_status(run_dir)["state"] == "completed"
    assert [row["step"] for row in rundir.read_metrics(run_dir) if "loss" in row] == [1, 2, 3, 4]
