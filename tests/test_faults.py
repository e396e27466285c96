"""Faults with real processes: kill -9 of a run, of the app, of a dataset save; a full disk; two launches.

A vote survives kill -9 in tests/test_prefs.py::test_votes_survive_kill_9 (killed mid-vote and right
after a vote returns); it is not repeated here.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from studio import rundir, workspace
from studio.data import store
from studio.train import runs
from tests.support.app import ROOT, AppServer

RECIPE = "recipes/lora_sft.yaml"
SAVE_STEPS = 5


def _sets(tiny_model, steps: int, save_steps: int = SAVE_STEPS) -> list[str]:
    return [f"model={tiny_model}", f"max_steps={steps}", f"training.save_steps={save_steps}",
            "data.eval_split=0", "probes.prompts=[]", "training.save_total_limit=3"]  # fmt: skip


def _wait(run_id: str, states: tuple[str, ...], timeout: float = 150.0, min_step: int = 0) -> runs.RunInfo:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs.schedule()
        info = runs.get(run_id)
        if info.state in states and int(info.status.get("step") or 0) >= min_step:
            return info
        if info.state in ("failed", "completed") and info.state not in states:
            break
        time.sleep(0.1)
    raise AssertionError(
        f"{run_id} is {info.state} at step {info.status.get('step')}:\n{rundir.log_tail(workspace.run_path(run_id))}"
    )


def _metric_steps(run_id: str) -> list[int]:
    path = workspace.run_path(run_id) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]  # every line must parse
    return [r["step"] for r in rows if "loss" in r]


@pytest.mark.slow
def test_kill_9_at_random_steps_then_resume_loses_at_most_one_interval(tiny_model):
    total = 30
    run_id = runs.submit(RECIPE, _sets(tiny_model, total), "sft")
    rng = random.Random(int(time.time()))
    for target in sorted(rng.sample(range(6, 25), 2)):
        _wait(run_id, ("running",), min_step=target)
        os.killpg(runs.get(run_id).launch["pgid"], signal.SIGKILL)
        _wait(run_id, ("failed",), timeout=30)
        reached = max(rundir.read_metrics(workspace.run_path(run_id))[-1].get("step", 0), target)
        checkpoint = rundir.last_complete_checkpoint(workspace.run_path(run_id))
        assert checkpoint is not None and checkpoint.step >= reached - SAVE_STEPS, (reached, checkpoint)
        partial = workspace.run_path(run_id) / "checkpoints" / "checkpoint-999"
        partial.mkdir()  # what a kill in the middle of a save leaves: no trainer_state.json
        (partial / "adapter_model.safetensors").write_bytes(b"half")
        runs.resume(run_id)
        # the resumed process clears the half-written save before it trains; until then the status
        # still shows the killed process's step, which can already be past the next target
        deadline = time.monotonic() + 60
        while partial.exists() and time.monotonic() < deadline:
            runs.schedule()
            time.sleep(0.1)
    info = _wait(run_id, ("completed",), timeout=240)
    assert not partial.exists()
    assert "ignoring the half-written checkpoint-999" in rundir.log_tail(info.path, 400)
    assert info.status["step"] == total
    steps = _metric_steps(run_id)
    assert steps == sorted(set(steps)), "metrics.jsonl must parse and never repeat a step after resume"
    assert steps[-1] == total and set(range(1, total + 1)) <= set(steps) | {total}
    assert (info.path / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_run_outlives_a_killed_app_and_is_reattached(tiny_model, studio_home, monkeypatch):
    app = AppServer(studio_home).start()
    try:
        with monkeypatch.context() as m:  # queue it only: the app's scheduler must start it
            m.setattr(runs, "schedule", lambda max_running=1: None)
            # long enough that the run is still going when the new app starts (it must re-attach)
            run_id = runs.submit(RECIPE, _sets(tiny_model, 300, save_steps=1000), "sft")
        deadline = time.monotonic() + 60
        while runs.get(run_id).launch.get("pid") is None and time.monotonic() < deadline:
            time.sleep(0.2)
        launcher = runs.get(run_id).launch["pid"]
        assert launcher not in runs._procs and launcher != os.getpid(), "the app spawned it"
        _wait(run_id, ("running",), min_step=2)
        app.kill()  # SIGKILL to the app's process group
        time.sleep(1.0)
        assert runs.get(run_id).state == "running" and runs._alive(runs.get(run_id))
        app = AppServer(studio_home).start()
        time.sleep(3)  # a scheduler tick of the new app: it must not mark the live run dead
        assert runs.get(run_id).state == "running"
        info = _wait(run_id, ("completed",), timeout=400)
        assert info.status["step"] == 300
    finally:
        app.kill()


SAVER = """
import sys
sys.path.insert(0, {root!r})
from studio.data import store
rows = [{{"messages": [{{"role": "user", "content": "q" * 200}}, {{"role": "assistant", "content": "a" * 200}}]}}] * {n}
store.save("mydata", rows, "sft", "messages", "big.jsonl")
"""


def test_kill_9_during_a_dataset_save_lists_no_half_saved_dataset(studio_home):
    old = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 3
    store.save("mydata", old, "sft", "messages", "small.jsonl")
    before = workspace.dataset_path("mydata").read_bytes()
    child = subprocess.Popen([sys.executable, "-c", SAVER.format(root=str(ROOT), n=400_000)],
                             env={**os.environ, "STUDIO_HOME": str(studio_home)})  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        partial = list(workspace.datasets_dir().glob(".mydata.jsonl.*.tmp"))
        if partial and partial[0].stat().st_size > 1_000_000:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the save never started writing")
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    saved = store.list_saved()
    assert [(e.name, e.rows) for e in saved] == [("mydata", 3)], "the old dataset stays, whole"
    assert workspace.dataset_path("mydata").read_bytes() == before


FULL_DISK = """
import errno, sys
sys.path.insert(0, {root!r})
import transformers
real = transformers.Trainer.save_model
def save_model(self, output_dir=None, _internal_call=False):
    if not _internal_call:  # checkpoints still save; the final adapter hits a full disk
        raise OSError(errno.ENOSPC, "No space left on device", output_dir)
    return real(self, output_dir, _internal_call)
