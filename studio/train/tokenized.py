"""Training rows: the recipe's dataset as canonical records, SFT rows tokenized by the data layer's
one rendering function (what the preview shows), the tokenized cache under
STUDIO_HOME/cache/tokenized (this module is its only reader and writer), the train/eval split and
the length-grouped sampler. Knows nothing about TRL trainers or the UI.
"""

from __future__ import annotations

import json
from pathlib import Path

from studio import workspace
from studio.train.recipes import Recipe
from studio.train.setup import rank


def load_records(recipe: Recipe) -> list[dict]:
    """Canonical records for the recipe's method (the data layer unpairs preference pairs for KTO)."""
    from studio.data import check, store

    report = check.load(store.resolve(recipe.dataset), method=recipe.method, max_rows=recipe.data.max_rows)
    records = list(report.records)
    if not records:
        raise ValueError(
            f"dataset {recipe.dataset}: no usable rows ({'; '.join(map(str, report.problems[:3]))})"
        )
    return records


SFT_CHUNK = 1000  # records per fast-tokenizer call: amortizes the call, bounds the memory it holds


CACHE_KEEP = 20  # tokenized datasets kept in STUDIO_HOME/cache/tokenized, least recently used dropped


def sft_rows(records: list[dict], tokenizer, recipe: Recipe) -> list[dict]:
    """Pre-tokenized SFT rows from the data layer's one rendering function (what the preview shows),
    a chunk of records per fast-tokenizer call. Rows whose answer was cut off entirely are dropped."""
    from studio.data import templates

    rows = []
    for start in range(0, len(records), SFT_CHUNK):
        batch = templates.tokenize_sft_batch(
            records[start : start + SFT_CHUNK],
            tokenizer,
            max_length=recipe.data.max_length,
            template=recipe.data.chat_template,
            train_on=recipe.data.train_on,
        )
        for tok in batch:
            if any(label != templates.IGNORE_INDEX for label in tok.labels):
                rows.append({"input_ids": tok.input_ids, "labels": tok.labels})
    if not rows:
        raise ValueError(
            f"dataset {recipe.dataset}: every example lost its answer to truncation at data.max_length="
            f"{recipe.data.max_length} — raise data.max_length"
        )
    return rows


def cached_sft_rows(records: list[dict], tokenizer, recipe: Recipe) -> list[dict]:
    """`sft_rows`, read back from STUDIO_HOME/cache/tokenized/<key>.jsonl when the same records were
    tokenized the same way before: a resume or a second run with the same inputs skips tokenizing."""
    path = workspace.cache_dir() / "tokenized" / f"{tokenized_key(records, tokenizer, recipe)}.jsonl"
    rows = _read_cached_rows(path)
    if rows is not None:
        print(f"[studio] tokenized data from cache ({len(rows)} rows, {path.name[:12]})", flush=True)
        return rows
    rows = sft_rows(records, tokenizer, recipe)
    if rank() == 0:
        text = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
        workspace.atomic_write_text(path, text)
        _prune_cache(path.parent)
    return rows


def tokenized_key(records: list[dict], tokenizer, recipe: Recipe) -> str:
    """sha256 of everything the tokenized rows depend on: the records (in training order), the
    tokenizer (vocabulary, special tokens, chat template), the data settings and the code that
    renders and masks them (an update of the data layer must not reuse stale rows)."""
    import hashlib

    from studio.data import chat_text, templates

    parts = {
        "records": records,
        "tokenizer": _tokenizer_fingerprint(tokenizer),
        "chat_template": recipe.data.chat_template,
        "max_length": recipe.data.max_length,
        "train_on": recipe.data.train_on,
        "method": recipe.method,
        "code": [hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest() for m in (templates, chat_text)],
    }
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _tokenizer_fingerprint(tokenizer) -> list:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    specials = {k: str(v) for k, v in tokenizer.special_tokens_map.items()}
    return [type(tokenizer).__name__, vocab, template, specials]


def _read_cached_rows(path: Path) -> list[dict] | None:
    """The cached rows, or None when there are none (or the file is unreadable: tokenize again)."""
    if not path.is_file():
        return None
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        path.touch()  # recently used: kept by _prune_cache
    except (OSError, ValueError):
        return None
    if not rows or not all(isinstance(r, dict) and {"input_ids", "labels"} <= r.keys() for r in rows):
        return None
    return rows


def _prune_cache(folder: Path) -> None:
    files = sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[CACHE_KEEP:]:
        old.unlink(missing_ok=True)


def build_datasets(recipe: Recipe, tokenizer):
    """(train, eval or None) as datasets.Dataset, split with the recipe's seed."""
    import random

    from datasets import Dataset

    records = load_records(recipe)
    random.Random(recipe.training.seed).shuffle(records)
    rows = cached_sft_rows(records, tokenizer, recipe) if recipe.method == "sft" else records
    n_eval = int(len(rows) * recipe.data.eval_split) if recipe.data.eval_split > 0 else 0
    if recipe.data.eval_split > 0:
        n_eval = max(1, n_eval)
    train, held = rows[n_eval:], rows[:n_eval]
    return Dataset.from_list(train), (Dataset.from_list(held) if held else None)


def length_sampler(trainer, dataset=None):
    """Trainer's length-grouped order, drawn from (seed, epoch) instead of the global RNG: a resumed
    run sees the batches the uninterrupted one saw, and every process of a multi-GPU run agrees."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeeded(LengthGroupedSampler):
        epoch = 0

        def set_epoch(self, epoch: int) -> None:  # accelerate calls it at the start of each epoch
            self.epoch = epoch

        def __iter__(self):  # the same order however often an epoch is iterated
            self.generator = torch.Generator().manual_seed(trainer.args.data_seed + self.epoch)
            return super().__iter__()

    dataset = trainer.train_dataset if dataset is None else dataset
    args = trainer.args
    sampler = EpochSeeded(
        args.train_batch_size * args.gradient_accumulation_steps,
        lengths=[len(ids) for ids in dataset["input_ids"]],
    )
    return sampler
