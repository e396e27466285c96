"""Data benchmark: read, validate, normalize and template Alpaca rows, studio vs `datasets.map`.

Studio: `studio.data.check.load` (read + detect + normalize + validate) then
`templates.tokenize_sft_batch` (render + loss mask, one fast-tokenizer call per chunk).
Baseline: `datasets.load_dataset("json")` + `.map` of an Alpaca -> messages function calling
`apply_chat_template(tokenize=True)`, with a fresh cache each round (no cache hits).
Knows nothing about chat, training or the UI.

Run as: python -m bench.data [--quick] [--rows N]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Row, Section, bench_home, bench_parser, interleave, log, offline_env, publish

CHUNK = 1000  # records per tokenize_sft_batch call


def write_alpaca(path: Path, rows: int) -> Path:
    """`rows` distinct Alpaca rows made from the sample file (the loader drops exact duplicates)."""
    from bench.common import ROOT

    seeds = [
        json.loads(line) for line in (ROOT / "sample_data" / "alpaca.jsonl").read_text().splitlines() if line
    ]
    with path.open("w") as out:
        for i in range(rows):
            row = dict(seeds[i % len(seeds)])
            row["instruction"] = f"{row['instruction']} (#{i})"
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def studio_pipeline(path: Path, tokenizer, max_length: int) -> int:
    from studio.data import check, templates

    report_ = check.load(path, "sft")
    records = report_.records
    done = 0
    for i in range(0, len(records), CHUNK):
        done += len(templates.tokenize_sft_batch(records[i : i + CHUNK], tokenizer, max_length))
    return done


def _alpaca_messages(row: dict) -> list[dict]:
    prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]


def datasets_pipeline(path: Path, tokenizer, max_length: int) -> int:
    from datasets import load_dataset

    def template(row: dict) -> dict:
        ids = tokenizer.apply_chat_template(
            _alpaca_messages(row), tokenize=True, truncation=True, max_length=max_length, return_dict=True
        )
        return {"input_ids": ids["input_ids"]}

    with tempfile.TemporaryDirectory() as cache:
        ds = load_dataset("json", data_files=str(path), split="train", cache_dir=cache)
        ds = ds.map(template, remove_columns=ds.column_names, load_from_cache_file=False)
        return len(ds)


def run(quick: bool, rows: int | None = None) -> Section:
    offline_env()
    bench_home()
    import datasets

    from studio import models

    datasets.disable_progress_bars()
    rows = rows or (5_000 if quick else 100_000)
    rounds = 2 if quick else 3
    tokenizer = models.load_tokenizer("default")
    section = Section("data")
    with tempfile.TemporaryDirectory() as tmp:
        path = write_alpaca(Path(tmp) / "alpaca.jsonl", rows)
        log(f"data: {rows} rows, {rounds} rounds")

        def measure(fn):
            def once() -> dict:
                start = time.perf_counter()
                n = fn(path, tokenizer, 512)
                if n != rows:
                    raise RuntimeError(f"{fn.__name__} produced {n} rows of {rows}")
                return {"rows_s": n / (time.perf_counter() - start)}

            return once

        m = interleave({"studio": measure(studio_pipeline), "datasets": measure(datasets_pipeline)}, rounds)
    section.rows.append(
        Row(
            "data",
            f"{rows} Alpaca rows read+check+template+tokenize",
            m["studio"]["rows_s"],
            m["datasets"]["rows_s"],
            "rows/s",
            2.0,
        )
    )
    section.notes.append(
        "the studio's path also validates every row, drops duplicates and builds the loss mask; "
        "the baseline only templates and tokenizes"
    )
    return section


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--rows", type=int)
    args = parser.parse_args(argv)
    return publish([run(args.quick, args.rows)], args.quick, "Data", not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
