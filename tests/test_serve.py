"""The OpenAI-compatible server on the tiny model, driven by the official `openai` client: model
list, greedy text equal to the chat engine's (whole and streamed), 8 concurrent streams on mixed
adapters in shared decode steps, disconnect frees the slot, 429 when full, OpenAI error shapes,
the API key (required off loopback, never logged), and the studio's own client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import httpx
import openai
import pytest
import torch
from openai import OpenAI

from studio.chat.engine import GenSettings
from studio.serve import api, client, keys
from studio.serve.batcher import Batcher
from tests.support.apiserver import api_server
from tests.support.app import _free_port
from tests.support.runfolder import make_adapter

ROOT = Path(__file__).resolve().parent.parent
ASK = [{"role": "user", "content": "What is the capital of France?"}]
OTHER = [{"role": "user", "content": "Write a haiku about the sea."}]


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve_runs")
    make_adapter(tiny_model, root / "lora-a" / "adapter", seed=1)
    make_adapter(tiny_model, root / "lora-b" / "adapter", seed=2)
    return root


@pytest.fixture(scope="module")
def served(tiny_model, runs):
    torch.set_num_threads(1)
    served = api.load(str(tiny_model), [str(runs / "lora-a"), str(runs / "lora-b")])
    served.key = None
    yield served
    served.batcher.close()
    served.engine.unload()


@pytest.fixture(scope="module")
def url(served):
    with api_server(served) as base_url:
        yield base_url


def alone(served, messages, adapter, max_tokens: int) -> tuple[str, str, int]:
    """What ChatEngine.stream says greedily, its finish in OpenAI's words, and its token count."""
    settings = GenSettings(temperature=0, top_p=1, repetition_penalty=1.0, max_new_tokens=max_tokens)
    reply = deque(served.engine.stream(messages, adapter, settings), maxlen=1)[0]
    return reply.text, {"eos": "stop", "length": "length"}[reply.finish], reply.tokens


