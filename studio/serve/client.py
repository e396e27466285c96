"""The studio as a client of any OpenAI-compatible chat endpoint (this server, vLLM, Ollama,
llama.cpp, OpenAI itself): for features that take a "teacher" or "judge" model as a URL + key.

    complete("http://127.0.0.1:8000/v1", key, "my-run", [{"role": "user", "content": "Hi"}],
             temperature=0, max_tokens=64)  -> "Hello! ..."

Waits and retries when the server answers 429 (busy) with Retry-After. Failures raise
EndpointError naming the URL and what the server said; the key never appears in a message.
Knows nothing about models, decoding or the UI.
"""

from __future__ import annotations

import time

import httpx

SETTINGS = ("temperature", "top_p", "max_tokens", "seed", "stop", "repetition_penalty")


class EndpointError(ValueError):
    """A request to an OpenAI-compatible endpoint failed, for a reason the message explains."""


def _endpoint(url: str, path: str) -> str:
    """`path` under an API base URL given as `http://host:port/v1` (or with the path already on it)."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise EndpointError(f"{url!r} is not a URL: use e.g. http://127.0.0.1:8000/v1")
    return url if url.endswith(path) else url + path


def _headers(key: str | None) -> dict:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _explain(url: str, response: httpx.Response) -> EndpointError:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:300]
    hint = " (check the API key)" if response.status_code in (401, 403) else ""
    return EndpointError(f"{url} answered {response.status_code}: {message}{hint}")


def _post(url: str, key: str | None, body: dict, timeout: float, retries: int) -> dict:
    for attempt in range(retries + 1):
        try:
            response = httpx.post(url, json=body, headers=_headers(key), timeout=timeout)
        except httpx.HTTPError as exc:
            raise EndpointError(
                f"{url}: no answer ({type(exc).__name__}: {exc}); is the server running?"
            ) from None
        if response.status_code == 429 and attempt < retries:
            time.sleep(min(30.0, float(response.headers.get("Retry-After", "1") or 1)))
            continue
        if response.status_code != 200:
            raise _explain(url, response)
        return response.json()
    raise AssertionError("unreachable")


def complete(
    url: str,
    key: str | None,
    model: str,
    messages: list[dict],
    timeout: float = 300.0,
    retries: int = 3,
    **settings,
) -> str:
    """The assistant's answer to `messages` from `model` at an OpenAI-compatible `url`.

    settings: temperature, top_p, max_tokens, seed, stop, repetition_penalty (others are refused).
    """
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise EndpointError(f"unknown setting(s) {', '.join(unknown)}: use {', '.join(SETTINGS)}")
    endpoint = _endpoint(url, "/chat/completions")
    body = {"model": model, "messages": messages, **{k: v for k, v in settings.items() if v is not None}}
    answer = _post(endpoint, key, body, timeout, retries)
    try:
        return answer["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise EndpointError(
            f"{endpoint} answered without choices[0].message.content: {str(answer)[:300]}"
        ) from None


def list_models(url: str, key: str | None, timeout: float = 30.0) -> list[str]:
    """The model ids an endpoint serves (GET /models)."""
    endpoint = _endpoint(url, "/models")
    try:
        response = httpx.get(endpoint, headers=_headers(key), timeout=timeout)
    except httpx.HTTPError as exc:
        raise EndpointError(
            f"{endpoint}: no answer ({type(exc).__name__}: {exc}); is the server running?"
        ) from None
    if response.status_code != 200:
        raise _explain(endpoint, response)
    return [m["id"] for m in response.json().get("data", [])]
