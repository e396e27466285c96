"""A stand-in OpenAI-compatible judge on 127.0.0.1: POST /v1/chat/completions over real HTTP.

Deterministic verdicts from the judging prompt it receives: mode "longer" prefers the longer of
"Answer 1" and "Answer 2" ([[tie]] when equal), so its verdict follows the answer, not the
position; mode "first" always says [[1]] (a judge with pure position bias). Every request is
kept (headers and body) so tests can check what was sent.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time

_ANSWERS = re.compile(r"Answer 1:\n(.*)\n\nAnswer 2:\n(.*)\n\nWhich answer", re.DOTALL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def verdict(prompt: str, mode: str) -> str:
    if mode == "first":
        return "Answer 1 reads better. [[1]]"
    found = _ANSWERS.search(prompt)
    if not found:
        return "I cannot find two answers."
    one, two = len(found[1].strip()), len(found[2].strip())
    choice = "tie" if one == two else ("1" if one > two else "2")
    return f"The longer answer is more complete. [[{choice}]]"


class JudgeServer:
    def __init__(self, mode: str = "longer", key: str = ""):
        self.mode, self.key = mode, key
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.requests: list[dict] = []
        self._server = None
        self._thread = None

    def _app(self):
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def completions(request):
            body = await request.json()
            self.requests.append({"headers": dict(request.headers), "body": body})
            if self.key and request.headers.get("authorization") != f"Bearer {self.key}":
                return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
            prompt = body["messages"][-1]["content"]
            answer = {
                "id": f"cmpl-{len(self.requests)}",
                "object": "chat.completion",
                "model": body.get("model", ""),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": verdict(prompt, self.mode)},
                        "finish_reason": "stop",
                    }
                ],
            }
            return JSONResponse(answer)

        return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])

    def start(self) -> JudgeServer:
        import uvicorn

        config = uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the stand-in judge did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    def bodies(self) -> list[str]:
        return [json.dumps(r["body"]) for r in self.requests]