transformers.Trainer.save_model = save_model
from studio import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_full_disk_while_saving_the_adapter_fails_clearly_and_keeps_the_old_one(tiny_model, studio_home):
    run_dir = studio_home / "runs" / "full-disk"
    train = [
        sys.executable,
        "-m",
        "studio",
        "train",
        RECIPE,
        *sum((["--set", s] for s in _sets(tiny_model, 4, 2)), []),
    ]
    first = subprocess.run(
        [*train, "--run-dir", str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert first.returncode == 0, first.stderr[-2000:]
    adapter = run_dir / "adapter" / "adapter_model.safetensors"
    weights = adapter.read_bytes()
    patched = [sys.executable, "-c", FULL_DISK.format(root=str(ROOT)), "train", RECIPE,
               *sum((["--set", s] for s in _sets(tiny_model, 6, 2)), []), "--run-dir", str(run_dir), "--resume"]  # fmt: skip
    second = subprocess.run(patched, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
    status = rundir.read_status(run_dir)
    assert status["state"] == "failed"
    assert "No space left on device" in status["error"] or str(errno.ENOSPC) in status["error"]
    assert adapter.read_bytes() == weights, "the previous adapter must stay intact"
    assert (run_dir / "adapter" / "adapter_config.json").is_file()


SUBMIT = """
import sys, time
sys.path.insert(0, {root!r})
from studio.train import runs
while time.time() < {at}:
    time.sleep(0.001)
print(runs.submit({recipe!r}, {sets!r}, "sft"))
"""


@pytest.mark.slow
def test_two_launches_at_the_same_instant_queue_never_both_running(tiny_model, studio_home):
    app = AppServer(studio_home).start()  # its scheduler races the two launchers too
    try:
        at = time.time() + 1.5
        code = SUBMIT.format(root=str(ROOT), at=at, recipe=RECIPE, sets=_sets(tiny_model, 6, 1000))
        env = {**os.environ, "STUDIO_HOME": str(studio_home)}
        procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]  # fmt: skip
        ids = [p.communicate(timeout=60)[0].strip() for p in procs]
        assert len(set(ids)) == 2 and all(ids)
        deadline, most = time.monotonic() + 240, 0
        while time.monotonic() < deadline:
            states = [runs.get(i).state for i in ids]
            most = max(most, sum(s in ("starting", "running", "stopping") for s in states))
            if states == ["completed", "completed"]:
                break
            time.sleep(0.1)
        assert states == ["completed", "completed"], [rundir.log_tail(workspace.run_path(i)) for i in ids]
        assert most == 1, "two runs were active at once"  # (ticks, not wall-clock stamps: a clock can step)
    finally:
        app.kill()
