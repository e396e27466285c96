"""Datasets from the Hugging Face Hub: configs and splits, a streamed preview, a download to a file.

    python -m studio data pull DATASET_ID [--config C] [--split S] [--rows N] [--sample]

`layout(repo_id)` reads which data files make which config and split: the `configs:` of the dataset
card when it has one, else the Hub's file-name conventions (data/train-*.parquet, test.jsonl, ...).
`preview(...)` reads only the first rows: the footer and first row group of a parquet file through
HTTP Range requests, or the first lines of a JSON Lines / CSV file; nothing is downloaded whole.
`pull(...)` downloads the split's files with progress (hubclient.fetch, resumable), keeps the first
N rows or a random sample of N, and writes them as a JSON Lines file under STUDIO_HOME/uploads/:
from there it goes through the same check, format detection, preview and save as an uploaded file.
Knows nothing about formats or the UI; Hub access and errors go through studio/hubclient.py.
"""

from __future__ import annotations

import fnmatch
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from studio import hubclient, workspace
from studio.data import files
from studio.hubclient import HubError, Progress

DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")
SPLIT_WORDS = {
    "train": "train",
    "training": "train",
    "test": "test",
    "testing": "test",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
}
PREVIEW_ROWS = 20
_STREAM_LIMIT = 4 * 1024 * 1024  # a preview of a text file reads at most this much


@dataclass(frozen=True)
class Layout:
    """{config: {split: [data files]}} of a dataset repo, with each file's size."""

    repo_id: str
    revision: str
    configs: dict[str, dict[str, list[str]]]
    sizes: dict[str, int]

    def files_of(self, config: str | None, split: str | None) -> list[str]:
        config = config or next(iter(self.configs))
        if config not in self.configs:
            raise HubError(
                f"{self.repo_id} has no config {config!r}: choose one of {', '.join(self.configs)}"
            )
        splits = self.configs[config]
        split = split or ("train" if "train" in splits else next(iter(splits)))
        if split not in splits:
            raise HubError(
                f"{self.repo_id} ({config}) has no split {split!r}: choose one of {', '.join(splits)}"
            )
        return splits[split]


def search(query: str = "", limit: int = 20) -> list[str]:
    """Ids of Hub datasets whose id contains `query`, most downloaded first."""
    hubclient.require_reachable()
    with hubclient.calling(kind="dataset"):
        found = hubclient.api().list_datasets(search=query.strip() or None, sort="downloads", limit=limit)
        return [d.id for d in found]


def _check_id(repo_id: str) -> str:
    repo_id = (repo_id or "").strip()
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubError(f"{repo_id!r} is not a Hub dataset id like 'org/name'")
    for part in repo_id.split("/"):
        workspace.check_name(part, "Hub dataset id part")
    return repo_id


def _split_of(path: str) -> str:
    """
    >>> _split_of("data/validation-00000-of-00001.parquet"), _split_of("train.jsonl"), _split_of("x.csv")
    ('validation', 'train', 'train')
    """
    stem = Path(path).name.split(".")[0].lower()
    for word in [stem.split("-")[0], *Path(path).parent.parts[::-1], *stem.replace("-", "_").split("_")]:
        if word.lower() in SPLIT_WORDS:
            return SPLIT_WORDS[word.lower()]
    return "train"


def _card_configs(card: str, data_files: list[str]) -> dict[str, dict[str, list[str]]]:
    """Configs named by the card's YAML (`configs: - config_name, data_files: [{split, path}]`)."""
    if not card.startswith("---"):
        return {}
    try:
        meta = yaml.safe_load(card.split("---", 2)[1]) or {}
    except (yaml.YAMLError, IndexError):
        return {}
    configs: dict[str, dict[str, list[str]]] = {}
    for entry in meta.get("configs") or []:
        if not isinstance(entry, dict):
            continue
        specs = entry.get("data_files") or []
        if isinstance(specs, str):
            specs = [{"split": "train", "path": specs}]
        splits: dict[str, list[str]] = {}
        for spec in specs if isinstance(specs, list) else []:
            patterns = spec.get("path") if isinstance(spec, dict) else spec
            patterns = [patterns] if isinstance(patterns, str) else list(patterns or [])
            split = spec.get("split", "train") if isinstance(spec, dict) else "train"
            matched = [f for f in data_files if any(fnmatch.fnmatch(f, p) for p in patterns)]
            if matched:
                splits.setdefault(str(split), []).extend(matched)
        if splits:
            configs[str(entry.get("config_name", "default"))] = splits
    return configs


def layout(repo_id: str) -> Layout:
    """The configs and splits of a Hub dataset, from its card or its file names."""
    from huggingface_hub import hf_hub_download

    repo_id = _check_id(repo_id)
    with hubclient.calling(repo_id, "dataset"):
        info = hubclient.api().dataset_info(repo_id, files_metadata=True)
        sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
        data_files = sorted(f for f in sizes if f.endswith(DATA_SUFFIXES))
        card = ""
        if "README.md" in sizes:
            card = Path(
                hf_hub_download(
                    repo_id,
                    "README.md",
                    repo_type="dataset",
                    revision=info.sha,
                    endpoint=hubclient.endpoint(),
                    token=hubclient.token() or False,
                    cache_dir=workspace.cache_dir() / "hub-meta",
                )
            ).read_text(encoding="utf-8", errors="replace")
    if not data_files:
        raise HubError(
            f"{repo_id} has no parquet, JSON Lines, JSON or CSV files: it cannot be read here "
            "(datasets made by a loading script are not supported)"
        )
    configs = _card_configs(card, data_files)
    if not configs:
        splits: dict[str, list[str]] = {}
        for name in data_files:
            splits.setdefault(_split_of(name), []).append(name)
        configs = {"default": splits}
    return Layout(repo_id, info.sha or "main", configs, sizes)


