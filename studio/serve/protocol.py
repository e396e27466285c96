"""The OpenAI chat-completions protocol: a request body in, checked settings out; responses, stream
chunks and errors in OpenAI's JSON shapes.

Checks every field it understands and names the field and the fix when a value is wrong; fields
of the protocol that this server cannot honour (n > 1, tools, logprobs, penalties) are refused
rather than silently ignored. `repetition_penalty` is accepted as an extension (as vLLM does).
Knows nothing about HTTP, models or decoding.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from studio.chat.engine import GenSettings

ROLES = ("system", "user", "assistant")
DEFAULT_MAX_TOKENS = 512  # when the request does not say; shortened to the context window's room
MAX_STOPS = 4


class ApiError(Exception):
    """An error answer: HTTP status and OpenAI's {"error": {...}} body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    """A checked chat-completions request."""

    model: str
    messages: list[dict]
    settings: GenSettings
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    fit_to_context: bool = True  # max_tokens not given: answer up to the room the context has


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code="invalid_value")


def _number(body: dict, name: str, default: float, low: float, high: float, integer: bool = False):
    value = body.get(name)
    if value is None:
        return default
    wanted = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, wanted):
        raise _bad(name, f"must be {'a whole number' if integer else 'a number'}, got {value!r}")
    if not low <= value <= high:
        raise _bad(name, f"{value} is out of range: use a value from {low} to {high}")
    return value


def _messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _bad("messages", "must be a non-empty list of {role, content} objects")
    messages = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(where, "must be an object with 'role' and 'content'")
        role = "system" if message.get("role") == "developer" else message.get("role")
        if role not in ROLES:
            raise _bad(
                f"{where}.role", f"{message.get('role')!r} is not supported: use system, user or assistant"
            )
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if (
                    not isinstance(part, dict)
                    or part.get("type") != "text"
                    or not isinstance(part.get("text"), str)
                ):
                    raise _bad(
                        f"{where}.content[{j}]",
                        "only text parts ({'type': 'text', 'text': ...}) are supported",
                    )
            content = "".join(part["text"] for part in content)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise _bad(f"{where}.content", f"must be text, got {type(content).__name__}")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise _bad("messages", "the conversation must end with a user message for the model to answer")
    return messages


def _stops(value) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOPS:
        raise _bad("stop", f"must be a string or a list of at most {MAX_STOPS} strings")
    return [s for s in stops if s]


def _refuse_unsupported(body: dict) -> None:
    if body.get("n") not in (None, 1):
        raise _bad("n", "only n=1 is supported: send one request per answer")
    for name in ("tools", "functions", "tool_choice", "function_call"):
        if body.get(name):
            raise _bad(name, "tool calls are not supported by this server")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise _bad("logprobs", "log-probabilities are not supported by this server")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise _bad(name, "not supported: use repetition_penalty (1 = off, 1.1 = mild) instead")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        raise _bad("response_format", "only plain text answers are supported")


def parse_chat(body) -> ChatRequest:
    """Check a chat-completions body; raise ApiError naming the field and the fix."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "is required: name the base model or an adapter (GET /v1/models lists them)")
    _refuse_unsupported(body)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    seed = body.get("seed")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options", "must be an object such as {'include_usage': true}")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", f"must be true or false, got {stream!r}")
    settings = GenSettings(
        temperature=float(_number(body, "temperature", 1.0, 0, 2)),
        top_p=float(_number(body, "top_p", 1.0, 0, 1)),
        max_new_tokens=int(_number({name: max_tokens}, name, DEFAULT_MAX_TOKENS, 1, 8192, integer=True)),
        repetition_penalty=float(_number(body, "repetition_penalty", 1.0, 0.5, 3)),
        seed=secrets.randbelow(2**31) if seed is None else int(_number(body, "seed", 0, 0, 2**63 - 1, True)),
    )
    if settings.top_p == 0:
        raise _bad("top_p", "must be above 0 (1 = off)")
    return ChatRequest(
        model=model,
        messages=_messages(body.get("messages")),
        settings=settings,
        stop=_stops(body.get("stop")),
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        fit_to_context=max_tokens is None,
    )


def new_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    cid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int
) -> dict:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(
    cid: str, model: str, delta: dict, finish: str | None = None, with_usage: dict | None = None
) -> dict:
    """One server-sent event of a stream; the usage-only chunk has no choices (OpenAI's shape)."""
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    if with_usage is not None:
        return {**body, "choices": [], "usage": with_usage}
    return {**body, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}


def model_card(model_id: str, owner: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owner}
