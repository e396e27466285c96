"""Pair generation jobs: prompts in, pairs.jsonl out; a job killed with kill -9 resumes without a
pair lost or written twice; the vote store's v3 schema (annotator, sources, pair id, thumbs)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from studio import workspace
from studio.prefs import generate, pairs, records, store
from tests.conftest import ROOT

CONVO = [{"role": "user", "content": "Capital of France?"}]


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "studio", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, **kw
    )


def test_load_prompts_from_text_dataset_and_typed_lines(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("First?\n\n  Second?  \nFirst?\n")
    assert generate.load_prompts(str(txt), lines=["Third?"]) == [
        [{"role": "user", "content": "First?"}],
        [{"role": "user", "content": "Second?"}],
        [{"role": "user", "content": "Third?"}],
    ]
    alpaca = generate.load_prompts(dataset="sample:alpaca.jsonl")
    assert len(alpaca) == 42 and all(p[-1]["role"] == "user" for p in alpaca)
    dpo = generate.load_prompts(str(ROOT / "sample_data" / "dpo.jsonl"))
    assert dpo and all(p[-1]["role"] == "user" for p in dpo)
    with pytest.raises(ValueError, match="no prompts"):
        pairs.new_job([], pairs.Source(), pairs.Source())


def test_generate_kill_9_then_resume_loses_and_repeats_nothing(tiny_model, studio_home):
    prompts = [f"Question number {i}: say something?" for i in range(12)]
    (studio_home / "prompts.txt").write_text("\n".join(prompts))
    env = {**os.environ, "STUDIO_HOME": str(studio_home)}
    argv = [
        sys.executable,
        "-m",
        "studio",
        "pairs",
        "generate",
        "--prompts",
        str(studio_home / "prompts.txt"),
    ]
    argv += ["--a", str(tiny_model), "--b", str(tiny_model), "--b-temperature", "0.9", "--b-seed", "7"]
    argv += ["--max-new-tokens", "8"]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 120
    lines = 0
    while time.monotonic() < deadline and proc.poll() is None:
        found = list((studio_home / "pairs").glob("*/pairs.jsonl"))
        lines = len(found[0].read_text().splitlines()) if found else 0
        if lines >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, (
        "the job ended before it could be killed: " + proc.stdout.read().decode()[-2000:]
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    [job_id] = pairs.list_jobs()
    path = pairs.job_dir(job_id) / "pairs.jsonl"
    before = path.read_text()
    assert 2 <= len(before.splitlines()) < 12
    with open(path, "a") as fh:  # a kill that cut a line short
        fh.write('{"pair_id": "' + job_id + '/99", "answer_a": "half')
    assert pairs.job_state(job_id) == "stopped"  # "running" with a vanished pid reads as stopped

    done = _cli("pairs", "resume", job_id, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    after = path.read_text()
    assert after.startswith(before)  # the pairs made before the kill are untouched
    made = pairs.read_pairs(job_id)
    assert len(after.splitlines()) == len(made) == 12  # no line repeated, the torn one cut away
    assert sorted(p.prompt_id for p in made) == list(range(12))
    assert [p.messages[0]["content"] for p in sorted(made, key=lambda p: p.prompt_id)] == prompts
    first = made[0]
    assert first.source_a == f"{tiny_model} (greedy)"
    assert first.source_b == f"{tiny_model} (temperature 0.9, seed 7)"
    assert first.settings_b == {"temperature": 0.9, "seed": 7, "max_new_tokens": 8}
    assert pairs.read_status(job_id)["state"] == "completed" and pairs.read_status(job_id)["done"] == 12
    listing = _cli("pairs", "list", env=env)
    assert f"{job_id}  completed  12/12" in listing.stdout


def test_generate_errors_are_one_line(studio_home):
    env = {**os.environ, "STUDIO_HOME": str(studio_home)}
    bad = _cli("pairs", "generate", "--prompts", str(studio_home / "missing.jsonl"), env=env)
    assert bad.returncode == 1 and "error:" in bad.stderr and "Traceback" not in bad.stderr
    assert _cli("pairs", "resume", "no-such-job", env=env).returncode == 1


def _v2_database() -> None:
    conn = sqlite3.connect(workspace.db_path(), isolation_level=None)
    for migration in store.MIGRATIONS[:2]:
        migration(conn)
    conn.execute(
        "INSERT INTO votes (created_at, session_id, messages, answer_a, answer_b, model_a, adapter_a,"
        " model_b, adapter_b, shown_first, verdict, edited, settings)"
        " VALUES ('2026-11-01T00:00:00.000+00:00', 's1', ?, 'Paris.', 'Lyon.', 'default', '', 'default',"
        " 'runs/r1/adapter', 'B', 'A', NULL, '{}')",
        (json.dumps(CONVO),),
    )
    conn.execute("PRAGMA user_version = 2")
    conn.close()


def test_a_v2_database_upgrades_to_v3_keeping_its_votes():
    _v2_database()
    [old] = store.all_votes()
    assert (old.id, old.answer_a, old.verdict, old.shown_first, old.adapter_b) == (
        1,
        "Paris.",
        "A",
        "B",
        "runs/r1/adapter",
    )
    assert (old.annotator, old.source_a, old.source_b, old.pair_id) == ("", "", "", "")
    with sqlite3.connect(workspace.db_path()) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION == 3
        assert {row[1] for row in conn.execute("PRAGMA index_list(votes)")} >= {"votes_session", "votes_pair"}
    new = store.record_vote(
        CONVO, "Paris.", "", "down", edited="Paris, France.", annotator="ann", source_a="x", pair_id="j/0"
    )
    assert new == 2
    vote = store.all_votes()[1]
    assert (vote.annotator, vote.source_a, vote.pair_id, vote.verdict) == ("ann", "x", "j/0", "down")
    assert records.kto_records([vote]) == [
        {"prompt": CONVO, "completion": [{"role": "assistant", "content": "Paris, France."}], "label": True},
        {"prompt": CONVO, "completion": [{"role": "assistant", "content": "Paris."}], "label": False},
    ]
    assert records.dpo_records(store.all_votes()) == [
        {"prompt": CONVO, "chosen": [{"role": "assistant", "content": "Paris."}],
         "rejected": [{"role": "assistant", "content": "Lyon."}]},
        {"prompt": CONVO, "chosen": [{"role": "assistant", "content": "Paris, France."}],
         "rejected": [{"role": "assistant", "content": "Paris."}]},
    ]  # fmt: skip
    assert [v.id for v in store.pair_votes("j/")] == [2] and store.pair_votes("J/") == []


def _teacher_server(seen: list, delay: float = 0.0):
    """A stand-in OpenAI-compatible server on 127.0.0.1 answering '<model> says: <prompt>'."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server hook name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers.get("Authorization"), body))
            time.sleep(delay)
            text = f"{body['model']} says: {body['messages'][-1]['content']}"
            reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/v1"


