"""The real app in a real browser: `python app.py` on a free loopback port, Chromium settings,
and README screenshots."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "docs" / "screenshots"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    """`python app.py` in its own process group, on a free loopback port."""

    def __init__(self, home: Path, env: dict | None = None):
        self.home = home
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = {**os.environ, "STUDIO_HOME": str(home), **(env or {})}
        self.proc = None
        self.log = home / "app.log"

    def start(self, timeout: float = 90.0) -> AppServer:
        import subprocess
        import time
        import urllib.request

        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=open(self.log, "ab"),  # noqa: SIM115 - the child process owns it
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited early:\n{self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"app did not serve within {timeout}s:\n{self.log.read_text()[-3000:]}")

    def kill(self, sig: int | None = None) -> None:
        import signal

        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig or signal.SIGKILL)
            self.proc.wait(timeout=30)


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot for the README (docs/screenshots/<name>.png)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
