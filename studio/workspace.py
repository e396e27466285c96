"""Every path under STUDIO_HOME, in one place.

Knows nothing about models, data formats or the UI: it only names folders and validates the
user-chosen names that become part of a path (dataset names, run ids), so that no other module
ever joins an untrusted string onto a path itself.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


def home() -> Path:
    """The workspace root: `$STUDIO_HOME`, or `./workspace` when unset."""
    root = Path(os.environ.get("STUDIO_HOME", "workspace")).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _sub(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def datasets_dir() -> Path:
    return _sub("datasets")


def runs_dir() -> Path:
    return _sub("runs")


def models_dir() -> Path:
    return _sub("models")


def exports_dir() -> Path:
    return _sub("exports")


def uploads_dir() -> Path:
    return _sub("uploads")


def cache_dir() -> Path:
    """Derived files (e.g. tokenized datasets) that may be deleted at any time; rebuilt on demand."""
    return _sub("cache")


def db_path() -> Path:
    return home() / "studio.db"


def check_name(name: str, what: str = "name") -> str:
    """Return `name` if it is safe as one path component, else raise ValueError.

    >>> check_name("my-data_v2.1")
    'my-data_v2.1'
    """
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise ValueError(
            f"{what} {name!r} is not allowed: use 1-80 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no spaces, slashes or '..')"
        )
    return name


def dataset_path(name: str) -> Path:
    return datasets_dir() / f"{check_name(name, 'dataset name')}.jsonl"


def run_path(run_id: str) -> Path:
    return runs_dir() / check_name(run_id, "run id")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
