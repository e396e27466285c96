"""On the real default model: the adapter of the quick plan's sample run answers through the official
`openai` client, streamed, with the same greedy text as the chat engine, for base and adapter,
while several clients ask at once."""

from __future__ import annotations

import threading
from collections import deque

import pytest
import torch
from openai import OpenAI

from studio.chat.engine import GenSettings
from studio.serve import api
from tests.support.apiserver import api_server

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "List three fruits."]


def test_tuned_adapter_streams_through_openai_like_the_chat_engine(default_model, default_tuned_run):
    torch.set_num_threads(2)
    served = api.load(default_model, [str(default_tuned_run)])
    served.key = None
    adapter = next(iter(served.adapters))
    settings = GenSettings(temperature=0, top_p=1, repetition_penalty=1.0, max_new_tokens=24)
    jobs = [(model, prompt) for prompt in PROMPTS for model in (served.base_id, adapter)]
    engine_name = {served.base_id: None, adapter: adapter}
    expected = [
        deque(served.engine.stream([{"role": "user", "content": p}], engine_name[m], settings), maxlen=1)[
            0
        ].text
        for m, p in jobs
    ]
    got: list = [None] * len(jobs)
    try:
        with api_server(served) as url:

            def ask(i: int) -> None:
                model, prompt = jobs[i]
                stream = OpenAI(base_url=url, api_key="unused", max_retries=0).chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": prompt}],
                    temperature=0,
                    max_tokens=24,
                    stream=True,
                )
                got[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(jobs))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=300)
    finally:
        served.batcher.close()
        served.engine.unload()
    assert got == expected
    assert "Paris" in got[0]
    assert got[0] != got[1] or got[2] != got[3], "the tuned adapter should change an answer"
    assert served.batcher.widest >= 2, "the clients should have shared decode steps"
