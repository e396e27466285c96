"""An evaluation as a background process, like a training run: start, stop, state after a restart.

`start` writes the eval folder and runs `python -m studio eval RUN_DIR --resume EVAL_ID` in its own
process group (output in eval.log); `stop` sends SIGTERM (the job finishes the token in flight and
writes a partial summary), SIGKILL after a grace period; `state` reads status.json and checks that
the process it names is still alive, so a job killed with -9 shows as "interrupted" (its rows on
disk intact; `resume` continues it). The judge's API key travels in the child's environment only.
Imports no torch: the app calls it on every poll.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from studio import processes
from studio.evaluate import evaldir

JUDGE_KEY_ENV = "STUDIO_JUDGE_KEY"
ACTIVE = ("queued", "running", "stopping")
STOP_GRACE_S = 30.0
ROOT = Path(__file__).resolve().parents[2]
_children: dict[int, subprocess.Popen] = {}


def command(run_dir: Path, eval_id: str) -> list[str]:
    """The exact command the app runs for an evaluation (resumable by running it again)."""
    return [sys.executable, "-m", "studio", "eval", str(run_dir), "--resume", eval_id]


def start(run_dir: Path, config: evaldir.EvalConfig, key: str = "") -> str:
    """Create an evaluation of `run_dir` and run it in the background; returns its id."""
    eval_id = evaldir.create(run_dir, config)
    _spawn(Path(run_dir), eval_id, key)
    return eval_id


def resume(run_dir: Path, eval_id: str, key: str = "") -> None:
    """Continue a stopped, failed or interrupted evaluation where its files left off."""
    if state(run_dir, eval_id) in ACTIVE:
        raise ValueError(f"evaluation {eval_id} is still running: stop it first")
    _spawn(Path(run_dir), eval_id, key)


def _spawn(run_dir: Path, eval_id: str, key: str) -> None:
    path = evaldir.folder(run_dir, eval_id)
    # "queued" before the child exists: its own "running" must never be overwritten by this one
    evaldir.write_status(path, state="queued", pid=None, pid_created=None, error=None)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop(JUDGE_KEY_ENV, None)
    if key:
        env[JUDGE_KEY_ENV] = key
    with open(path / "eval.log", "ab") as log:
        proc = subprocess.Popen(
            command(run_dir, eval_id),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=ROOT,
        )
    _children[proc.pid] = proc
    # the child records the same identity once running (it is this very process)
    evaldir.write_status(path, **processes.identity(proc.pid))


def _alive(status: dict) -> bool:
    pid = status.get("pid")
    if not pid:
        return False
    child = _children.get(int(pid))
    if child is not None and child.poll() is not None:
        _children.pop(int(pid), None)
        return False
    return processes.is_alive(status)


def state(run_dir: Path, eval_id: str) -> str:
    """queued | running | stopping | stopped | completed | failed | interrupted (killed mid-way)."""
    status = evaldir.read_status(evaldir.folder(run_dir, eval_id))
    current = status.get("state", "unknown")
    if current == "queued" and not status.get("pid"):
        return current  # spawned a moment ago, its identity not written yet
    if current in ACTIVE and not _alive(status):
        return "interrupted"
    return current


def stop(run_dir: Path, eval_id: str, grace_s: float = STOP_GRACE_S) -> None:
    """Ask the job to stop (SIGTERM to its process group); SIGKILL if it has not after `grace_s`."""
    path = evaldir.folder(run_dir, eval_id)
    status = evaldir.read_status(path)
    if status.get("state") not in ACTIVE or not _alive(status):
        return
    pid = int(status["pid"])
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    evaldir.write_status(path, state="stopping")
    _signal(pgid, signal.SIGTERM)
    threading.Thread(target=_kill_later, args=(pid, pgid, grace_s), daemon=True).start()


def _signal(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_later(pid: int, pgid: int, grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    else:
        _signal(pgid, signal.SIGKILL)
    child = _children.pop(pid, None)
    if child is not None:
        child.wait(timeout=10)