class _RangeFile(io.RawIOBase):
    """A read-only, seekable file over HTTP Range requests (what pyarrow needs to read a footer)."""

    def __init__(self, url: str, size: int, headers: dict) -> None:
        from huggingface_hub.utils import get_session

        self._session, self._url, self._size, self._headers, self._pos = get_session(), url, size, headers, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = {0: offset, 1: self._pos + offset, 2: self._size + offset}[whence]
        return self._pos

    def readinto(self, buffer) -> int:
        end = min(self._pos + len(buffer), self._size)
        if end <= self._pos:
            return 0
        headers = self._headers | {"Range": f"bytes={self._pos}-{end - 1}"}
        response = self._session.get(self._url, headers=headers, follow_redirects=True, timeout=30)
        response.raise_for_status()
        data = response.content[: end - self._pos]
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _url_and_headers(repo_id: str, revision: str, name: str) -> tuple[str, dict]:
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo_id, name, repo_type="dataset", revision=revision, endpoint=hubclient.endpoint())
    return url, build_hf_headers(token=hubclient.token() or False)


def _first_lines(url: str, headers: dict, limit: int) -> str:
    from huggingface_hub.utils import get_session

    chunks, read = [], 0
    with get_session().stream("GET", url, headers=headers, follow_redirects=True, timeout=30) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            read += len(chunk)
            if read >= _STREAM_LIMIT or b"".join(chunks).count(b"\n") > limit + 1:
                break
    text = b"".join(chunks).decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[: limit + 1])


def preview(
    repo_id: str, config: str | None = None, split: str | None = None, rows: int = PREVIEW_ROWS
) -> list[dict]:
    """The first `rows` rows of a split, streamed: no file is downloaded whole."""
    found = layout(repo_id)
    name = found.files_of(config, split)[0]
    url, headers = _url_and_headers(found.repo_id, found.revision, name)
    with hubclient.calling(found.repo_id, "dataset"):
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(_RangeFile(url, found.sizes[name], headers))
            batch = next(parquet.iter_batches(batch_size=rows, row_groups=[0]), None)
            return batch.to_pylist()[:rows] if batch is not None else []
        if name.endswith(".json"):
            raise HubError(
                f"{name} is one JSON document: it can only be read whole — pull it to see its rows"
            )
        text = _first_lines(url, headers, rows)
    if name.endswith(".csv"):
        import csv

        return [dict(r) for r in csv.DictReader(io.StringIO(text))][:rows]
    out = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            break  # a line cut by the preview's byte limit
        if isinstance(value, dict):
            out.append(value)
    return out[:rows]


def target_path(repo_id: str, config: str, split: str) -> Path:
    org, name = repo_id.split("/")
    stem = workspace.check_name(f"{org}--{name}-{config}-{split}"[:80], "file name")
    return workspace.uploads_dir() / f"{stem}.jsonl"


def pull(
    repo_id: str,
    config: str | None = None,
    split: str | None = None,
    rows: int | None = None,
    sample: bool = False,
    seed: int = 0,
    on_progress: Callable[[Progress], None] | None = None,
) -> tuple[Path, str]:
    """Download a split and keep its first `rows` rows (or a random sample of `rows`) as JSON Lines.

    Returns (the file, one line saying what was kept), ready for `check.load`.
    """
    found = layout(repo_id)
    config = config or next(iter(found.configs))
    names = found.files_of(config, split)
    split = split or next(s for s, f in found.configs[config].items() if f == names)
    total = sum(found.sizes.get(n, 0) for n in names)
    folder = workspace.cache_dir() / "hub-datasets" / found.repo_id.replace("/", "--")
    folder.mkdir(parents=True, exist_ok=True)
    hubclient.check_room(folder, total)

    def work() -> None:
        hubclient.fetch(found.repo_id, names, folder, found.revision, repo_type="dataset")

    with hubclient.calling(found.repo_id, "dataset"):
        hubclient.watch(work, folder, names, total, found.repo_id, on_progress or (lambda _: None))
    records = _take([folder / n for n in names], rows, sample, seed)
    out = target_path(found.repo_id, config, split)
    workspace.atomic_write_text(
        out, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
    )
    if on_progress:
        on_progress(Progress(found.repo_id, "done", total, total))
    how = (
        "all"
        if rows is None
        else (f"a random sample of {rows} (seed {seed})" if sample else f"the first {rows}")
    )
    return out, f"{found.repo_id} ({config}, {split}): kept {how} rows — {len(records)} rows in {out.name}"


def _take(paths: list[Path], rows: int | None, sample: bool, seed: int) -> list[dict]:
    if rows is not None and rows < 1:
        raise HubError(f"rows must be at least 1, got {rows}")
    records: list[dict] = []
    for path in paths:
        limit = None if (sample or rows is None) else rows - len(records)
        records += [row.data for row in files.read_rows(path, max_rows=limit, max_bytes=10 * 1024**3)]
        if not sample and rows is not None and len(records) >= rows:
            break
    if sample and rows is not None and len(records) > rows:
        records = random.Random(seed).sample(records, rows)
    return records


def job_key(repo_id: str, config: str | None, split: str | None) -> str:
    return f"dataset:{(repo_id or '').strip()}:{config or ''}:{split or ''}"


def start_pull(
    repo_id: str, config: str | None, split: str | None, rows: int | None, sample: bool, seed: int = 0
) -> Progress:
    """Start `pull` in a background thread; poll `hubclient.job(job_key(...))`, then `job_result`."""
    repo_id = _check_id(repo_id)
    return hubclient.start_job(
        job_key(repo_id, config, split),
        repo_id,
        lambda report: pull(repo_id, config, split, rows, sample, seed, on_progress=report),
    )