def test_models_whole_and_streamed_answers_equal_the_chat_engine(served, url):
    oai = OpenAI(base_url=url, api_key="unused", max_retries=0)
    assert [m.id for m in oai.models.list()] == ["tiny-llama", "lora-a", "lora-b"]
    texts = {}
    for model, adapter in (("tiny-llama", None), ("lora-a", "lora-a")):
        expected, finish, tokens = alone(served, ASK, adapter, 12)
        whole = oai.chat.completions.create(model=model, messages=ASK, temperature=0, max_tokens=12)
        assert whole.choices[0].message.content == expected and whole.choices[0].finish_reason == finish
        assert whole.usage.prompt_tokens == len(served.engine.prompt_ids(ASK))
        assert whole.usage.completion_tokens == tokens
        chunks = list(
            oai.chat.completions.create(
                model=model,
                messages=ASK,
                temperature=0,
                max_tokens=12,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
        assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
        texts[model] = expected
    assert texts["tiny-llama"] != texts["lora-a"]  # the adapter answers, not the base


def test_the_stream_is_server_sent_events_ending_in_done(url):
    body = {"model": "base", "messages": ASK, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]" and '"chat.completion.chunk"' in events[0]


def test_eight_concurrent_streams_on_mixed_adapters_share_decode_steps(served, url):
    jobs = [(m, ASK if i % 2 else OTHER) for i, m in enumerate(["tiny-llama", "lora-a", "lora-b"] * 3)][:8]
    engine_name = {"tiny-llama": None, "lora-a": "lora-a", "lora-b": "lora-b"}
    expected = [alone(served, messages, engine_name[model], 16)[0] for model, messages in jobs]
    results: list = [None] * len(jobs)
    ready = threading.Barrier(len(jobs))

    def one(i: int) -> None:
        model, messages = jobs[i]
        oai = OpenAI(base_url=url, api_key="unused", max_retries=0)
        ready.wait()
        stream = oai.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=16, stream=True
        )
        results[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    served.batcher.widest = 0
    steps_before = served.batcher.steps
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == expected
    steps = served.batcher.steps - steps_before
    assert served.batcher.widest >= 4, "requests that arrive together must share a forward pass"
    assert steps < 0.5 * 16 * len(jobs), f"{steps} decode steps for 8 answers of 16 tokens: not batched"


@pytest.mark.serial
def test_disconnect_frees_the_slot_and_a_full_server_answers_429(served, monkeypatch):
    small = api.Served(served.engine, Batcher(served.engine, max_batch=1, max_waiting=0), served.base_id)
    try:
        with api_server(small) as url:
            oai = OpenAI(base_url=url, api_key="unused", max_retries=0)
            stream = oai.chat.completions.create(
                model="base", messages=ASK, temperature=0, max_tokens=400, stream=True
            )
            for _, _chunk in zip(range(3), stream, strict=False):
                pass
            with pytest.raises(openai.RateLimitError) as busy:
                oai.chat.completions.create(model="base", messages=ASK, max_tokens=2)
            assert busy.value.response.headers["retry-after"].isdigit() and "busy" in busy.value.message
            steps_at_close = small.batcher.steps
            stream.close()  # the client goes away mid-answer
            deadline = time.monotonic() + 10
            while small.batcher.load()["decoding"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert small.batcher.load()["decoding"] == 0
            assert small.batcher.steps - steps_at_close < 50, "decoding went on after the client left"
            for _ in range(5):  # back to back: an answered request no longer holds the only slot
                again = oai.chat.completions.create(model="base", messages=ASK, max_tokens=2)
                assert again.choices[0].finish_reason in ("stop", "length")

            # 250 ms a step: the answer cannot be done within the client's 1 s, however early the
            # model would stop (a sampled answer can hit its end token after a few words)
            real = served.engine.forward
            slow = lambda *a, **k: (time.sleep(0.25), real(*a, **k))[1]  # noqa: E731
            with monkeypatch.context() as patch:
                patch.setattr(served.engine, "forward", slow)
                body = {"model": "base", "messages": ASK, "max_tokens": 400, "temperature": 0}
                with pytest.raises(httpx.ReadTimeout):  # a client that gives up on a whole answer
                    httpx.post(f"{url}/chat/completions", json=body, timeout=1.0)
                gave_up = small.batcher.steps
                deadline = time.monotonic() + 15
                while small.batcher.load()["decoding"] and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert small.batcher.load()["decoding"] == 0 and small.batcher.steps - gave_up < 20
    finally:
        small.batcher.close()


def test_errors_have_the_openai_shape_and_say_what_to_change(served, url):
    oai = OpenAI(base_url=url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as unknown:
        oai.chat.completions.create(model="nope", messages=ASK)
    assert unknown.value.code == "model_not_found" and "tiny-llama, lora-a, lora-b" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as hot:
        oai.chat.completions.create(model="base", messages=ASK, temperature=9)
    assert hot.value.param == "temperature" and "from 0 to 2" in hot.value.message
    long = [{"role": "user", "content": "hello " * 3000}]
    with pytest.raises(openai.BadRequestError) as too_long:
        oai.chat.completions.create(model="base", messages=long)
    assert too_long.value.code == "context_length_exceeded" and "reads at most 512" in too_long.value.message
    with pytest.raises(openai.BadRequestError) as too_many:
        oai.chat.completions.create(model="base", messages=ASK, max_tokens=600)
    assert too_many.value.code == "context_length_exceeded" and "max_tokens" in too_many.value.message
    for bad, field in (({"n": 2}, "n"), ({"stop": 5}, "stop"), ({"top_p": 0}, "top_p")):
        with pytest.raises(openai.BadRequestError) as refused:
            oai.chat.completions.create(model="base", messages=ASK, **bad)
        assert refused.value.param == field
    raw = httpx.post(f"{url}/chat/completions", content=b"{not json", timeout=30)
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    text, _, _ = alone(served, ASK, "lora-a", 12)
    at = next(i for i in range(1, len(text) - 1) if text[i : i + 2].isalpha())  # a stop inside the answer
    stop, before = text[at : at + 2], text[: text.find(text[at : at + 2])]
    cut = oai.chat.completions.create(model="lora-a", messages=ASK, temperature=0, max_tokens=12, stop=[stop])
    assert cut.choices[0].message.content == before and cut.choices[0].finish_reason == "stop"
    streamed = oai.chat.completions.create(
        model="lora-a", messages=ASK, temperature=0, max_tokens=12, stop=stop, stream=True
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == before
    )  # no part of it sent


def test_the_studio_client_speaks_the_same_protocol(served, url):
    expected, _, _ = alone(served, OTHER, "lora-b", 10)
    assert client.complete(url, None, "lora-b", OTHER, temperature=0, max_tokens=10) == expected
    assert client.list_models(url + "/", None) == ["tiny-llama", "lora-a", "lora-b"]
    with pytest.raises(client.EndpointError, match="answered 404: model 'gone' is not served"):
        client.complete(url, "sk-secret-value", "gone", OTHER)
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(client.EndpointError, match="is the server running") as refused:
        client.complete(dead, "sk-secret-value", "x", OTHER)
    assert "sk-secret-value" not in str(refused.value)
    with pytest.raises(client.EndpointError, match="unknown setting"):
        client.complete(url, None, "base", OTHER, temprature=0)


def test_api_key_file_is_private_and_masked(studio_home):
    key = keys.make_key()
    assert keys.find_key() == (key, str(keys.key_file()))
    assert (
        keys.key_file().stat().st_mode & 0o777 == 0o600
        and keys.key_file().parent.stat().st_mode & 0o777 == 0o700
    )
    assert keys.mask_key(key) == "sk-studio-****" + key[-4:]
    assert keys.authorized(f"Bearer {key}", key) and not keys.authorized("Bearer nope", key)
    assert not keys.authorized(None, key) and keys.authorized(None, None)
    assert keys.is_loopback("127.0.0.1") and keys.is_loopback("::1") and keys.is_loopback("localhost")
    assert not keys.is_loopback("0.0.0.0") and not keys.is_loopback("192.168.1.5")


def _serve(args: list[str], home: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "studio", "serve", *args],
        cwd=ROOT,
        env={**os.environ, "STUDIO_HOME": str(home), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_a_network_bind_without_a_key_refuses_to_start(studio_home):
    env = {k: v for k, v in os.environ.items() if k != keys.ENV}
    proc = subprocess.run(
        [sys.executable, "-m", "studio", "serve", "--host", "0.0.0.0", "--port", str(_free_port())],
        cwd=ROOT,
        env={**env, "STUDIO_HOME": str(studio_home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "needs an API key" in proc.stderr and "--make-key" in proc.stderr
    keys.make_key()
    keys.check_bind("0.0.0.0", keys.find_key()[0])  # with a key it may start


def test_the_key_is_required_and_never_logged(tiny_model, runs, studio_home):
    secret, wrong = "sk-studio-test-secret-4242-abcdef", "sk-wrong-key-9999-zyxwvu"
    port = _free_port()
    proc = _serve(
        ["--port", str(port), "--model", str(tiny_model), "--adapters", str(runs / "lora-a")],
        studio_home,
        {keys.ENV: secret},
    )
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(url.removesuffix("/v1") + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert httpx.get(f"{url}/models", timeout=10).status_code == 401
        with pytest.raises(openai.AuthenticationError, match="missing or wrong API key"):
            OpenAI(base_url=url, api_key=wrong, max_retries=0).models.list()
        answer = OpenAI(base_url=url, api_key=secret, max_retries=0).chat.completions.create(
            model="lora-a", messages=ASK, max_tokens=4
        )
        assert answer.usage.completion_tokens >= 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        log = proc.communicate(timeout=30)[0]
    assert "401" in log and "200" in log  # requests were logged...
    assert "sk-studio-****cdef" in log  # ...and the key only masked
    assert secret not in log and wrong not in log


def test_a_failed_step_answers_500_and_the_server_goes_on(served, url, monkeypatch):
    real, calls = served.engine.forward, []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory on the accelerator")
        return real(*args, **kwargs)

    monkeypatch.setattr(served.engine, "forward", fails_once)
    oai = OpenAI(base_url=url, api_key="unused", max_retries=0)
    with pytest.raises(openai.InternalServerError, match="out of memory on the accelerator"):
        oai.chat.completions.create(model="base", messages=ASK, max_tokens=3)
    again = oai.chat.completions.create(model="base", messages=ASK, temperature=0, max_tokens=3)
    assert again.choices[0].message.content == alone(served, ASK, None, 3)[0]
