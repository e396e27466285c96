"""Rebuild sample_data/messages.parquet from sample_data/messages.jsonl (the Parquet sample).

Run as: python sample_data/make_parquet.py
"""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent

rows = [
    json.loads(line) for line in (HERE / "messages.jsonl").read_text(encoding="utf-8").splitlines() if line
]
pq.write_table(pa.Table.from_pylist(rows), HERE / "messages.parquet")
print(f"wrote {len(rows)} rows to {HERE / 'messages.parquet'}")
