"""THE eval-folder contract: every file of `<run folder>/eval/<eval_id>/` is read and written here.

```
config.json       what was asked: eval set, the two models, judge, judging prompt, settings (no key)
items.jsonl       the frozen eval set: {"i", "prompt", "messages", "reference", "record"} per prompt
answers.jsonl     {"i", "a", "b", "finish_a", "finish_b"}: one line per prompt, appended
likelihood.jsonl  {"key": "ref:<i>"|"general:<k>", "nll_a", "nll_b", "tokens"}: appended
judge.jsonl       {"i", "first", "second", "outcome"}: both orders' verdicts, appended
status.json       {"state", "stage", "done", "total", "pid", "pid_created", "error", ...}
summary.json      the numbers (written atomically when the job ends)
eval.log          the job's stdout and stderr
```
Appended files are flushed and fsynced a line at a time, so a `kill -9` loses at most the line
being written; readers skip a torn last line and keep the first line of an index written twice.
Imports no torch: the app lists evaluations on every page.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

from studio import workspace

EVAL_DIR = "eval"
DEFAULT_JUDGE_PROMPT = """You are a careful, impartial judge. Two assistants answered the same question.

Question:
{question}

Answer 1:
{answer_1}

Answer 2:
{answer_2}

Which answer is more helpful, correct and clear? Do not let the order or the length of the answers
sway you. Reply with [[1]] if Answer 1 is better, [[2]] if Answer 2 is better, or [[tie]] if they
are equally good."""


@dataclass
class EvalConfig:
    """What one evaluation compares, on what, judged by whom. Sides: "base", "adapter" (the run's
    own adapter) or an adapter / checkpoint folder."""

    eval_set: str = "heldout"  # "heldout", "prompts" (typed below) or a saved dataset name / file
    prompts: list[str] = field(default_factory=list)
    side_a: str = "base"
    side_b: str = "adapter"
    judge: str = ""  # "": no judge; a model spec ("default", a folder, a Hub id); or an http(s) URL
    judge_model: str = ""  # the model name an OpenAI-compatible endpoint serves
    judge_prompt: str = DEFAULT_JUDGE_PROMPT
    limit: int = 50  # at most this many prompts
    max_new_tokens: int = 128
    batch_size: int = 4  # prompts per batch (each prompt is two rows: A and B)
    seed: int = 0
    repetition_penalty: float = 1.1

    def check(self) -> EvalConfig:
        problems = []
        if self.eval_set == "prompts" and not [p for p in self.prompts if p.strip()]:
            problems.append("type at least one prompt (one per line)")
        if not 1 <= self.limit <= 100_000:
            problems.append(f"limit {self.limit} must be between 1 and 100000")
        if not 1 <= self.max_new_tokens <= 4096:
            problems.append(f"max_new_tokens {self.max_new_tokens} must be between 1 and 4096")
        if not 1 <= self.batch_size <= 64:
            problems.append(f"batch_size {self.batch_size} must be between 1 and 64")
        if self.judge:
            missing = [k for k in ("{question}", "{answer_1}", "{answer_2}") if k not in self.judge_prompt]
            if missing:
                problems.append(
                    f"the judging prompt lacks {', '.join(missing)}: put them where the question and "
                    "the two answers go"
                )
        if self.side_a == self.side_b:
            problems.append(f"both sides are {self.side_a!r}: pick two different models to compare")
        if problems:
            raise ValueError("evaluation settings: " + "; ".join(problems))
        return self

    @classmethod
    def from_dict(cls, data: dict) -> EvalConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def root(run_dir: Path) -> Path:
    return Path(run_dir) / EVAL_DIR


def folder(run_dir: Path, eval_id: str) -> Path:
    return root(run_dir) / workspace.check_name(eval_id, "eval id")


def create(run_dir: Path, config: EvalConfig) -> str:
    """A new eval folder holding `config`; returns its id (time-stamped, unique)."""
    config.check()
    base = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        eval_id = base if n == 1 else f"{base}-{n}"
        path = root(run_dir) / eval_id
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            continue
        workspace.atomic_write_json(path / "config.json", asdict(config))
        write_status(path, state="queued", created_at=_now())
        return eval_id
    raise ValueError(f"could not create a new eval folder in {root(run_dir)}")


def list_ids(run_dir: Path) -> list[str]:
    """Eval ids of a run, newest first."""
    base = root(run_dir)
    if not base.is_dir():
        return []
    ids = [p.name for p in base.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    return sorted(ids, reverse=True)


def read_config(path: Path) -> EvalConfig:
    file = Path(path) / "config.json"
    try:
        return EvalConfig.from_dict(json.loads(file.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{file}: unreadable ({exc}); start a new evaluation") from exc


# ---------------------------------------------------------------- status and summary


def read_status(path: Path) -> dict:
    try:
        return json.loads((Path(path) / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_status(path: Path, **updates) -> dict:
    status = {**read_status(path), **updates}
    workspace.atomic_write_json(Path(path) / "status.json", status)
    return status


def read_summary(path: Path) -> dict | None:
    try:
        return json.loads((Path(path) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_summary(path: Path, summary: dict) -> None:
    workspace.atomic_write_json(Path(path) / "summary.json", summary)


# ---------------------------------------------------------------- line files


def write_items(path: Path, items: list[dict]) -> None:
    """Freeze the eval set once (atomically), so a resumed job scores the very same prompts."""
    text = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
    workspace.atomic_write_text(Path(path) / "items.jsonl", text)


def read_items(path: Path) -> list[dict] | None:
    """The frozen eval set, or None before the job has built it."""
    file = Path(path) / "items.jsonl"
    return read_lines(file, "i") if file.is_file() else None


def append(path: Path, name: str, row: dict) -> None:
    """Add one line to answers/likelihood/judge.jsonl, durably before returning."""
    file = Path(path) / name
    torn = file.is_file() and file.stat().st_size > 0 and not file.read_bytes().endswith(b"\n")
    with open(file, "a", encoding="utf-8") as fh:
        # after a line a kill cut short, start a fresh line: the new row must not be glued to it
        fh.write(("\n" if torn else "") + json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_lines(file: Path, key: str) -> list[dict]:
    """Rows of a JSONL file, skipping a torn line and later repeats of the same `key`."""
    rows: dict = {}
    if not Path(file).is_file():
        return []
    for line in Path(file).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # the line a kill cut short
        if isinstance(row, dict) and key in row:
            rows.setdefault(row[key], row)
    return list(rows.values())


def answers(path: Path) -> dict[int, dict]:
    return {row["i"]: row for row in read_lines(Path(path) / "answers.jsonl", "i")}


def likelihood(path: Path) -> dict[str, dict]:
    return {row["key"]: row for row in read_lines(Path(path) / "likelihood.jsonl", "key")}


def verdicts(path: Path) -> dict[int, dict]:
    return {row["i"]: row for row in read_lines(Path(path) / "judge.jsonl", "i")}


def latest_summary(run_dir: Path) -> dict | None:
    """The summary of the run's newest evaluation that has one (the model card shows it)."""
    for eval_id in list_ids(run_dir):
        summary = read_summary(folder(run_dir, eval_id))
        if summary:
            return summary
    return None
