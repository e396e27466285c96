"""The app's start/stop switch for the API server: `python -m studio serve` as a child process.

One server per workspace. Its state (pid, URL, models) is kept in STUDIO_HOME/serve/state.json and
its output in STUDIO_HOME/serve/serve.log, both owned by this module, so a reloaded page or a
restarted app finds a running server again. The log never holds the API key (the server prints
only its masked form). Knows nothing about the UI; imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from studio import workspace
from studio.serve import keys

_CHILDREN: dict[int, subprocess.Popen] = {}  # servers this process started (to reap them)


@dataclass
class ServerState:
    pid: int
    host: str
    port: int
    model: str
    adapters: list[str] = field(default_factory=list)
    started_at: float = 0.0

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}/v1"


def folder() -> Path:
    return workspace.home() / "serve"


def log_path() -> Path:
    return folder() / "serve.log"


def _state_path() -> Path:
    return folder() / "state.json"


def command(host: str, port: int, model: str, adapters: list[str]) -> list[str]:
    """The command line the switch runs (the app shows it, so it can be run by hand too)."""
    argv = [sys.executable, "-m", "studio", "serve", "--host", host, "--port", str(port), "--model", model]
    return argv + (["--adapters", *adapters] if adapters else [])


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"studio" in cmdline and b"serve" in cmdline


def status() -> ServerState | None:
    """The running server of this workspace, or None (a stale record is removed)."""
    try:
        state = ServerState(**json.loads(_state_path().read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    if _alive(state.pid):
        return state
    _state_path().unlink(missing_ok=True)
    return None


def start(host: str, port: int, model: str, adapters: list[str]) -> ServerState:
    """Start the server (ValueError when one runs, the port is bad, or a key is missing)."""
    running = status()
    if running is not None:
        raise ValueError(f"a server is already running at {running.url}: stop it first")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port} must be between 1 and 65535 (8000 is usual)")
    keys.check_bind(host, keys.find_key()[0])
    folder().mkdir(parents=True, exist_ok=True)
    with open(log_path(), "ab") as log:
        child = subprocess.Popen(
            command(host, int(port), model, adapters),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() ends it and only it
        )
    _CHILDREN[child.pid] = child
    state = ServerState(child.pid, host, int(port), model, list(adapters), time.time())
    workspace.atomic_write_json(_state_path(), asdict(state))
    return state


def wait_ready(state: ServerState, timeout: float = 180.0) -> bool:
    """Wait until the server answers /health; False if it exited or did not answer in time."""
    deadline = time.monotonic() + timeout
    health = state.url.removesuffix("/v1") + "/health"
    while time.monotonic() < deadline:
        if not _alive(state.pid):
            return False
        try:
            with urllib.request.urlopen(health, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def stop() -> bool:
    """Stop the running server (SIGTERM, then SIGKILL after 10 s); False when none was running."""
    state = status()
    if state is None:
        return False
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(state.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(state.pid):
            time.sleep(0.2)
        if not _alive(state.pid):
            break
    _CHILDREN.pop(state.pid, None)
    _state_path().unlink(missing_ok=True)
    return True


def log_tail(lines: int = 20) -> str:
    try:
        return "\n".join(log_path().read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
