"""The data check: the report behind the Data tab and `python -m studio data check`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.data import check

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_data"
BAD = Path(__file__).resolve().parent / "data_bad"


@pytest.mark.parametrize(
    ("name", "fmt", "kind", "rows"),
    [
        ("alpaca.jsonl", "alpaca", "sft", 42),
        ("chatml.jsonl", "chatml", "sft", 40),
        ("dpo.jsonl", "dpo", "preference", 40),
        ("kto.jsonl", "kto", "kto", 40),
        ("sharegpt.json", "sharegpt", "sft", 10),
        ("messages.jsonl", "messages", "sft", 10),
        ("messages.parquet", "messages", "sft", 10),
        ("prompt_completion.csv", "prompt_completion", "sft", 10),
        ("llama3.jsonl", "llama3", "sft", 10),
        ("dpo_hh.jsonl", "dpo", "preference", 10),
    ],
)
def test_every_sample_is_clean_and_in_the_house_style(name, fmt, kind, rows):
    report = check.load(SAMPLES / name)
    assert (report.format, report.kind, report.rows_read, report.rows) == (fmt, kind, rows, rows)
    assert report.usable and not report.problems
    answers = [_answer(r) for r in report.records]
    if kind == "kto":  # desirable answers are in the house style, undesirable ones plain
        assert all(
            a.startswith("Short answer: ") == r["label"] for a, r in zip(answers, report.records, strict=True)
        )
    else:
        assert all(a.startswith("Short answer: ") and "\nWhy: " in a for a in answers)
    if kind == "preference":
        assert not any(r["rejected"][0]["content"].startswith("Short answer:") for r in report.records)


def _answer(record: dict) -> str:
    for key in ("messages", "chosen", "completion"):
        if key in record:
            return record[key][-1]["content"]
    raise AssertionError(record)


def test_heldout_prompts_are_not_in_the_training_files():
    heldout = (SAMPLES / "heldout_prompts.txt").read_text(encoding="utf-8").splitlines()
    assert len(heldout) == 6
    corpus = "".join(p.read_text(encoding="utf-8") for p in SAMPLES.glob("*.json*")) + (
        SAMPLES / "prompt_completion.csv"
    ).read_text(encoding="utf-8")
    assert not [h for h in heldout if h in corpus]


def test_bad_rows_are_reported_and_good_rows_kept():
    report = check.load(BAD / "alpaca_bad.jsonl")
    assert report.usable and report.lines == [1] and report.rows_read == 6
    got = [(p.line, p.field, p.severity) for p in report.problems]
    assert got == [
        (2, "output", "error"),
        (3, "instruction", "error"),
        (4, "instruction", "error"),
        (5, None, "warning"),
        (6, "output", "error"),
    ]
    assert report.errors == 4 and report.warnings == 1
    assert str(report.problems[0]) == (
        'alpaca_bad.jsonl line 2, field "output": is missing — every example needs "output" (the answer)'
    )
    assert "42" not in report.summary() and "6 rows read, 1 usable, 4 errors, 1 warning" in report.summary()


@pytest.mark.parametrize(
    ("row", "fields"),
    [
        ({"instruction": "", "output": 3}, ["instruction", "output"]),
        ({"instruction": "Hi", "input": 5, "output": "", "system": ["x"]}, ["input", "output", "system"]),
        (
            {"messages": [{"role": "robot", "content": ""}, {"role": "assistant", "content": 7}]},
            ["messages[0].role", "messages[0].content", "messages[1].content"],
        ),
        (
            {"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": ""}]},
            ["conversations[0].value", "conversations[1].value"],
        ),
        ({"prompt": "", "completion": None}, ["prompt", "completion"]),
        ({"prompt": "Q", "chosen": "", "rejected": 4}, ["chosen", "rejected"]),
        ({"chosen": None, "rejected": None}, ["chosen", "rejected"]),
        ({"prompt": "", "completion": "", "label": "maybe"}, ["prompt", "completion", "label"]),
    ],
)
def test_a_row_with_several_problems_lists_every_one(tmp_path, row, fields):
    path = tmp_path / "several.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    report = check.load(path)
    on_row = [p for p in report.problems if p.line == 1]
    assert [p.field for p in on_row] == fields
    assert all(p.severity == "error" and p.fix for p in on_row)
    assert report.rows_read == 1 and report.errors == len(fields) + 1  # + "no valid rows"
    scanned = check.scan(path)  # the CLI's chunked check lists the same problems
    assert [(p.line, p.field) for p in scanned.problems] == [(p.line, p.field) for p in report.problems]


def test_a_file_with_no_valid_rows_is_not_usable():
    report = check.load(BAD / "no_valid_rows.jsonl")
    assert not report.usable and report.records == []
    assert (
        report.problems[0].line is None
        and "no valid rows: all 2 rows have errors" in report.problems[0].message
    )
    assert "NOT USABLE" in report.summary()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "has no examples"),
        ('{"train": []}', "has no examples"),
        ('{"a": 1,}\n{"b": \n', "no valid rows: all 2 rows have errors"),
        ("42", "no valid rows: the only row has errors"),
    ],
)
def test_files_without_a_usable_row_say_so(tmp_path, text, message):
    path = tmp_path / ("d.json" if text.startswith(("[", '{"train')) else "d.jsonl")
    path.write_text(text, encoding="utf-8")
    report = check.load(path)
    assert not report.usable and message in report.problems[0].message


def test_method_adapts_the_data_or_explains(tmp_path):
    assert check.load(SAMPLES / "dpo.jsonl", method="kto").rows == 80
    report = check.load(SAMPLES / "alpaca.jsonl", method="dpo")
    assert not report.usable and "DPO needs chosen/rejected pairs" in report.problems[0].message
    with pytest.raises(ValueError, match="unknown method"):
        check.load(SAMPLES / "dpo.jsonl", method="rlhf")


def test_max_rows_reads_only_the_start():
    assert check.load(SAMPLES / "alpaca.jsonl", max_rows=5).rows_read == 5


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "studio", "data", "check", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_exit_codes():
    ok = run_cli("sample_data/dpo.jsonl", "--method", "dpo")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("dpo.jsonl: DPO pairs format, preference data; 40 rows read, 40 usable")

    bad = run_cli(str(BAD / "no_valid_rows.jsonl"))
    assert bad.returncode == 1 and "line 1" in bad.stdout and "Traceback" not in bad.stderr

    unreadable = run_cli(str(BAD / "binary.jsonl"))
    assert unreadable.returncode == 1 and "Traceback" not in unreadable.stderr
    assert unreadable.stderr.strip().count("\n") == 0 and "binary file" in unreadable.stderr

    wrong_kind = run_cli("sample_data/alpaca.jsonl", "--method", "dpo")
    assert wrong_kind.returncode == 1 and "this file is SFT data (Alpaca)" in wrong_kind.stdout


def test_cli_prints_token_statistics_with_a_model(tiny_model):
    result = run_cli("sample_data/chatml.jsonl", "--model", str(tiny_model), "--max-length", "64")
    assert result.returncode == 0, result.stderr
    assert "tokens with" in result.stdout and "40 examples" in result.stdout and "truncated" in result.stdout
