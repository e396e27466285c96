"""Run lifecycle: queue, spawn `python -m studio train`, stop, resume, re-attach, delete, duplicate.

All state lives in the run folder, read and written through `studio.rundir`: the train process
writes status.json, metrics.jsonl and train.log itself; this module adds launch.json (the exact
command and the process identity), so a page reload or an app restart finds every run with its
true state. Actions (submit, stop, resume, duplicate, delete) only change the folder; `schedule()`
alone reconciles states with live processes and starts queued runs, and only the app's scheduler
thread and the commands that ask for it call it (listing runs never starts one). Knows nothing
about the UI or about how training works inside the subprocess.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

from studio import processes, rundir, workspace

ACTIVE = ("running", "stopping")
STOP_GRACE_S = 60.0  # a CPU checkpoint of a small model takes seconds; big models need longer
_procs: dict[str, subprocess.Popen] = {}  # children of this app process, reaped on poll
_lock = threading.Lock()


@dataclass
class RunInfo:
    """One run as read from its folder."""

    run_id: str
    path: Path
    state: str
    status: dict = field(default_factory=dict)
    launch: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.recipe.get("method", "?"))

    @property
    def model(self) -> str:
        return str(self.recipe.get("model", "?"))

    @property
    def dataset(self) -> str:
        return str(self.recipe.get("dataset", "?"))

    @property
    def name(self) -> str:
        """The run's name: method + dataset + minute unless the user renamed it."""
        return rundir.run_name(self.path)

    @property
    def created_at(self) -> str:
        return str(self.launch.get("created_at") or self.status.get("started_at") or "")

    def duration_s(self) -> float | None:
        start, end = self.status.get("started_at"), self.status.get("ended_at")
        if not start:
            return None
        t0 = datetime.fromisoformat(start)
        t1 = datetime.fromisoformat(end) if end else datetime.now(UTC)
        return max((t1 - t0).total_seconds(), 0.0)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _ticket() -> str:
    """queued_at: fine enough that two runs queued within one second keep their order."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def queue_order(infos: list[RunInfo]) -> list[RunInfo]:
    """The queued runs, first to start first: by when they were queued, then by run id."""
    queued = [i for i in infos if i.state == "queued"]
    return sorted(queued, key=lambda i: (str(i.status.get("queued_at", "")), i.run_id))


def train_command(
    recipe: str, sets: list[str], run_dir: Path, num_processes: int = 1, resume: bool = False
) -> list[str]:
    """The exact argv that trains this run (shown in the UI's copy-command box)."""
    if num_processes > 1:
        head = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(num_processes),
            "-m",
            "studio",
        ]
    else:
        head = [sys.executable, "-m", "studio"]
    argv = [*head, "train", str(recipe)]
    for item in sets:
        argv += ["--set", item]
    argv += ["--run-dir", str(run_dir)]
    return argv + (["--resume"] if resume else [])


def _dataset_of(recipe: str, sets: list[str]) -> str:
    """The dataset a run will train on: a `dataset=` override, else the recipe file's."""
    import yaml

    for item in reversed(sets):
        key, _, value = item.partition("=")
        if key.strip() == "dataset" and value.strip():
            loaded = yaml.safe_load(value)
            return str(loaded if loaded is not None else value)
    path = Path(recipe)
    path = path if path.is_absolute() else Path(__file__).resolve().parents[2] / path
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return ""
    return str(data.get("dataset") or "") if isinstance(data, dict) else ""


def submit(recipe: str, sets: list[str], method: str, num_processes: int = 1, name: str | None = None) -> str:
    """Queue a new run of `recipe` with `--set` overrides; it starts when its turn comes.
    `name`: what the studio calls it (default: method + dataset + minute, e.g. sft-alpaca-20261130-0312)."""
    run_dir = rundir.claim_run_dir(method)
    run_id = run_dir.name
    launch = {
        "name": rundir.check_run_name(name)
        if name
        else rundir.default_name(method, _dataset_of(recipe, sets)),
        "recipe": str(recipe),
        "sets": list(sets),
        "method": method,
        "num_processes": int(num_processes),
        "resume": False,
        "created_at": _now(),
    }
    rundir.write_launch(run_dir, launch)
    rundir.write_status(run_dir, {"state": "queued", "queued_at": _ticket()})
    return run_id


