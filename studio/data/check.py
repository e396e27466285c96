"""Check a dataset file: read it, detect its format, normalize and validate every row.

The report behind the Data tab and `python -m studio data check FILE [--method M] [--model SPEC]`:
format, kind, rows read, the canonical records that will be trained on, and every problem with
its file, line, field and fix. Knows nothing about trainers or the UI.

Run as: python -m studio data check sample_data/dpo.jsonl --method dpo --model default
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path

from studio.data import formats, store
from studio.data.files import DEFAULT_MAX_BYTES, Problem, read_rows

SHOWN_PROBLEMS = 10
CHUNK_ROWS = 20_000  # rows normalized at a time by `scan` (bounds the CLI's memory)


@dataclass
class Report:
    path: str
    format: str  # format id, see formats.FORMAT_NAMES ("" when nothing was recognised)
    kind: str  # "sft" | "preference" | "kto" ("" when nothing was recognised)
    rows_read: int
    records: list[dict]  # canonical records, ready to train
    problems: list[Problem]
    usable: bool
    lines: list[int] = field(default_factory=list)  # source line of each record
    method: str | None = None
    usable_rows: int | None = None  # set by `scan`, whose records are only the first chunk's

    @property
    def rows(self) -> int:
        """Usable rows (the records that will be trained on)."""
        return len(self.records) if self.usable_rows is None else self.usable_rows

    @property
    def errors(self) -> int:
        return sum(p.severity == "error" for p in self.problems)

    @property
    def warnings(self) -> int:
        return sum(p.severity == "warning" for p in self.problems)

    def summary(self) -> str:
        name = Path(self.path).name
        fmt = formats.FORMAT_NAMES.get(self.format, "unknown")
        kind = {"sft": "SFT", "preference": "preference", "kto": "KTO"}.get(self.kind, "unknown")
        text = (
            f"{name}: {fmt} format, {kind} data; {self.rows_read} rows read, {self.rows} usable, "
            f"{self.errors} {_plural(self.errors, 'error')}, {self.warnings} {_plural(self.warnings, 'warning')}"
        )
        if self.method:
            text += f"; for {self.method.upper()}"
        return text + ("" if self.usable else " — NOT USABLE: fix the problems below")


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def load(
    path: str | Path,
    method: str | None = None,
    max_rows: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Report:
    """Read, detect, normalize and validate a dataset file (for `method`, when given).

    Raises ValueError for a file that cannot be read at all (missing, empty, binary, too big,
    not UTF-8, malformed JSON); everything else is a Problem in the report.
    """
    path = Path(path)
    if method is not None:
        formats.kind_for_method(method)  # an unknown method fails before the file is read
    problems: list[Problem] = []
    data = formats.normalize(read_rows(path, problems, max_bytes=max_bytes, max_rows=max_rows), path.name)
    data.rows_read += sum(p.line is not None for p in problems)  # rows that were not even JSON objects
    data.problems = problems + data.problems
    if method is not None:
        data = formats.for_method(data, method, path.name)
    data.problems += marker_problems(path, data.records, data.lines)
    if not data.records and not any(p.line is None and p.severity == "error" for p in data.problems):
        data.problems.append(_no_rows(path.name, data.rows_read))
    data.problems.sort(key=lambda p: (p.line is not None, p.line or 0))
    return Report(
        str(path),
        data.format,
        data.kind,
        data.rows_read,
        data.records,
        data.problems,
        bool(data.records),
        data.lines,
        method,
    )


# Chat-template control tokens: inside an example's text a tokenizer reads them as real turn
# boundaries, so a "user" message could open a fake system turn.
ROLE_MARKERS = (
    "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|begin_of_text|>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "[INST]", "[/INST]",
)  # fmt: skip


def marker_problems(path: Path, records: list[dict], lines: list[int]) -> list[Problem]:
    """A warning for each record whose text holds a chat-template marker (a role injection)."""
    unit = "item" if path.suffix.lower() == ".json" else "line"
    out = []
    for record, line in zip(records, lines or [None] * len(records), strict=False):
        for where, text in _texts(record, ""):
            found = next((m for m in ROLE_MARKERS if m in text), None)
            if found:
                out.append(
                    Problem(
                        path.name,
                        line,
                        where,
                        f"contains the chat-template marker {found}: the tokenizer would read it as a "
                        "real turn boundary, not as text",
                        "remove the marker from the text (or write it without the '|' characters)",
                        "warning",
                        unit,
                    )  # fmt: skip
                )
                break
    return out


def _texts(value, where: str):
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _texts(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _texts(item, f"{where}[{index}]")


def scan(
    path: str | Path,
    method: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    on_progress=None,
) -> Report:
    """`load` in chunks: every row is checked and counted, but only the first chunk's records are
    kept, so memory stays bounded however long the file (the CLI check; training uses `load`).
    Format detection runs per chunk; `on_progress(rows_read)` is called after each one."""
    path = Path(path)
    if method is not None:
        formats.kind_for_method(method)
    pending: list[Problem] = []
    rows = read_rows(path, pending, max_bytes=max_bytes)
    sample, problems, rows_read, usable, fmt, kind = None, [], 0, 0, "", ""
    while True:
        chunk = list(itertools.islice(rows, chunk_rows))
        data = formats.normalize(chunk, path.name)
        data.rows_read += sum(p.line is not None for p in pending)
        data.problems = [*pending, *data.problems]
        pending.clear()
        if method is not None:
            data = formats.for_method(data, method, path.name)
        data.problems += marker_problems(path, data.records, data.lines)
        sample = sample or (data if data.records else None)
        fmt, kind = fmt or data.format, kind or data.kind
        rows_read, usable = rows_read + data.rows_read, usable + len(data.records)
        problems += data.problems
        if on_progress is not None:
            on_progress(rows_read)
        if len(chunk) < chunk_rows:
            break
    if not usable and not any(p.line is None and p.severity == "error" for p in problems):
        problems.append(_no_rows(path.name, rows_read))
    problems.sort(key=lambda p: (p.line is not None, p.line or 0))
    records, lines = (sample.records, sample.lines) if sample else ([], [])
    return Report(str(path), fmt, kind, rows_read, records, problems, usable > 0, lines, method, usable)


def _no_rows(file: str, rows_read: int) -> Problem:
    if rows_read == 0:
        return Problem(file, None, None, "has no examples", "add at least one example row")
    every = "the only row has" if rows_read == 1 else f"all {rows_read} rows have"
    return Problem(
        file,
        None,
        None,
        f"no valid rows: {every} errors",
        "fix the errors listed for each line (the first ones show what is wrong)",
    )


def save_file(path: str | Path, name: str, method: str | None = None) -> store.DatasetEntry:
    """Check `path` and save its usable rows as the dataset `name` (the Data tab's Save and
    `python -m studio data save` both call this)."""
    report = load(str(path), method=method)
    if not report.usable:
        raise ValueError(f"{Path(path).name} has no usable rows: fix the problems `data check` lists first")
    return store.save(name.strip(), report.records, report.kind, report.format, str(path))


def main(
    file: str,
    method: str | None = None,
    model: str | None = None,
    max_length: int = 1024,
    allow_errors: bool = False,
) -> int:
    """`python -m studio data check`: print the report; exit 0 when every row is usable (warnings
    allowed), 1 when any row has an error, unless `allow_errors` and some rows are usable."""
    try:
        report = scan(file, method=method)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    for problem in report.problems[:SHOWN_PROBLEMS]:
        print(f"  {problem}")
    if len(report.problems) > SHOWN_PROBLEMS:
        print(f"  ... and {len(report.problems) - SHOWN_PROBLEMS} more problems")
    if model and report.usable:
        try:
            print(_token_summary(report, model, max_length))
        except (ValueError, OSError) as exc:
            print(f"error: token statistics: {exc}", file=sys.stderr)
            return 1
    if not report.usable:
        return 1
    if report.errors and not allow_errors:
        print(
            f"{report.errors} {_plural(report.errors, 'row error')}: fix them, or pass --allow-errors to "
            "train on the usable rows only",
            file=sys.stderr,
        )
        return 1
    return 0


def _token_summary(report: Report, model: str, max_length: int) -> str:
    from studio import models
    from studio.data import stats, templates

    tokenizer = models.load_tokenizer(model)
    template, note = None, ""
    try:
        templates.ensure_chat_template(tokenizer, None)
    except ValueError:
        template, note = "chatml", " (the model has no chat template: measured with chatml)"
    token_stats = stats.token_stats(
        report.records, tokenizer, max_length, template=template, kind=report.kind
    )
    return f"tokens with {model}{note}: {token_stats.summary()}"
