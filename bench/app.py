"""App benchmark: cold start of `python app.py` to the first page served, and to the first chat token.

Page: launch the app on a free loopback port and time until GET / answers 200. First token: a
fresh Python process that loads the default model into the chat engine and streams one answer
(what the Chat tab does on its first message), timed from process start. Models load lazily:
the app loads none at start, so the page time is the UI alone. Knows nothing about training or data.

Run as: python -m bench.app [--quick]
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

from bench.common import ROOT, Row, Section, bench_home, bench_parser, log, offline_env, publish

FIRST_TOKEN = (
    "import time; t=time.perf_counter(); from studio.chat.engine import ChatEngine, GenSettings; "
    "e=ChatEngine(); e.load('default', dtype='{dtype}'); "
    "s=e.stream([{{'role':'user','content':'What is the capital of France?'}}], None, "
    "GenSettings(temperature=0, max_new_tokens=1)); next(s); print(time.perf_counter()-t)"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def page_served(timeout: float = 120) -> float:
    """Seconds from `python app.py` to HTTP 200 on its page."""
    port = _free_port()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while time.perf_counter() - start < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode} before serving")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"app.py did not serve within {timeout}s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def first_token(dtype: str) -> float:
    """Seconds from a fresh interpreter to the first chat token of the default model."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", FIRST_TOKEN.format(dtype=dtype)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    return time.perf_counter() - start


def run(quick: bool) -> Section:
    offline_env()
    bench_home()
    from studio import models

    models.default_model_dir()  # converted once; a cold start after that is what users see
    rounds = 2 if quick else 3
    log(f"app: cold starts, {rounds} rounds")
    pages = [page_served() for _ in range(rounds)]
    tokens = [first_token("auto") for _ in range(rounds)]
    page, token = statistics.median(pages), statistics.median(tokens)
    section = Section("app")
    # the target is absolute (3 s), so the "baseline" column holds the target itself
    section.rows.append(Row("app", "python app.py -> page served (HTTP 200)", page, 3.0, "s", 1.0, False))
    section.rows.append(Row("app", "fresh process -> first chat token (default model)", token, token, "s"))
    section.notes.append(
        f"page served in {', '.join(f'{p:.2f}' for p in pages)} s; first token in "
        f"{', '.join(f'{t:.2f}' for t in tokens)} s (no model is loaded until the Chat tab asks for one)"
    )
    return section


def main(argv: list[str] | None = None) -> int:
    args = bench_parser(__doc__).parse_args(argv)
    return publish([run(args.quick)], args.quick, "App", not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