def get(run_id: str) -> RunInfo:
    run_dir = workspace.run_path(run_id)
    if not run_dir.is_dir():
        raise ValueError(f"no run {run_id!r} in {workspace.runs_dir()}")
    status, recipe, launch = (
        rundir.read_status(run_dir),
        rundir.read_recipe(run_dir),
        rundir.read_launch(run_dir),
    )
    if not recipe and launch:  # queued: train has not resolved the recipe yet
        recipe = {"method": launch.get("method", "?"), **_sets_dict(launch.get("sets", []))}
    return RunInfo(run_id, run_dir, status.get("state", "unknown"), status, launch, recipe)


def _sets_dict(sets: list[str]) -> dict:
    return dict(item.split("=", 1) for item in sets if "=" in item)


def list_runs() -> list[RunInfo]:
    """Every run, newest first, as its folder says (only reads: `schedule` reconciles and starts)."""
    runs = []
    for child in workspace.runs_dir().iterdir():
        if child.is_dir() and not child.name.startswith("."):
            try:
                runs.append(get(child.name))
            except ValueError:
                continue
    return sorted(runs, key=lambda r: r.created_at, reverse=True)


def _alive(info: RunInfo) -> bool:
    """Is the run's process (the launcher the studio spawned, or a terminal's trainer) alive?"""
    owner = info.launch if info.launch.get("pid") else info.status
    pid = owner.get("pid")
    if not pid:
        return False
    child = _procs.get(str(pid))
    if child is not None and child.poll() is not None:
        return False
    return processes.is_alive(owner)


def _death_reason(info: RunInfo) -> str:
    """Why a run's process vanished, as far as the outside can tell."""
    child = _procs.get(str(info.launch.get("pid")))
    code = None
    if child is not None:
        try:
            code = child.wait(timeout=2)  # already dead by the time we are asked; this reaps it
        except subprocess.TimeoutExpired:
            code = None
    estimate = info.status.get("memory_estimate_gb")
    oom_hint = (
        f" (this run's memory estimate was {estimate:.1f} GB)" if isinstance(estimate, int | float) else ""
    )
    if code == -signal.SIGKILL:
        return (
            "the training process ended without reporting: it was killed with SIGKILL, which is what "
            f"the out-of-memory killer sends{oom_hint} — try QLoRA, a smaller batch or max_length"
        )
    return f"the training process ended without reporting (killed, or out of memory{oom_hint})"


def _mark_dead(info: RunInfo) -> None:
    tail = rundir.log_tail(info.path, 15)
    reason = _death_reason(info)
    if info.state == "stopping":
        new = {**info.status, "state": "stopped", "ended_at": _now(), "error": None}
    else:
        new = {**info.status, "state": "failed", "ended_at": _now(), "error": f"{reason}.\n{tail}".strip()}
    rundir.write_status(info.path, new)


