"""The OpenAI-compatible HTTP API over the chat engine: FastAPI routes served by uvicorn.

    GET  /v1/models              the base model and every loaded adapter
    POST /v1/chat/completions    an answer, whole or streamed as server-sent events ending in [DONE]
    GET  /health                 "ok" and how busy the batcher is

Requests go to one Batcher, so requests that arrive together share decode steps. A client that
goes away (a closed stream, a dropped connection) cancels its request. With an API key every
route but /health needs `Authorization: Bearer KEY`; the key is never logged nor echoed.
Knows nothing about the UI or training.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from studio import models, workspace
from studio.chat.engine import ChatEngine
from studio.serve import keys, protocol
from studio.serve.batcher import Batcher, ContextTooLong, Piece, QueueFull, Ticket
from studio.serve.protocol import ApiError

BASE_ALIAS = "base"
POLL_S = 0.5  # how often a waiting request checks that its client is still there


@dataclass
class Served:
    """What one server answers for: the engine, its batcher, the model ids, the key."""

    engine: ChatEngine
    batcher: Batcher
    base_id: str
    adapters: dict[str, str] = field(default_factory=dict)  # model id -> engine adapter name
    key: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def model_ids(self) -> list[str]:
        return [self.base_id, *self.adapters]

    def adapter_for(self, model: str) -> str | None:
        """The engine adapter (None: the base) a model id names; ApiError 404 for an unknown one."""
        if model in (self.base_id, BASE_ALIAS, self.engine.spec):
            return None
        if model in self.adapters:
            return self.adapters[model]
        raise ApiError(
            404,
            f"model {model!r} is not served here: use one of {', '.join(self.model_ids())} "
            "(GET /v1/models lists them; start the server with --adapters RUN to add a run)",
            param="model",
            code="model_not_found",
        )


def base_id(spec: str) -> str:
    """The id the base model is listed under: the folder name of a local model, else the spec."""
    if spec == "default":
        return Path(models.resolve(spec)).name
    path = Path(spec).expanduser()
    return path.name if path.is_dir() else spec


def adapter_path(run: str) -> Path:
    """A `--adapters` value: a run id under STUDIO_HOME/runs, or the path of a run or adapter folder."""
    path = Path(run).expanduser()
    if path.exists():
        return path
    candidate = workspace.runs_dir() / run
    if candidate.exists():
        return candidate
    known = (
        sorted(p.name for p in workspace.runs_dir().glob("*") if p.is_dir())
        if workspace.runs_dir().is_dir()
        else []
    )
    raise ValueError(
        f"--adapters {run}: no such run or folder; runs in {workspace.runs_dir()}: {', '.join(known) or 'none'}"
    )


def load(
    model: str, adapters: list[str], max_batch: int = 8, max_waiting: int = 16, dtype: str = "auto"
) -> Served:
    """Load the base and the adapters (run ids or folders) and start the batcher."""
    engine = ChatEngine()
    engine.load(model, dtype=dtype)
    names = [engine.add_adapter(adapter_path(run)) for run in adapters]
    served = Served(engine, Batcher(engine, max_batch, max_waiting), base_id(model))
    served.adapters = {name: name for name in names}
    served.key, _ = keys.find_key()
    return served


def build_app(served: Served) -> FastAPI:
    def require_key(request: Request) -> None:
        # a dependency, not an HTTP middleware: those hide a client's disconnect from the routes
        if request.url.path != "/health" and not keys.authorized(
            request.headers.get("authorization"), served.key
        ):
            raise ApiError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer KEY' with the key this "
                "server was started with",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    app = FastAPI(
        title="Tune Studio API",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(require_key)],
    )

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        error = ApiError(
            exc.status_code, f"{exc.detail}: this server answers /v1/models and /v1/chat/completions"
        )
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **served.batcher.load()}

    @app.get("/v1/models")
    async def list_models() -> dict:
        owners = [("studio-base", served.base_id)] + [("studio-adapter", m) for m in served.adapters]
        return {"object": "list", "data": [protocol.model_card(m, o, served.created) for o, m in owners]}

    @app.get("/v1/models/{model_id:path}")
    async def one_model(model_id: str) -> dict:
        served.adapter_for(model_id)
        owner = "studio-adapter" if model_id in served.adapters else "studio-base"
        return protocol.model_card(model_id, owner, served.created)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
        chat = protocol.parse_chat(body)
        adapter = served.adapter_for(chat.model)
        ticket = await _submit(served.batcher, chat, adapter)
        if chat.stream:
            return StreamingResponse(
                _events(ticket, chat, request),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await _whole(ticket, chat, request)

    return app


async def _submit(batcher: Batcher, chat: protocol.ChatRequest, adapter: str | None) -> Ticket:
    loop = asyncio.get_running_loop()
    try:  # in a worker thread: reading the prompt waits for the decode step in flight
        return await run_in_threadpool(
            batcher.submit, chat.messages, adapter, chat.settings, chat.stop, chat.fit_to_context, loop
        )
    except QueueFull as exc:
        raise ApiError(
            429,
            str(exc),
            code="rate_limit_exceeded",
            kind="rate_limit_error",
            headers={"Retry-After": str(exc.retry_after)},
        ) from None
    except ContextTooLong as exc:
        raise ApiError(400, str(exc), param="messages", code="context_length_exceeded") from None
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


async def _pieces(ticket: Ticket, request: Request):
    """The ticket's pieces until it finishes; cancels it when the client goes away (checked every
    POLL_S seconds, also while pieces keep coming: a non-streaming client sees none of them)."""
    checked = time.monotonic()
    try:
        while True:
            piece = await ticket.get(POLL_S)
            if time.monotonic() - checked >= POLL_S:
                if await request.is_disconnected():
                    return
                checked = time.monotonic()
            if piece is None:
                continue
            yield piece
            if piece.finish is not None:
                return
    finally:
        ticket.cancel()


def _failed(piece: Piece) -> ApiError:
    return ApiError(500, f"the model stopped answering: {piece.error or piece.finish}", kind="server_error")


async def _whole(ticket: Ticket, chat: protocol.ChatRequest, request: Request) -> JSONResponse:
    text, last = [], None
    async for piece in _pieces(ticket, request):
        text.append(piece.text)
        last = piece
    if last is None or last.finish not in ("stop", "length"):
        raise _failed(last or Piece("", "cancelled"))
    return JSONResponse(
        protocol.completion(
            protocol.new_id(),
            chat.model,
            "".join(text),
            last.finish,
            last.prompt_tokens,
            last.completion_tokens,
        )
    )


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def _events(ticket: Ticket, chat: protocol.ChatRequest, request: Request):
    cid = protocol.new_id()
    yield _sse(protocol.chunk(cid, chat.model, {"role": "assistant", "content": ""}))
    async for piece in _pieces(ticket, request):
        if piece.finish in ("error", "cancelled"):
            yield _sse(_failed(piece).body())
            break
        if piece.text:
            yield _sse(protocol.chunk(cid, chat.model, {"content": piece.text}))
        if piece.finish is not None:
            yield _sse(protocol.chunk(cid, chat.model, {}, piece.finish))
            if chat.include_usage:
                counts = protocol.usage(piece.prompt_tokens, piece.completion_tokens)
                yield _sse(protocol.chunk(cid, chat.model, {}, with_usage=counts))
    yield _sse("[DONE]")


def run(served: Served, host: str, port: int, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl+C or SIGTERM), then stop the batcher."""
    import uvicorn

    config = uvicorn.Config(
        build_app(served),
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    try:
        uvicorn.Server(config).run()
    finally:
        served.batcher.close()