def test_an_openai_compatible_endpoint_answers_as_a_teacher_and_its_key_stays_off_disk(monkeypatch):
    seen = []
    server, url = _teacher_server(seen)
    monkeypatch.setenv("TEACHER_KEY", "sk-secret-123")
    try:
        teacher = pairs.Source(url=url, endpoint_model="big", key_env="TEACHER_KEY", temperature=0.5, seed=3)
        other = pairs.Source(url=url, endpoint_model="small")
        job = pairs.new_job([CONVO, [{"role": "user", "content": "Why?"}]], teacher, other)
        assert generate.run(job.job_id) == 0
    finally:
        server.shutdown()
    made = pairs.read_pairs(job.job_id)
    assert [(p.answer_a, p.answer_b) for p in made] == [
        ("big says: Capital of France?", "small says: Capital of France?"),
        ("big says: Why?", "small says: Why?"),
    ]
    assert made[0].source_a == f"big @ {url} (temperature 0.5, seed 3)"
    path, auth, body = seen[0]
    assert (path, auth, body["temperature"], body["seed"]) == (
        "/v1/chat/completions",
        "Bearer sk-secret-123",
        0.5,
        3,
    )
    assert seen[1][1] is None  # no key named: none sent
    folder = pairs.job_dir(job.job_id)
    assert not any("sk-secret-123" in f.read_text() for f in folder.iterdir() if f.is_file())


def test_an_unreachable_endpoint_fails_the_job_with_a_plain_error():
    dead = pairs.Source(url="http://127.0.0.1:9/v1", endpoint_model="m")
    job = pairs.new_job([CONVO], dead, dead)
    assert generate.run(job.job_id) == 1
    status = pairs.read_status(job.job_id)
    assert (
        status["state"] == "failed" and "http://127.0.0.1:9/v1/chat/completions: no answer" in status["error"]
    )


def test_stop_then_resume_a_background_job(studio_home):
    seen = []
    server, url = _teacher_server(seen, delay=0.4)
    try:
        source = pairs.Source(url=url, endpoint_model="t")
        job = generate.submit([[{"role": "user", "content": f"Q{i}?"}] for i in range(12)], source, source)
        deadline = time.monotonic() + 60
        while len(pairs.read_pairs(job.job_id)) < 2:
            assert time.monotonic() < deadline, pairs.log_path(job.job_id).read_text()
            time.sleep(0.05)
        generate.stop(job.job_id)
        while pairs.job_state(job.job_id) != "stopped":
            assert time.monotonic() < deadline, pairs.read_status(job.job_id)
            time.sleep(0.05)
        stopped_at = len(pairs.read_pairs(job.job_id))
        assert 2 <= stopped_at < 12
        generate.start(job.job_id)  # what the Rate tab's Resume does
        while pairs.job_state(job.job_id) != "completed":
            assert time.monotonic() < deadline, pairs.read_status(job.job_id)
            time.sleep(0.1)
    finally:
        server.shutdown()
    made = pairs.read_pairs(job.job_id)
    assert sorted(p.prompt_id for p in made) == list(range(12))
    assert len(seen) == 24  # two answers per prompt, none asked twice
