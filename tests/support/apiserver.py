"""The studio's OpenAI-compatible server on a free 127.0.0.1 port, in a thread of the test process,
for tests that need a real endpoint (the `openai` client, the studio's own judge/teacher client).

    with api_server(served) as url:   # url = "http://127.0.0.1:PORT/v1"
        OpenAI(base_url=url, api_key="none").models.list()
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from tests.support.app import _free_port


@contextlib.contextmanager
def api_server(served, timeout: float = 30.0) -> Iterator[str]:
    """Serve `served` (a studio.serve.api.Served) until the block ends; yields the /v1 base URL."""
    import uvicorn

    from studio.serve.api import build_app

    port = _free_port()
    config = uvicorn.Config(build_app(served), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-api-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the API server did not start on port {port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
