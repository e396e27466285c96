"""Repositories the stand-in Hub serves: real files from disk, described the way the Hub describes them.

A `StubRepo` maps paths in the repo to files on disk and answers what the Hub's JSON answers need:
the commit sha, git blob ids, LFS sha256 for large files, safetensors parameter counts read from the
files' own headers, the model card's license and gated state. `model_repo(folder)` serves a saved
model folder; `sample_dataset_repo(folder)` builds a parquet dataset from sample_data/.
Knows nothing about HTTP (tests/support/hubstub.py serves these).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LFS_THRESHOLD = 100_000  # files at least this big are "LFS" files served through the CDN redirect


@dataclass
class StubRepo:
    repo_id: str
    files: dict[str, Path]
    repo_type: str = "model"  # "model" | "dataset"
    gated: bool = False
    private: bool = False
    granted: set[str] = field(default_factory=set)  # tokens whose user accepted a gated repo's terms
    license: str = "apache-2.0"
    downloads: int = 0
    likes: int = 0
    last_modified: str = "2026-10-01T12:00:00.000Z"
    pipeline_tag: str | None = "text-generation"

    @cached_property
    def sha(self) -> str:
        digest = hashlib.sha1(self.repo_id.encode())
        for path in sorted(self.files):
            digest.update(path.encode() + self.blob_id(path).encode())
        return digest.hexdigest()

    def size(self, path: str) -> int:
        return self.files[path].stat().st_size

    def is_lfs(self, path: str) -> bool:
        return self.size(path) >= LFS_THRESHOLD

    def blob_id(self, path: str) -> str:
        return self._digests[path][0]

    @cached_property
    def _digests(self) -> dict[str, tuple[str, str]]:
        """path -> (git blob sha1, sha256), read once in chunks (model weights can be large)."""
        digests = {}
        for path, local in self.files.items():
            blob = hashlib.sha1(b"blob %d\0" % local.stat().st_size)
            whole = hashlib.sha256()
            with open(local, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    blob.update(chunk)
                    whole.update(chunk)
            digests[path] = (blob.hexdigest(), whole.hexdigest())
        return digests

    def sha256(self, path: str) -> str:
        return self._digests[path][1]

    def etag(self, path: str) -> str:
        """The Hub's ETag: the LFS sha256 for large files, the git blob id otherwise."""
        return self.sha256(path) if self.is_lfs(path) else self.blob_id(path)

    def safetensors_parameters(self) -> dict[str, int]:
        """{dtype: parameter count} summed over the repo's .safetensors files (read from their headers)."""
        counts: dict[str, int] = {}
        for path, local in self.files.items():
            if not path.endswith(".safetensors"):
                continue
            with open(local, "rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(length))
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                n = 1
                for dim in entry["shape"]:
                    n *= dim
                counts[entry["dtype"]] = counts.get(entry["dtype"], 0) + n
        return counts

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "path": path, "size": self.size(path), "oid": self.blob_id(path)}
        if self.is_lfs(path):
            entry["lfs"] = {"oid": self.sha256(path), "size": self.size(path), "pointerSize": 134}
        return entry

    def sibling(self, path: str, with_sizes: bool) -> dict:
        sibling = {"rfilename": path}
        if with_sizes:
            sibling |= {"size": self.size(path), "blobId": self.blob_id(path)}
            if self.is_lfs(path):
                sibling["lfs"] = {"size": self.size(path), "sha256": self.sha256(path), "pointerSize": 134}
        return sibling

    def summary(self) -> dict:
        """What a listing (/api/models, /api/datasets) returns for this repo."""
        data = {
            "_id": self.sha[:24],
            "id": self.repo_id,
            "private": self.private,
            "gated": "manual" if self.gated else False,
            "downloads": self.downloads,
            "likes": self.likes,
            "lastModified": self.last_modified,
            "createdAt": self.last_modified,
            "tags": [f"license:{self.license}"],
        }
        if self.repo_type == "model":
            data |= {"pipeline_tag": self.pipeline_tag, "library_name": "transformers"}
            data["tags"] = ["transformers", "safetensors", *data["tags"]]
        return data

    def info(self, with_sizes: bool) -> dict:
        """What /api/{models,datasets}/ID returns: summary, sha, siblings, card data, safetensors."""
        data = self.summary() | {
            "author": self.repo_id.split("/")[0],
            "sha": self.sha,
            "disabled": False,
            "cardData": {"license": self.license},
            "siblings": [self.sibling(p, with_sizes) for p in sorted(self.files)],
        }
        params = self.safetensors_parameters() if self.repo_type == "model" else {}
        if params:
            data["safetensors"] = {"parameters": params, "total": sum(params.values())}
        return data


def model_repo(repo_id: str, folder: Path, **kwargs) -> StubRepo:
    """Serve every file of a saved model folder (config, safetensors, tokenizer) under `repo_id`."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    return StubRepo(repo_id, files, **kwargs)


def sample_dataset_repo(repo_id: str, folder: Path, **kwargs) -> StubRepo:
    """A dataset repo laid out as the Hub's parquet datasets are: a README whose YAML names the config
    and splits, and data/<split>-00000-of-00001.parquet made from sample_data/alpaca.jsonl."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    rows = [
        json.loads(line) for line in (ROOT / "sample_data" / "alpaca.jsonl").read_text().splitlines() if line
    ]
    split_at = max(1, len(rows) * 4 // 5)
    splits = {"train": rows[:split_at], "test": rows[split_at:]}
    for split, part in splits.items():
        table = pa.Table.from_pylist(part)
        pq.write_table(table, folder / "data" / f"{split}-00000-of-00001.parquet", row_group_size=8)
    readme = (
        "---\nlicense: apache-2.0\nconfigs:\n- config_name: default\n  data_files:\n"
        + "".join(f"  - split: {s}\n    path: data/{s}-*\n" for s in splits)
        + "---\n# Sample instructions\n\nAlpaca-style rows from Tune Studio's sample data.\n"
    )
    (folder / "README.md").write_text(readme, encoding="utf-8")
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    return StubRepo(repo_id, files, repo_type="dataset", pipeline_tag=None, **kwargs)
