"""Read dataset files into rows that remember where they came from.

Reads .jsonl, .json (an array, an object of arrays such as {"train": [...]}, or JSON Lines saved
as .json), .csv and .parquet, UTF-8 with or without a BOM. Every row carries its 1-based place in
the file (JSONL/CSV: the line it starts on; JSON array: its item number; Parquet: its row number)
so that every problem downstream can name it. A file that cannot be read at all raises
`DataFileError` (a ValueError) naming the file, the place and the fix; a single bad JSONL line is
recorded as a `Problem` and reading goes on. Knows nothing about formats, tokenizers or the UI.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_BYTES = 200 * 1024 * 1024
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# CSV cells holding these columns may carry a JSON list of messages.
_JSON_TYPES = {
    list: "list",
    str: "string",
    int: "number",
    float: "number",
    bool: "true/false",
    type(None): "null",
}
_JSON_COLUMNS = {"messages", "conversations", "chosen", "rejected", "prompt", "completion"}


class DataFileError(ValueError):
    """A file that cannot be read as a dataset; the message names the file, the place and the fix."""


@dataclass
class Problem:
    """One thing wrong with a row (or the file, when `line` is None), and how to fix it."""

    file: str
    line: int | None
    field: str | None
    message: str
    fix: str
    severity: str = "error"  # "error": the row is dropped; "warning": the row is kept
    unit: str = "line"  # what `line` counts: "line", "item" (JSON array) or "row" (Parquet)

    def __str__(self) -> str:
        where = self.file + (f" {self.unit} {self.line}" if self.line else "")
        if self.field:
            where += f', field "{self.field}"'
        tag = "(warning) " if self.severity == "warning" else ""
        return f"{tag}{where}: {self.message}" + (f" — {self.fix}" if self.fix else "")


@dataclass
class Row:
    line: int
    data: dict
    unit: str = "line"


def read_rows(
    path: str | Path,
    problems: list[Problem] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_rows: int | None = None,
) -> Iterator[Row]:
    """Yield the rows of a dataset file; rows that are not JSON objects go to `problems`.

    Raises DataFileError for a file that cannot be read (missing, empty, binary, too big,
    not UTF-8, malformed JSON, unknown suffix).
    """
    path = Path(path)
    problems = [] if problems is None else problems
    suffix = _check_file(path, max_bytes)
    if suffix == ".parquet":
        rows = _parquet_rows(path)
    elif suffix == ".csv":
        rows = _csv_rows(path)
    elif suffix == ".json" or _starts_with(path, b"["):
        rows = _json_rows(path, problems)
    else:
        rows = _jsonl_rows(path, problems)
    for count, row in enumerate(rows, start=1):
        yield row
        if max_rows is not None and count >= max_rows:
            return


def _check_file(path: Path, max_bytes: int) -> str:
    if not path.is_file():
        raise DataFileError(f"{path}: no such file — check the path")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataFileError(
            f"{path.name}: unsupported file type {suffix or '(none)'} — use {', '.join(SUFFIXES)}"
        )
    size = path.stat().st_size
    if size > max_bytes:
        raise DataFileError(
            f"{path.name} is {size / 1e6:.0f} MB, over the {max_bytes / 1e6:.0f} MB limit — "
            "split it into smaller files or raise the size limit"
        )
    with path.open("rb") as fh:
        head = fh.read(8192)
    if not head.removeprefix(b"\xef\xbb\xbf").strip() and _blank(path):
        raise DataFileError(f"{path.name} is empty — it needs at least one example")
    if suffix == ".parquet":
        if not head.startswith(b"PAR1"):
            raise DataFileError(
                f"{path.name} is not a Parquet file — save it with pandas/pyarrow `to_parquet`"
            )
        return suffix
    if head.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
        width = "32" if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")) else "16"
        raise DataFileError(f"{path.name} is UTF-{width} text, not UTF-8 at line 1 — save the file as UTF-8")
    if b"\x00" in head:
        raise DataFileError(
            f"{path.name} is a binary file, not {suffix[1:].upper()} text — export the data as "
            "JSON Lines, JSON, CSV or Parquet"
        )
    return suffix


def _blank(path: Path) -> bool:
    """Only whitespace (and a BOM) in the whole file, read in chunks (blank lines may lead the data)."""
    with path.open("rb") as fh:
        fh.read(3)
        while chunk := fh.read(1 << 20):
            if chunk.strip():
                return False
    return True


def _starts_with(path: Path, char: bytes) -> bool:
    with path.open("rb") as fh:
        return fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(char)


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line, decoding one line at a time (the file is never held)."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataFileError(
                    f"{path.name}: not UTF-8 at line {number} (byte {exc.start + 1} of that line) — "
                    "save the file as UTF-8"
                ) from None
            yield number, text.removeprefix("\ufeff") if number == 1 else text


def _jsonl_rows(path: Path, problems: list[Problem]) -> Iterator[Row]:
    seen_object = False
    for number, text in _decoded_lines(path):
        text = text.strip()
        if not text:
            continue
        try:
            value = json.loads(text)
        except RecursionError:
            problems.append(_too_deep(path, number))
            continue
        except json.JSONDecodeError as exc:
            if not seen_object and text in ("{", "["):  # pretty-printed JSON saved as .jsonl
                yield from _json_rows(path, problems)
                return
            problems.append(_json_problem(path, number, exc))
            continue
        seen_object = True
        yield from _object_row(path, value, number, "line", problems)


def _json_problem(path: Path, number: int, exc: json.JSONDecodeError) -> Problem:
    return Problem(
        path.name,
        number,
        None,
        f"malformed JSON at column {exc.colno}: {exc.msg}",
        "each line must be one complete JSON object (check quotes, commas and brackets)",
    )


def _too_deep(path: Path, number: int) -> Problem:
    return Problem(
        path.name,
        number,
        None,
        "is nested too deeply to read (thousands of brackets inside each other)",
        "an example is an object of texts: flatten the nested lists",
    )


def _object_row(path: Path, value: object, number: int, unit: str, problems: list[Problem]) -> Iterator[Row]:
    if isinstance(value, dict):
        yield Row(number, value, unit)
        return
    problems.append(
        Problem(
            path.name,
            number,
            None,
            f"is a JSON {_JSON_TYPES.get(type(value), type(value).__name__)}, not an object",
            'each example must be an object like {"instruction": ..., "output": ...}',
            unit=unit,
        )
    )


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFileError(f"{path.name}: not UTF-8 at line {line} — save the file as UTF-8") from None


def _json_values(path: Path, text: str) -> Iterator[tuple[object, int]]:
    """Each top-level JSON value in `text` with the line it starts on (one for a .json file,
    several for JSON Lines saved as .json)."""
    decoder = json.JSONDecoder()
    pos, line = 0, 1
    while True:
        start = len(text) - len(text[pos:].lstrip())
        line += text.count("\n", pos, start)
        if start >= len(text):
            return
        try:
            value, end = decoder.raw_decode(text, start)
        except RecursionError:
            raise DataFileError(
                f"{path.name} line {line}: JSON nested too deeply to read — flatten the nested lists"
            ) from None
        except json.JSONDecodeError as exc:
            raise DataFileError(
                f"{path.name}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg} — "
                "fix the JSON syntax there (a missing comma, quote or bracket)"
            ) from None
        yield value, line
        line += text.count("\n", start, end)
        pos = end


def _json_rows(path: Path, problems: list[Problem]) -> Iterator[Row]:
    values = list(_json_values(path, _read_text(path)))
    if len(values) > 1:  # JSON Lines in a .json file (or pretty objects one after another)
        for value, line in values:
            yield from _object_row(path, value, line, "line", problems)
        return
    value = values[0][0]
    if isinstance(value, list):
        for index, item in enumerate(value, start=1):
            yield from _object_row(path, item, index, "item", problems)
    elif isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        yield from _split_rows(path, value, problems)
    else:
        yield from _object_row(path, value, 1, "item", problems)


def _split_rows(path: Path, splits: dict, problems: list[Problem]) -> Iterator[Row]:
    """An object of arrays, e.g. {"train": [...], "test": [...]}: the "train" split when there
    is one (the others are for evaluation), else every split in order."""
    names = ["train"] if "train" in splits else list(splits)
    if len(names) < len(splits):
        others = ", ".join(repr(k) for k in splits if k != "train")
        problems.append(
            Problem(
                path.name,
                None,
                None,
                f"read the 'train' split only; skipped {others}",
                "put every training example under 'train'",
                severity="warning",
            )
        )
    for name in names:
        unit = "item" if len(names) == 1 else f"'{name}' item"
        for index, item in enumerate(splits[name], start=1):
            yield from _object_row(path, item, index, unit, problems)


def _csv_rows(path: Path) -> Iterator[Row]:
    lines = (text for _, text in _decoded_lines(path))
    reader = csv.DictReader(lines)
    if not reader.fieldnames:
        raise DataFileError(f"{path.name} has no header row — the first line must name the columns")
    start = reader.line_num + 1
    for record in reader:
        data = {key.strip(): _csv_value(key.strip(), value) for key, value in record.items() if key}
        if any(v not in ("", None) for v in data.values()):
            yield Row(start, data)
        start = reader.line_num + 1


def _csv_value(key: str, value: str | None) -> object:
    if value is None:
        return None
    if key in _JSON_COLUMNS and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types for damaged files
        raise DataFileError(f"{path.name}: unreadable Parquet file ({exc}) — save it again") from None
    number = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for data in batch.to_pylist():
            number += 1
            yield Row(number, data, "row")
