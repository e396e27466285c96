"""API server benchmark: 8 streaming clients at once against the same 8 requests one at a time.

Continuous batching vs sequential answers, on the default model with the base and two LoRA
adapters mixed, through the official `openai` client.

Both contenders talk to the same `python -m studio serve` app (in this process, on 127.0.0.1)
through the official `openai` client; a warm-up request per model comes first; rounds alternate
their order; medians. Prints the load average beside the numbers (a shared CPU moves them).
Knows nothing about training, data or the UI.

Run as: python -m bench.serve [--quick]
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.chat import PROMPTS, make_adapter
from bench.common import Row, Section, bench_home, bench_parser, interleave, log, offline_env, publish

CLIENTS = 8


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


class _Server:
    """The studio's API app on a free loopback port, in a thread."""

    def __init__(self, served) -> None:
        import socket

        import uvicorn

        from studio.serve.api import build_app

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        self.server = uvicorn.Server(
            uvicorn.Config(build_app(served), host="127.0.0.1", port=port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def _ask(url: str, model: str, prompt: str, max_new: int) -> tuple[str, int]:
    """One streamed greedy answer through the official client: (text, completion tokens)."""
    from openai import OpenAI

    stream = OpenAI(base_url=url, api_key="unused", max_retries=0).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_new,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, tokens = [], 0
    for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return "".join(text), tokens


def _concurrent(url: str, jobs: list[tuple[str, str]], max_new: int, texts: dict) -> dict:
    results: list = [None] * len(jobs)

    def one(i: int) -> None:
        results[i] = _ask(url, *jobs[i], max_new)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    texts["batched"] = [text for text, _ in results]
    return {"tok_s": sum(tokens for _, tokens in results) / wall, "wall_s": wall}


def _sequential(url: str, jobs: list[tuple[str, str]], max_new: int, texts: dict) -> dict:
    start = time.perf_counter()
    results = [_ask(url, model, prompt, max_new) for model, prompt in jobs]
    wall = time.perf_counter() - start
    texts["sequential"] = [text for text, _ in results]
    return {"tok_s": sum(tokens for _, tokens in results) / wall, "wall_s": wall}


def run(quick: bool) -> Section:
    offline_env()
    bench_home()
    import torch

    from studio.serve import api

    max_new, rounds = (16, 2) if quick else (64, 3)
    section = Section("serve")
    with tempfile.TemporaryDirectory() as tmp:
        adapters = [str(make_adapter("default", Path(tmp) / name)) for name in ("lora-a", "lora-b")]
        served = api.load("default", adapters, max_batch=CLIENTS, max_waiting=CLIENTS)
    served.key = None
    models = [served.base_id, *served.adapters]
    jobs = [(models[i % len(models)], PROMPTS[i % len(PROMPTS)]) for i in range(CLIENTS)]
    server = _Server(served)
    try:
        log(f"serve: warm-up, then {rounds} rounds of {CLIENTS} clients x {max_new} tokens; load {_load()}")
        for model in models:
            _ask(server.url, model, PROMPTS[0], 4)
        texts: dict = {}
        load_before = _load()
        m = interleave(
            {
                "batched": lambda: _concurrent(server.url, jobs, max_new, texts),
                "sequential": lambda: _sequential(server.url, jobs, max_new, texts),
            },
            rounds,
        )
        load_after = _load()
    finally:
        server.close()
        served.batcher.close()
    same = sum(a == b for a, b in zip(texts["batched"], texts["sequential"], strict=True))
    section.rows.append(
        Row(
            "serve",
            f"{CLIENTS} streaming clients, base + 2 LoRA mixed, tokens/s",
            m["batched"]["tok_s"],
            m["sequential"]["tok_s"],
            "tok/s",
            target=2.0,
            note="continuous batching vs one request at a time",
        )
    )
    section.notes.append(
        f"{CLIENTS} clients x {max_new} tokens, {rounds} rounds, medians: batched {m['batched']['wall_s']:.1f} s, "
        f"sequential {m['sequential']['wall_s']:.1f} s ({torch.get_num_threads()} torch threads); "
        f"greedy texts equal in {same} of {CLIENTS}; load average {load_before} before, {load_after} after"
    )
    return section


def main(argv: list[str] | None = None) -> int:
    args = bench_parser(__doc__, prog="python -m bench.serve").parse_args(argv)
    section = run(args.quick)
    code = publish([section], args.quick, "API server run", not args.no_write)
    print(f"batched / sequential throughput: {section.rows[0].ratio:.2f}x (load average now {_load()})")
    return code


if __name__ == "__main__":
    sys.exit(main())
