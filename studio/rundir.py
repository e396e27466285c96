"""THE run-folder contract: every file of `STUDIO_HOME/runs/<run_id>/` is read and written here.

status.json, metrics.jsonl, probes.json, launch.json, recipe.yaml, train.log, checkpoints/ and
adapter/ (docs/ARCHITECTURE.md lists their keys). Readers are tolerant of a torn last line the
same way everywhere. Imports no torch or transformers: the app and the run queue use it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from studio import workspace


def update_status(run_dir: Path, **fields) -> dict:
    """Merge `fields` into status.json (atomically), keeping what other writers put there."""
    path = Path(run_dir) / "status.json"
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        status = {}
    status.update(fields)
    workspace.atomic_write_json(path, status)
    return status


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- checkpoints and metrics


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int


def _is_complete(path: Path) -> bool:
    # trainer_state.json is written last, after weights, optimizer, scheduler and RNG state
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (path / "optimizer.pt").is_file() and (path / "scheduler.pt").is_file()


def checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Every checkpoint-N folder, oldest first, complete or not."""
    found = []
    for path in (Path(run_dir) / "checkpoints").glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit():
            found.append(Checkpoint(path, int(suffix)))
    return sorted(found, key=lambda c: c.step)


def last_complete_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest checkpoint that was fully written (a kill mid-save leaves a partial one)."""
    complete = [c for c in checkpoints(run_dir) if _is_complete(c.path)]
    return complete[-1] if complete else None


def discard_partial_checkpoints(run_dir: Path) -> list[Path]:
    """Delete checkpoints a kill left half-written, so nothing resumes from or rotates them."""
    removed = []
    for ckpt in checkpoints(run_dir):
        if not _is_complete(ckpt.path):
            shutil.rmtree(ckpt.path, ignore_errors=True)
            removed.append(ckpt.path)
    return removed


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a kill
    return rows


def append_metrics(run_dir: Path, row: dict) -> None:
    """Add one line to metrics.jsonl (the trainer's callback is its only writer)."""
    with open(Path(run_dir) / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric lines past `step`, so a resumed run logs no step twice."""
    kept = [row for row in read_metrics(run_dir) if int(row.get("step", 0)) <= step]
    text = "".join(json.dumps(row) + "\n" for row in kept)
    workspace.atomic_write_text(Path(run_dir) / "metrics.jsonl", text)


def write_probes(run_dir: Path, prompts: list[str], before: list[str], after: list[str]) -> None:
    workspace.atomic_write_json(
        Path(run_dir) / "probes.json", {"prompts": prompts, "before": before, "after": after}
    )


def oom_message(run_dir: Path) -> str:
    estimate = read_status(run_dir).get("memory_estimate_gb")
    guess = f" (the estimate for this recipe was {estimate} GB)" if estimate else ""
    return (
        f"out of memory{guess}: use QLoRA (quantization.load_in_4bit=true), a smaller training.batch_size "
        "or data.max_length, or training.gradient_checkpointing=true"
    )
