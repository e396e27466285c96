"""Run lifecycle: queue, spawn `python -m studio train`, stop, resume, re-attach, delete, duplicate.

All state lives in the run folder (DESIGN.md): the train process writes status.json, metrics.jsonl
and train.log itself; this module adds launch.json (the exact command) and reads everything back,
so a page reload or an app restart finds every run with its true state. Knows nothing about the
UI or about how training works inside the subprocess.
"""

from __future__ import annotations

import fcntl
import json
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

from studio import workspace

ACTIVE = ("running", "stopping")
FINISHED = ("stopped", "failed", "completed")
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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def new_run_id(method: str) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = workspace.check_name(f"{stamp}-{method}", "run id")
    run_id, n = base, 1
    while workspace.run_path(run_id).exists():
        n += 1
        run_id = f"{base}-{n}"
    return run_id


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


def _claim_run_dir(method: str) -> tuple[str, Path]:
    """Create a new run folder atomically: two launches in the same second get different ids."""
    for _ in range(1000):
        run_id = new_run_id(method)
        try:
            workspace.run_path(run_id).mkdir(parents=True)
        except FileExistsError:
            continue
        return run_id, workspace.run_path(run_id)
    raise ValueError(f"could not create a new run folder in {workspace.runs_dir()}")


def submit(recipe: str, sets: list[str], method: str, num_processes: int = 1) -> str:
    """Queue a new run of `recipe` with `--set` overrides; it starts when its turn comes."""
    run_id, run_dir = _claim_run_dir(method)
    launch = {
        "recipe": str(recipe),
        "sets": list(sets),
        "method": method,
        "num_processes": int(num_processes),
        "resume": False,
        "created_at": _now(),
    }
    workspace.atomic_write_json(run_dir / "launch.json", launch)
    workspace.atomic_write_json(run_dir / "status.json", {"state": "queued", "queued_at": _now()})
    schedule()
    return run_id


def get(run_id: str) -> RunInfo:
    run_dir = workspace.run_path(run_id)
    if not run_dir.is_dir():
        raise ValueError(f"no run {run_id!r} in {workspace.runs_dir()}")
    status = _read_json(run_dir / "status.json")
    recipe = _read_yaml(run_dir / "recipe.yaml")
    launch = _read_json(run_dir / "launch.json")
    if not recipe and launch:  # queued: train has not resolved the recipe yet
        recipe = {"method": launch.get("method", "?"), **_sets_dict(launch.get("sets", []))}
    return RunInfo(run_id, run_dir, status.get("state", "unknown"), status, launch, recipe)


def _sets_dict(sets: list[str]) -> dict:
    return dict(item.split("=", 1) for item in sets if "=" in item)


def list_runs() -> list[RunInfo]:
    """Every run, newest first, after reconciling states with the processes that exist."""
    schedule()
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
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        created = owner.get("pid_created")
        return created is None or abs(proc.create_time() - float(created)) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def log_tail(run_id: str, lines: int = 40) -> str:
    path = workspace.run_path(run_id) / "train.log"
    if not path.is_file():
        return ""
    with path.open("rb") as fh:
        fh.seek(max(path.stat().st_size - 64_000, 0))
        text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


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
    tail = log_tail(info.run_id, 15)
    reason = _death_reason(info)
    if info.state == "stopping":
        new = {**info.status, "state": "stopped", "ended_at": _now(), "error": None}
    else:
        new = {**info.status, "state": "failed", "ended_at": _now(), "error": f"{reason}.\n{tail}".strip()}
    workspace.atomic_write_json(info.path / "status.json", new)


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
        queued = sorted(
            (i for i in infos if i.state == "queued"), key=lambda i: i.status.get("queued_at", "")
        )
        for info in queued[: max(max_running - running, 0)]:
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
    workspace.atomic_write_json(info.path / "status.json", status)
    log = open(info.path / "train.log", "ab")  # noqa: SIM115 - the child owns it from here
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes = int(launch.get("num_processes", 1))
    if processes > 1 and "OMP_NUM_THREADS" not in env:  # ranks on one machine share its cores
        env["OMP_NUM_THREADS"] = str(max((os.cpu_count() or processes) // processes, 1))
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    log.close()
    _procs[str(proc.pid)] = proc
    created = psutil.Process(proc.pid).create_time()
    # launch.json holds the process identity; the trainer owns status.json from here.
    identity = {"argv": argv, "pid": proc.pid, "pgid": proc.pid, "pid_created": created}
    workspace.atomic_write_json(info.path / "launch.json", {**launch, **identity})


def stop(run_id: str, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the run's process group (it checkpoints and exits); SIGKILL after `grace_s`."""
    info = get(run_id)
    if info.state == "queued":
        workspace.atomic_write_json(
            info.path / "status.json", {**info.status, "state": "stopped", "ended_at": _now()}
        )
        return
    if info.state not in (*ACTIVE, "starting") or not _alive(info):
        schedule()
        return
    owner = info.launch if info.launch.get("pid") else info.status
    pgid = int(owner.get("pgid") or os.getpgid(int(owner["pid"])))
    workspace.atomic_write_json(info.path / "status.json", {**info.status, "state": "stopping"})
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
    schedule()


def _group_alive(pgid: int) -> bool:
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.ZombieProcess, PermissionError):
            continue
    return False


def resume(run_id: str) -> None:
    """Queue a stopped or failed run to continue from its last complete checkpoint."""
    info = get(run_id)
    if info.state not in ("stopped", "failed"):
        raise ValueError(f"run {run_id} is {info.state}: only a stopped or failed run can be resumed")
    if not any((info.path / "checkpoints").glob("checkpoint-*")):
        raise ValueError(f"run {run_id} has no checkpoint yet: duplicate it as a new run instead")
    workspace.atomic_write_json(info.path / "launch.json", {**info.launch, "resume": True})
    status = {**info.status, "state": "queued", "queued_at": _now(), "ended_at": None, "error": None}
    workspace.atomic_write_json(info.path / "status.json", status)
    schedule()


def duplicate(run_id: str) -> str:
    """Queue a new run with the same recipe and overrides as `run_id`."""
    info = get(run_id)
    if not info.launch:
        raise ValueError(f"run {run_id} was not launched from the studio: start it again from its recipe")
    return submit(
        info.launch["recipe"], info.launch.get("sets", []), info.method, info.launch.get("num_processes", 1)
    )


def delete(run_id: str) -> None:
    """Delete a finished or queued run's folder (the UI asks for confirmation first)."""
    import shutil

    info = get(run_id)
    if info.state in (*ACTIVE, "starting") and _alive(info):
        raise ValueError(f"run {run_id} is {info.state}: stop it before deleting it")
    shutil.rmtree(info.path)


def active_run() -> RunInfo | None:
    """The run training right now, if any (chat on a CPU warns while one is)."""
    for info in list_runs():
        if info.state in (*ACTIVE, "starting"):
            return info
    return None


def read_metrics(run_id: str) -> list[dict]:
    """metrics.jsonl as a list; a half-written last line (a crash mid-write) is skipped."""
    path = workspace.run_path(run_id) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def read_probes(run_id: str) -> dict:
    return _read_json(workspace.run_path(run_id) / "probes.json")


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
