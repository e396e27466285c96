"""Saved datasets: STUDIO_HOME/datasets/<name>.jsonl (canonical records) + <name>.meta.json.

A dataset is listed only once its meta file exists, and the meta file is written after the
records, both atomically: a crash mid-save leaves nothing half-saved in the list.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from studio import workspace

SAMPLE_PREFIX = "sample:"
SAMPLE_DIR = Path(__file__).resolve().parent.parent.parent / "sample_data"
KINDS = ("sft", "preference", "kto")


@dataclass(frozen=True)
class DatasetEntry:
    name: str  # saved name, or "sample:<file name>"
    kind: str  # "sft" | "preference" | "kto" ("" for a sample not yet checked)
    rows: int
    format: str
    source: str
    created_at: str
    path: str


def save(name: str, records: list[dict], kind: str, fmt: str, source: str) -> DatasetEntry:
    """Write canonical records under `name` (replacing a dataset of that name) and list it."""
    if kind not in KINDS:
        raise ValueError(f"dataset kind {kind!r} must be one of {', '.join(KINDS)}")
    if not records:
        raise ValueError(f"dataset {name!r} has no valid rows to save")
    path = workspace.dataset_path(name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    entry = DatasetEntry(
        name=name,
        kind=kind,
        rows=len(records),
        format=fmt,
        source=Path(source).name if source else "",
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        path=str(path),
    )
    workspace.atomic_write_json(_meta_path(path), asdict(entry))
    return entry


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".jsonl") + ".meta.json")


def list_saved() -> list[DatasetEntry]:
    """Saved datasets, newest first; files without a meta file (a crashed save) are ignored."""
    entries = []
    for meta in workspace.datasets_dir().glob("*.meta.json"):
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
            entry = DatasetEntry(**data)
        except (ValueError, TypeError):
            continue
        if Path(entry.path).is_file():
            entries.append(entry)
    return sorted(entries, key=lambda e: e.created_at, reverse=True)


def list_samples() -> list[str]:
    """Spec strings of the bundled sample files, e.g. 'sample:alpaca.jsonl'."""
    if not SAMPLE_DIR.is_dir():
        return []
    return sorted(
        SAMPLE_PREFIX + p.name
        for p in SAMPLE_DIR.iterdir()
        if p.suffix in {".jsonl", ".json", ".csv", ".parquet"}
    )


def resolve(spec: str) -> Path:
    """A dataset spec (saved name, 'sample:<file>', or a file path) to a file path."""
    spec = (spec or "").strip()
    if not spec:
        raise ValueError("no dataset chosen: pick a saved dataset or a sample, or give a file path")
    if spec.startswith(SAMPLE_PREFIX):
        name = workspace.check_name(spec[len(SAMPLE_PREFIX) :], "sample file")
        path = SAMPLE_DIR / name
        if not path.is_file():
            raise ValueError(f"no sample file {name!r}: choose one of {', '.join(list_samples())}")
        return path
    candidate = Path(spec).expanduser()
    if candidate.is_file():
        return candidate.resolve()
    try:
        saved = workspace.dataset_path(spec)
    except ValueError:
        saved = None
    if saved is not None and saved.is_file():
        return saved
    raise ValueError(
        f"dataset {spec!r} not found: it is not a saved dataset name, a 'sample:' file or a file path"
    )


def delete(name: str) -> None:
    path = workspace.dataset_path(name)
    _meta_path(path).unlink(missing_ok=True)  # unlist first, then remove the records
    path.unlink(missing_ok=True)