@contextmanager
def _scheduler_lock() -> Iterator[None]:
    with _lock, open(workspace.runs_dir() / ".scheduler.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def schedule(max_running: int = 1) -> None:
    """Reconcile states with live processes, then start queued runs while slots are free."""
    with _scheduler_lock():
        infos = []
        for child in workspace.runs_dir().iterdir():
            if child.is_dir() and not child.name.startswith("."):
                infos.append(get(child.name))
        running = 0
        for info in infos:
            if info.state in ACTIVE or (info.state == "starting"):
                if _alive(info):
                    running += 1
                else:
                    _mark_dead(info)
        for info in queue_order(infos)[: max(max_running - running, 0)]:
            _spawn(info)


def _spawn(info: RunInfo) -> None:
    launch = info.launch
    argv = train_command(
        launch["recipe"],
        launch.get("sets", []),
        info.path,
        launch.get("num_processes", 1),
        resume=launch.get("resume", False),
    )
    # "starting" is written before the child exists, so the child's own "running" always wins.
    status = {**info.status, "state": "starting", "started_at": info.status.get("started_at") or _now()}
    rundir.write_status(info.path, status)
    log = open(rundir.log_path(info.path), "ab")  # noqa: SIM115 - the child owns it from here
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ranks = int(launch.get("num_processes", 1))
    if ranks > 1 and "OMP_NUM_THREADS" not in env:  # ranks on one machine share its cores
        env["OMP_NUM_THREADS"] = str(max((os.cpu_count() or ranks) // ranks, 1))
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],  # the checkout: recipes/ and sample_data/ resolve from it
    )
    log.close()
    _procs[str(proc.pid)] = proc
    # launch.json holds the process identity; the trainer owns status.json from here.
    identity = {"argv": argv, "pgid": proc.pid, **processes.identity(proc.pid)}
    rundir.write_launch(info.path, {**launch, **identity})


def stop(run_id: str, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the run's process group (it checkpoints and exits); SIGKILL after `grace_s`."""
    info = get(run_id)
    if info.state == "queued":
        stopped = {"state": "stopped", "ended_at": _now(), "error": rundir.NOTHING_TO_RESUME}
        rundir.write_status(info.path, {**info.status, **stopped})
        return
    if info.state not in (*ACTIVE, "starting") or not _alive(info):
        if info.state in (*ACTIVE, "starting"):
            _mark_dead(info)  # it died on its own: say so now rather than at the next schedule()
        return
    owner = info.launch if info.launch.get("pid") else info.status
    pgid = int(owner.get("pgid") or os.getpgid(int(owner["pid"])))
    rundir.write_status(info.path, {**info.status, "state": "stopping"})
    _signal_group(pgid, signal.SIGTERM)
    threading.Thread(target=_kill_later, args=(run_id, pgid, grace_s), daemon=True).start()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_later(run_id: str, pgid: int, grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            break
        time.sleep(0.2)
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
    child = _procs.pop(str(pgid), None)  # the spawned launcher leads its own group
    if child is not None:
        child.wait(timeout=10)


def _group_alive(pgid: int) -> bool:
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.ZombieProcess, PermissionError):
            continue
    return False


def resume(run_id: str) -> None:
    """Queue a stopped or failed run to continue from its last complete checkpoint (from step 0
    when it stopped before the first one)."""
    info = get(run_id)
    if info.state not in ("stopped", "failed"):
        raise ValueError(f"run {run_id} is {info.state}: only a stopped or failed run can be resumed")
    # With no complete checkpoint the trainer starts again from step 0 in the same folder.
    rundir.write_launch(info.path, {**info.launch, "resume": True})
    status = {**info.status, "state": "queued", "queued_at": _ticket(), "ended_at": None, "error": None}
    rundir.write_status(info.path, status)


def duplicate(run_id: str) -> str:
    """Queue a new run with the same recipe and overrides as `run_id`."""
    info = get(run_id)
    if not info.launch.get("recipe"):
        raise ValueError(f"run {run_id} was not launched from the studio: start it again from its recipe")
    return submit(
        info.launch["recipe"], info.launch.get("sets", []), info.method, info.launch.get("num_processes", 1)
    )


def rename(run_id: str, name: str) -> str:
    """Give a run a new name (its id and folder stay as they are)."""
    return rundir.rename(get(run_id).path, name)


def delete(run_id: str) -> None:
    """Delete a finished or queued run's folder (the UI asks for confirmation first)."""
    import shutil

    info = get(run_id)
    if info.state in (*ACTIVE, "starting") and _alive(info):
        raise ValueError(f"run {run_id} is {info.state}: stop it before deleting it")
    from studio.chat import llamacpp

    llamacpp.forget_loras(info.path)  # its adapters' copies for fast CPU chat go with it
    shutil.rmtree(info.path)


def active_run() -> RunInfo | None:
    """The run training right now, if any (chat on a CPU warns while one is)."""
    for info in list_runs():
        if info.state in (*ACTIVE, "starting"):
            return info
    return None


_scheduler_started = False


def start_scheduler(interval_s: float = 2.0) -> None:
    """A daemon thread that starts queued runs and marks dead ones, for the app process."""
    global _scheduler_started
    if _scheduler_started:
        return
    _scheduler_started = True

    def loop() -> None:
        while True:
            try:
                schedule()
            except OSError as exc:  # a full or vanished workspace must not kill the app
                print(f"scheduler: {exc}", file=sys.stderr)
            time.sleep(interval_s)

    threading.Thread(target=loop, name="studio-scheduler", daemon=True).start()
