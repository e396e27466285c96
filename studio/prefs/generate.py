"""The pair generation job: for every prompt of a job, one answer from source A and one from
source B, appended to the job's pairs.jsonl (studio.prefs.pairs) as each batch finishes.

Run as: python -m studio pairs generate --prompts FILE --a default --b runs/<id>/adapter
        python -m studio pairs resume JOB_ID

Its own process, like a training run: the app starts it in its own session (`start`), SIGTERM
stops it after the pair in flight (state "stopped"), and `resume` (or the same command again)
continues with the prompts not yet done. Sources on the same base model are decoded on one chat
engine; when both sides share sampling settings a prompt's two answers go through one batched
forward pass per step (`ChatEngine.stream_pair`). An endpoint source is asked through
studio.serve.client (any OpenAI-compatible /chat/completions). Knows nothing about the vote store or the UI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

from studio.data import files, formats
from studio.data import store as datasets
from studio.prefs import pairs
from studio.prefs.pairs import Job, Pair, Source

ROOT = Path(__file__).resolve().parents[2]


# ---- prompts ------------------------------------------------------------------------------------


def prompt_of(record: dict, kind: str) -> list[dict] | None:
    """The conversation a record's answer replies to (None when it has no user turn)."""
    if kind == "sft":
        messages = record["messages"]
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        return None if last_user is None else messages[: last_user + 1]
    prompt = record.get("prompt") or []
    return prompt if prompt and prompt[-1]["role"] == "user" else None


def load_prompts(file: str = "", dataset: str = "", lines: list[str] | None = None) -> list[list[dict]]:
    """Prompts from a text file (one a line), a dataset file or saved dataset, and typed lines."""
    found: list[list[dict]] = []
    if file and Path(file).suffix == ".txt":
        text = Path(file).read_text(encoding="utf-8")
        lines = [*text.splitlines(), *(lines or [])]
    elif file or dataset:
        path = datasets.resolve(file or dataset)
        normalized = formats.normalize(files.read_rows(path), str(path))
        for record in normalized.records:
            prompt = prompt_of(record, normalized.kind)
            if prompt:
                found.append(prompt)
        if not found:
            raise ValueError(f"{path}: no prompts found: each row needs a user message or a prompt")
    found += [[{"role": "user", "content": line.strip()}] for line in lines or [] if line.strip()]
    unique = {json.dumps(p, sort_keys=True): p for p in found}  # a prompt asked twice is rated once
    return list(unique.values())


# ---- answering ----------------------------------------------------------------------------------


def _settings(source: Source) -> dict:
    return {"temperature": source.temperature, "seed": source.seed, "max_new_tokens": source.max_new_tokens}


def _gen_settings(source: Source):
    from studio.chat.engine import GenSettings

    return GenSettings(
        temperature=source.temperature, seed=source.seed, max_new_tokens=source.max_new_tokens
    ).check()


def ask_endpoint(source: Source, messages: list[dict]) -> str:
    """One answer from an OpenAI-compatible endpoint; the key is read from the named variable."""
    from studio.serve import client

    key = os.environ.get(source.key_env, "") if source.key_env else ""
    return client.complete(
        source.url,
        key or None,
        source.endpoint_model,
        messages,
        temperature=source.temperature,
        seed=source.seed,
        max_tokens=source.max_new_tokens,
    )


class Answerer:
    """Engines for the job's model sources, one per base model, loaded once."""

    def __init__(self, job: Job) -> None:
        self.engines: dict[str, object] = {}
        self.adapters: dict[tuple[str, str], str] = {}
        for source in (job.source_a, job.source_b):
            if not source.url:
                self._adapter(source)

    def _engine(self, spec: str):
        from studio.chat.engine import ChatEngine

        if spec not in self.engines:
            engine = ChatEngine()
            engine.load(spec)
            self.engines[spec] = engine
        return self.engines[spec]

    def _adapter(self, source: Source) -> str | None:
        engine = self._engine(source.model)
        if not source.adapter:
            return None
        key = (source.model, source.adapter)
        if key not in self.adapters:
            self.adapters[key] = engine.add_adapter(source.adapter)
        return self.adapters[key]

    def one(self, source: Source, messages: list[dict]) -> str:
        if source.url:
            return ask_endpoint(source, messages)
        replies = self._engine(source.model).stream(messages, self._adapter(source), _gen_settings(source))
        return _last(replies).text

    def both(self, a: Source, b: Source, messages: list[dict]) -> tuple[str, str]:
        """Both answers; one batched decode when both sides share an engine and settings."""
        if not a.url and not b.url and a.model == b.model and _settings(a) == _settings(b):
            engine = self._engine(a.model)
            replies = engine.stream_pair(
                messages, messages, self._adapter(a), self._adapter(b), _gen_settings(a)
            )
            ra, rb = _last(replies)
            return ra.text, rb.text
        return self.one(a, messages), self.one(b, messages)


def _last(iterator):
    """The final item of a stream (the finished replies)."""
    return deque(iterator, maxlen=1)[0]


# ---- the job ------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


def run(job_id: str) -> int:
    """Generate the job's missing pairs; exit code 0 when complete, 1 on failure, 2 when stopped."""
    job = pairs.load_job(job_id)
    pairs.repair(job_id)
    done = {p.prompt_id for p in pairs.read_pairs(job_id)}
    pairs.write_status(
        job_id, state="running", pid=os.getpid(), done=len(done), total=len(job.prompts), error=""
    )
    stopping: list[bool] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        return _generate(job, done, stopping)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _generate(job: Job, done: set[int], stopping: list[bool]) -> int:
    job_id = job.job_id
    todo = [p for p in job.prompts if p["id"] not in done]
    try:
        answerer = Answerer(job)
        for prompt in todo:
            if stopping:
                raise _Stop
            answer_a, answer_b = answerer.both(job.source_a, job.source_b, prompt["messages"])
            pair = Pair(
                pair_id=pairs.pair_id(job_id, prompt["id"]),
                prompt_id=prompt["id"],
                messages=prompt["messages"],
                answer_a=answer_a,
                answer_b=answer_b,
                source_a=job.source_a.label,
                source_b=job.source_b.label,
                settings_a=_settings(job.source_a),
                settings_b=_settings(job.source_b),
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            pairs.append_pair(job_id, pair)
            done.add(prompt["id"])
            pairs.write_status(job_id, done=len(done))
            print(f"pair {len(done)}/{len(job.prompts)}: prompt {prompt['id']}", flush=True)
    except _Stop:
        pairs.write_status(job_id, state="stopped", pid=None)
        return 2
    except (ValueError, OSError) as exc:
        pairs.write_status(job_id, state="failed", pid=None, error=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    pairs.write_status(job_id, state="completed", pid=None)
    return 0


def start(job_id: str) -> int:
    """Start (or resume) a job in its own process and session; returns its pid."""
    log = open(pairs.log_path(job_id), "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [sys.executable, "-m", "studio", "pairs", "resume", job_id],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    pairs.write_status(job_id, state="running", pid=proc.pid)
    return proc.pid


def stop(job_id: str) -> None:
    """Ask a running job to stop after the pair in flight."""
    pid = pairs.read_status(job_id).get("pid")
    if pid:
        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pairs.write_status(job_id, state="stopped", pid=None)


def submit(prompts: list[list[dict]], source_a: Source, source_b: Source) -> Job:
    """Create a job and start it in the background (what the Rate tab's 'Generate pairs' does)."""
    job = pairs.new_job(prompts, source_a, source_b)
    start(job.job_id)
    return job
