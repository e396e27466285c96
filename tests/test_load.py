"""Load: 8 chat clients at once against the running app, and a 1M-row dataset checked in bounded memory.

The chat endpoint is the Chat tab's `on_send` (Gradio names it /on_send after the handler); the app
queues events with default_concurrency_limit=4, so 8 clients mean two waves.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import psutil
import pytest

from tests.support.app import ROOT, AppServer

CLIENTS = 8
RSS_GROWTH_LIMIT = 300 * 1024 * 1024


def _ask(client, tiny_model: str, prompt: str) -> tuple:
    return client.predict(prompt, str(tiny_model), "base", "base", False, "", 0.0, 0.9, 8, 1.0, 0,
                          api_name="/on_send")  # fmt: skip


@pytest.mark.slow
@pytest.mark.serial
def test_eight_chat_clients_all_answered_in_queue_order_with_stable_memory(tiny_model, studio_home):
    from gradio_client import Client

    app = AppServer(studio_home).start()
    try:
        clients = [Client(app.url, verbose=False) for _ in range(CLIENTS)]
        warm = _ask(clients[0], tiny_model, "warm up")  # loads the model once
        assert warm[0]["value"][-1]["role"] == "assistant"
        proc = psutil.Process(app.proc.pid)
        before = proc.memory_info().rss
        finished: dict[int, float] = {}
        answers: dict[int, tuple] = {}
        errors: list[BaseException] = []

        def one(i: int) -> None:
            try:
                answers[i] = _ask(clients[i], tiny_model, f"question number {i}")
                finished[i] = time.monotonic()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = []
        for i in range(CLIENTS):  # staggered, so the queue order is the index order
            threads.append(threading.Thread(target=one, args=(i,)))
            threads[-1].start()
            time.sleep(0.15)
        for thread in threads:
            thread.join(timeout=300)
        assert not errors, errors
        assert sorted(answers) == list(range(CLIENTS))
        for i, (left, right, _prompt, _reveal, speed, *_rest) in answers.items():
            assert left["value"][0]["content"][0]["text"] == f"question number {i}"
            assert left["value"][-1]["role"] == right["value"][-1]["role"] == "assistant"
            assert speed.count("8 tokens") == 2, speed  # both sides generated max_new_tokens
        # four workers: the second wave can only finish after one of the first wave finished
        assert min(finished[i] for i in range(4)) <= min(finished[i] for i in range(4, CLIENTS))
        assert app.proc.poll() is None, "the app crashed under load"
        growth = proc.memory_info().rss - before
        assert growth < RSS_GROWTH_LIMIT, f"the app grew by {growth / 1e6:.0f} MB serving {CLIENTS} chats"
    finally:
        app.kill()


PEAK = """
import resource, subprocess, sys
code = subprocess.call([sys.executable, "-m", "studio", "data", "check", sys.argv[1]], cwd={root!r})
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@pytest.mark.slow
def test_a_million_rows_are_checked_in_bounded_memory(tmp_path):
    path = tmp_path / "million.jsonl"
    with path.open("w") as fh:
        for i in range(1_000_000):
            fh.write(json.dumps({"instruction": f"question {i}", "output": f"answer {i}"}) + "\n")
        fh.write('{"instruction": "broken"\n')
    res = subprocess.run([sys.executable, "-c", PEAK.format(root=str(ROOT)), str(path)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    code, peak_kb = res.stdout.strip().splitlines()[-1].split()
    assert "1000001 rows read, 1000000 usable, 1 error" in res.stdout, res.stdout + res.stderr
    assert "million.jsonl line 1000001: malformed JSON" in res.stdout
    assert code == "1"  # one broken row: a script can tell (`--allow-errors` would exit 0)
    assert int(peak_kb) < 250 * 1024, f"peak RSS {int(peak_kb) / 1024:.0f} MB for a 1M-row check"
