"""Reading dataset files: every container, and every way a file can be unreadable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio.data.files import DataFileError, read_rows

BAD = Path(__file__).resolve().parent / "data_bad"
ROW = {"instruction": "Add 2 and 2", "output": "Short answer: 4."}


def rows_of(path, **kwargs):
    problems = []
    rows = list(read_rows(path, problems, **kwargs))
    return rows, problems


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_rows_carry_their_line_numbers_past_blank_lines(tmp_path):
    path = write(tmp_path / "a.jsonl", json.dumps(ROW) + "\n\n" + json.dumps({**ROW, "output": "x"}) + "\n")
    rows, problems = rows_of(path)
    assert [(r.line, r.unit) for r in rows] == [(1, "line"), (3, "line")]
    assert rows[1].data["output"] == "x" and not problems


def test_utf8_bom_is_accepted(tmp_path):
    path = write(tmp_path / "bom.jsonl", b"\xef\xbb\xbf" + json.dumps(ROW).encode() + b"\n")
    rows, _ = rows_of(path)
    assert rows[0].data == ROW


def test_malformed_jsonl_line_is_a_row_problem_with_line_and_column():
    rows, problems = rows_of(BAD / "malformed.jsonl")
    assert [r.line for r in rows] == [1, 3]
    assert len(problems) == 1
    assert problems[0].line == 2 and problems[0].file == "malformed.jsonl"
    assert "malformed JSON at column" in problems[0].message
    assert "one complete JSON object" in problems[0].fix


def test_malformed_json_file_names_line_and_column():
    with pytest.raises(DataFileError, match=r"malformed\.json: malformed JSON at line 3, column \d+"):
        rows_of(BAD / "malformed.json")


def test_json_array_saved_as_jsonl_is_understood(tmp_path):
    path = write(tmp_path / "array.jsonl", json.dumps([ROW, {**ROW, "output": "y"}], indent=2))
    rows, problems = rows_of(path)
    assert [(r.line, r.unit) for r in rows] == [(1, "item"), (2, "item")] and not problems


def test_jsonl_saved_as_json_is_understood(tmp_path):
    path = write(tmp_path / "lines.json", json.dumps(ROW) + "\n" + json.dumps({**ROW, "output": "y"}) + "\n")
    rows, problems = rows_of(path)
    assert [r.line for r in rows] == [1, 2] and rows[1].data["output"] == "y" and not problems


def test_pretty_printed_objects_in_a_jsonl_file_are_understood(tmp_path):
    path = write(tmp_path / "pretty.jsonl", json.dumps(ROW, indent=2) + "\n" + json.dumps(ROW, indent=2))
    rows, _ = rows_of(path)
    assert [r.line for r in rows] == [1, 5]


def test_json_object_of_arrays_reads_the_train_split(tmp_path):
    path = write(tmp_path / "splits.json", json.dumps({"train": [ROW, ROW], "test": [ROW]}))
    rows, problems = rows_of(path)
    assert len(rows) == 2
    assert problems[0].severity == "warning" and "'test'" in problems[0].message


def test_json_object_of_arrays_without_train_reads_every_split(tmp_path):
    path = write(tmp_path / "splits.json", json.dumps({"a": [ROW], "b": [ROW, ROW]}))
    rows, _ = rows_of(path)
    assert [r.unit for r in rows] == ["'a' item", "'b' item", "'b' item"]


def test_a_row_that_is_not_an_object_is_named():
    rows, problems = rows_of(BAD / "not_objects.jsonl")
    assert [r.line for r in rows] == [2]
    assert [(p.line, p.message) for p in problems] == [
        (1, "is a JSON list, not an object"),
        (3, "is a JSON string, not an object"),
    ]


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("empty.jsonl", r"empty\.jsonl is empty"),
        ("blank.csv", r"blank\.csv is empty"),
        ("binary.jsonl", r"binary\.jsonl is a binary file"),
        ("latin1.jsonl", r"latin1\.jsonl: not UTF-8 at line 2 .* save the file as UTF-8"),
        ("latin1.csv", r"latin1\.csv: not UTF-8 at line 3 .* save the file as UTF-8"),
        ("utf16.jsonl", r"utf16\.jsonl is UTF-16 text.*save the file as UTF-8"),
        ("fake.parquet", r"fake\.parquet is not a Parquet file"),
        ("data.txt", r"data\.txt: unsupported file type \.txt"),
        ("missing.jsonl", r"missing\.jsonl: no such file"),
    ],
)
def test_unreadable_files_get_one_clear_message(name, pattern):
    with pytest.raises(DataFileError, match=pattern):
        rows_of(BAD / name)


def test_the_size_limit_is_a_parameter(tmp_path):
    path = write(tmp_path / "big.jsonl", (json.dumps(ROW) + "\n") * 100)
    with pytest.raises(DataFileError, match=r"big\.jsonl is 0 MB, over the 0 MB limit — split it"):
        rows_of(path, max_bytes=1000)
    assert len(rows_of(path)[0]) == 100


def test_max_rows_stops_reading_early(tmp_path):
    path = write(tmp_path / "many.jsonl", (json.dumps(ROW) + "\n") * 50)
    assert len(rows_of(path, max_rows=7)[0]) == 7


def test_csv_rows_are_numbered_by_the_line_they_start_on(tmp_path):
    text = 'prompt,completion\n"multi\nline",answer one\n,\nsecond,"two\nlines"\n'
    rows, _ = rows_of(write(tmp_path / "pc.csv", text))
    assert [(r.line, r.data["prompt"]) for r in rows] == [(2, "multi\nline"), (5, "second")]


def test_csv_message_columns_holding_json_are_decoded(tmp_path):
    cell = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    text = "messages\n" + '"' + cell.replace('"', '""') + '"\n'
    rows, _ = rows_of(write(tmp_path / "m.csv", text))
    assert rows[0].data["messages"][1] == {"role": "assistant", "content": "yo"}


def test_parquet_rows_are_numbered(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([ROW, {**ROW, "output": "z"}]), path)
    rows, _ = rows_of(path)
    assert [(r.line, r.unit, r.data["output"]) for r in rows] == [(1, "row", ROW["output"]), (2, "row", "z")]
