"""Generated answer pairs on disk: STUDIO_HOME/pairs/<job_id>/, one folder per generation job.

    job.json      the job: prompts (id + messages), the two answer sources, written once
    pairs.jsonl   one pair per line, appended and fsynced as each is done (never rewritten)
    status.json   state (queued|running|stopped|failed|completed), pid, done, total, error
    job.log       the job process's output

A pair's id is "<job_id>/<prompt_id>", unique across jobs; votes on it carry that id. Resume reads
pairs.jsonl and skips the prompt ids already there, so a job killed at any moment (kill -9
included) continues without a pair lost or written twice; a torn last line (the kill hit the
write) is ignored and its prompt done again.

This module owns that folder: nothing else reads or writes it. Knows nothing about models, the
vote store or the UI.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from studio import workspace

STATES = ("queued", "running", "stopped", "failed", "completed")


@dataclass(frozen=True)
class Source:
    """Where one side's answers come from.

    model: a model spec (default, a local folder, a Hub id) with an optional adapter folder;
    or `url` (an OpenAI-compatible endpoint, e.g. http://host:8000/v1) with `endpoint_model` and
    the NAME of an environment variable holding its key (the key itself is never written)."""

    model: str = "default"
    adapter: str = ""
    temperature: float = 0.0  # 0: greedy
    seed: int = 0
    max_new_tokens: int = 128
    url: str = ""
    endpoint_model: str = ""
    key_env: str = ""

    @property
    def label(self) -> str:
        how = "greedy" if self.temperature == 0 else f"temperature {self.temperature:g}, seed {self.seed}"
        if self.url:
            return f"{self.endpoint_model or 'model'} @ {self.url} ({how})"
        name = f"{self.model} + {self.adapter}" if self.adapter else self.model
        return f"{name} ({how})"


@dataclass(frozen=True)
class Job:
    job_id: str
    prompts: list[dict]  # {"id": int, "messages": [...]}
    source_a: Source
    source_b: Source
    created_at: str = ""


@dataclass(frozen=True)
class Pair:
    pair_id: str
    prompt_id: int
    messages: list[dict]
    answer_a: str
    answer_b: str
    source_a: str
    source_b: str
    settings_a: dict = field(default_factory=dict)
    settings_b: dict = field(default_factory=dict)
    created_at: str = ""


def jobs_root() -> Path:
    path = workspace.home() / "pairs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def job_dir(job_id: str) -> Path:
    return jobs_root() / workspace.check_name(job_id, "pair job id")


def new_job(prompts: list[list[dict]], source_a: Source, source_b: Source) -> Job:
    """Create a job folder (claimed atomically) with its prompts numbered from 0."""
    if not prompts:
        raise ValueError("pair job: no prompts: give a prompt file, a dataset or typed lines")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        job_id = f"{stamp}-pairs" + (f"-{n}" if n else "")
        try:
            job_dir(job_id).mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise ValueError(f"pair job: cannot claim a folder under {jobs_root()}")
    job = Job(
        job_id=job_id,
        prompts=[{"id": i, "messages": m} for i, m in enumerate(prompts)],
        source_a=source_a,
        source_b=source_b,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    workspace.atomic_write_json(job_dir(job_id) / "job.json", asdict(job))
    write_status(job_id, state="queued", done=0, total=len(prompts))
    return job


def load_job(job_id: str) -> Job:
    path = job_dir(job_id) / "job.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{path}: no readable pair job ({exc}): list jobs with `python -m studio pairs list`"
        ) from exc
    data["source_a"] = Source(**data["source_a"])
    data["source_b"] = Source(**data["source_b"])
    return Job(**data)


def list_jobs() -> list[str]:
    """Job ids, newest first."""
    return sorted((p.name for p in jobs_root().iterdir() if (p / "job.json").is_file()), reverse=True)


def read_status(job_id: str) -> dict:
    try:
        return json.loads((job_dir(job_id) / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def job_state(job_id: str) -> str:
    """The job's state; "running" with a vanished process reads as "stopped" (resume continues it)."""
    status = read_status(job_id)
    state = status.get("state", "queued")
    if state == "running" and status.get("pid"):
        try:
            os.kill(int(status["pid"]), 0)
        except ProcessLookupError:
            return "stopped"
        except PermissionError:
            pass
    return state


def write_status(job_id: str, **changes) -> dict:
    """Merge `changes` into status.json (atomic)."""
    status = {**read_status(job_id), **changes, "updated_at": time.time()}
    workspace.atomic_write_json(job_dir(job_id) / "status.json", status)
    return status


def log_path(job_id: str) -> Path:
    return job_dir(job_id) / "job.log"


def append_pair(job_id: str, pair: Pair) -> None:
    """Append one pair and fsync before returning: once this returns the pair survives a kill."""
    line = json.dumps(asdict(pair), ensure_ascii=False) + "\n"
    path = job_dir(job_id) / "pairs.jsonl"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_pairs(job_id: str) -> list[Pair]:
    """The job's pairs in the order they were made; a torn or repeated line is skipped."""
    path = job_dir(job_id) / "pairs.jsonl"
    if not path.exists():
        return []
    pairs: dict[str, Pair] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            pair = Pair(**json.loads(line))
        except (ValueError, TypeError):
            continue  # the last line a kill cut short: its prompt is generated again
        pairs.setdefault(pair.pair_id, pair)
    return list(pairs.values())


def repair(job_id: str) -> None:
    """Cut a torn last line before appending again, so new lines never join a broken one."""
    path = job_dir(job_id) / "pairs.jsonl"
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)
            fh.flush()
            os.fsync(fh.fileno())


def pair_id(job_id: str, prompt_id: int) -> str:
    return f"{job_id}/{prompt_id}"
