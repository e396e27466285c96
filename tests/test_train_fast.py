"""The training fast paths give the plain path's results: chunked tokenization, the tokenized-data
cache (hit on the same inputs, miss on any change), length-grouped batches, and the hardware plan
(bf16 and gradient checkpointing only where they pay).

All on the tiny model, in process, without training a step: each test takes a second or two.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio import workspace
from studio.data import check, templates
from studio.train import memory, recipes, setup, tokenized
from studio.train import run as train

ROOT = Path(__file__).resolve().parent.parent
ROWS = 96  # Trainer sorts megabatches of min(rows // (4 x batch), 50) batches: 8 here
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "capital", "france", "paris", "sea"]


def _words(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 5 + k * 3) % len(WORDS)] for k in range(n))


@pytest.fixture
def sft_file(tmp_path) -> Path:
    """96 Alpaca rows with 2-10 word questions and 1-36 word answers, so lengths differ a lot."""
    path = tmp_path / "sft.jsonl"
    rows = [
        {"instruction": _words(i, 2 + (i % 5) * 2), "output": _words(i + 1, 1 + (i * 7) % 36)}
        for i in range(ROWS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _recipe(model, dataset, *sets: str) -> recipes.Recipe:
    base = [f"model={model}", f"dataset={dataset}", "data.eval_split=0", "batch_size=3", *sets]
    return recipes.load(ROOT / "recipes/lora_sft.yaml", base)


def _rows(dataset) -> list[tuple[list[int], list[int]]]:
    return [(row["input_ids"], row["labels"]) for row in dataset]


# ---------------------------------------------------------------- chunked tokenization


def test_chunked_tokenization_equals_one_record_at_a_time(tiny_model, sft_file, monkeypatch):
    recipe = _recipe(tiny_model, sft_file, "data.max_length=24")
    tokenizer, _ = setup.setup_tokenizer(recipe)
    records = list(check.load(sft_file, method="sft").records)
    monkeypatch.setattr(tokenized, "SFT_CHUNK", 40)  # 96 records: three chunks, the last one short
    rows = tokenized.sft_rows(records, tokenizer, recipe)
    expected = []
    for rec in records:
        tok = templates.tokenize_sft(rec, tokenizer, max_length=24, template=None, train_on="assistant")
        if any(label != -100 for label in tok.labels):
            expected.append((tok.input_ids, tok.labels))
    assert [(r["input_ids"], r["labels"]) for r in rows] == expected
    assert len(expected) < len(records), "max_length=24 should cut some answers off entirely"


# ---------------------------------------------------------------- tokenized-data cache


def _cache_files() -> list[Path]:
    return sorted((workspace.cache_dir() / "tokenized").glob("*.jsonl"))


def test_second_run_reads_the_tokenized_cache(tiny_model, sft_file, monkeypatch, capsys):
    recipe = _recipe(tiny_model, sft_file, "data.eval_split=0.25")
    tokenizer, _ = setup.setup_tokenizer(recipe)
    first_train, first_eval = tokenized.build_datasets(recipe, tokenizer)
    assert len(_cache_files()) == 1
    assert "from cache" not in capsys.readouterr().out

    def refuse(*_args, **_kwargs):
        raise AssertionError("tokenized again although the cache holds these rows")

    monkeypatch.setattr(templates, "tokenize_sft_batch", refuse)
    tokenizer, _ = setup.setup_tokenizer(recipe)  # a fresh tokenizer, as a second run loads
    second_train, second_eval = tokenized.build_datasets(recipe, tokenizer)
    assert "[studio] tokenized data from cache" in capsys.readouterr().out
    assert _rows(second_train) == _rows(first_train) and _rows(second_eval) == _rows(first_eval)


def test_a_changed_dataset_misses_the_cache(tiny_model, sft_file, monkeypatch):
    recipe = _recipe(tiny_model, sft_file)
    tokenizer, _ = setup.setup_tokenizer(recipe)
    tokenized.build_datasets(recipe, tokenizer)
    lines = sft_file.read_text().splitlines()
    lines[3] = json.dumps({"instruction": "the sea", "output": "paris is the capital of france"})
    sft_file.write_text("\n".join(lines) + "\n")
    calls = []
    real = templates.tokenize_sft_batch
    monkeypatch.setattr(templates, "tokenize_sft_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    ds, _ = tokenized.build_datasets(recipe, tokenizer)
    assert calls, "a changed row must be tokenized again"
    assert len(_cache_files()) == 2
    assert any(tokenizer.decode(ids).count("paris is the capital of france") for ids, _ in _rows(ds))


@pytest.mark.parametrize(
    "change",
    [
        "data.max_length=16",
        "data.train_on=all",
        "data.chat_template=llama3",
        "training.seed=7",  # another order of the same rows
        "data.max_rows=20",
        "tokenizer",
    ],
)
def test_every_input_of_the_tokenized_rows_is_in_the_cache_key(tiny_model, sft_file, change):
    def key(*sets: str, touch_tokenizer: bool = False) -> str:
        recipe = _recipe(tiny_model, sft_file, *sets)
        tokenizer, _ = setup.setup_tokenizer(recipe)
        if touch_tokenizer:
            tokenizer.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
        records = tokenized.load_records(recipe)
        import random

        random.Random(recipe.training.seed).shuffle(records)
        return tokenized.tokenized_key(records, tokenizer, recipe)

    base = key()
    assert key() == base, "the same inputs must give the same key"
    other = key(touch_tokenizer=True) if change == "tokenizer" else key(change)
    assert other != base


def test_an_unreadable_cache_file_is_tokenized_again(tiny_model, sft_file):
    recipe = _recipe(tiny_model, sft_file)
    tokenizer, _ = setup.setup_tokenizer(recipe)
    first, _ = tokenized.build_datasets(recipe, tokenizer)
    (path,) = _cache_files()
    path.write_text('{"input_ids": [1, 2')  # what a full disk or a hand edit could leave
    again, _ = tokenized.build_datasets(recipe, tokenizer)
    assert _rows(again) == _rows(first)
    assert json.loads(path.read_text().splitlines()[0])["input_ids"] == first[0]["input_ids"]


# ---------------------------------------------------------------- length-grouped batches


def _batch_lengths(trainer) -> list[list[int]]:
    return [batch["attention_mask"].sum(dim=1).tolist() for batch in trainer.get_train_dataloader()]


def _padding(batches: list[list[int]]) -> int:
    return sum(max(b) * len(b) - sum(b) for b in batches)


def test_sft_batches_are_grouped_by_length_unless_the_recipe_says_no(tiny_model, sft_file, tmp_path):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    grouped, _, _ = train.prepare(_recipe(tiny_model, sft_file), tmp_path / "a")
    plain, _, _ = train.prepare(_recipe(tiny_model, sft_file, "group_by_length=false"), tmp_path / "b")
    assert grouped.args.train_sampling_strategy == "group_by_length"
    assert isinstance(grouped._get_train_sampler(), LengthGroupedSampler)
    assert plain.args.train_sampling_strategy == "random"
    assert not isinstance(plain._get_train_sampler(), LengthGroupedSampler)

    by_length, shuffled = _batch_lengths(grouped), _batch_lengths(plain)
    assert sorted(n for b in by_length for n in b) == sorted(n for b in shuffled for n in b)
    assert _padding(by_length) < 0.5 * _padding(shuffled), (by_length, shuffled)
    descending = sum(b == sorted(b, reverse=True) for b in by_length)
    assert descending >= len(by_length) - 1  # only the batch the longest row was swapped out of may differ


def test_length_grouped_order_depends_on_seed_and_epoch_only(tiny_model, sft_file, tmp_path):
    """A resumed run (or another process of a multi-GPU run) draws the same batches: the order
    comes from (data seed, epoch), never from the global RNG that training has moved on."""
    import torch

    trainer, _, _ = train.prepare(_recipe(tiny_model, sft_file), tmp_path / "run")
    torch.manual_seed(1)
    first = list(trainer._get_train_sampler())
    torch.manual_seed(2)
    sampler = trainer._get_train_sampler()
    assert list(sampler) == first and sorted(first) == list(range(ROWS))
    sampler.set_epoch(1)
    second_epoch = list(sampler)
    assert second_epoch != first
    torch.rand(100)
    assert list(sampler) == second_epoch
    loader = trainer.get_train_dataloader()
    loader.set_epoch(3)  # what the Trainer does at each epoch: it must reach our sampler
    assert loader.batch_sampler.sampler.epoch == 3


def test_group_by_length_is_a_recipe_field_with_help():
    (doc,) = [d for d in recipes.field_docs() if d.key == "training.group_by_length"]
    assert doc.default is True and "padding" in doc.help


# ---------------------------------------------------------------- hardware plan


def _estimate(verdict: str) -> memory.MemoryEstimate:
    return memory.MemoryEstimate(1.0, 1.0, 1.0, 1.0, 1.0, 5.0, 10.0, verdict)


@pytest.mark.parametrize(
    ("verdict", "expected"), [("fits", False), ("unknown", False), ("tight", True), ("will not fit", True)]
)
def test_auto_gradient_checkpointing_only_when_memory_is_tight(verdict, expected, monkeypatch):
    seen = []

    def fake(_info, _recipe, gradient_checkpointing, bf16, **_kw):
        seen.append(gradient_checkpointing)
        return _estimate(verdict)

    monkeypatch.setattr(memory, "estimate_memory", fake)
    plan = setup.make_plan(recipes.Recipe(), model_info=object())
    assert plan.gradient_checkpointing is expected
    assert seen[0] is False  # judged without checkpointing first
    assert setup.make_plan(recipes.Recipe(), model_info=None).gradient_checkpointing is False
    forced = recipes.load(ROOT / "recipes/lora_sft.yaml", ["gradient_checkpointing=true"])
    assert setup.make_plan(forced, model_info=object()).gradient_checkpointing is True


@pytest.mark.parametrize(
    ("cuda", "supported", "setting", "expected"),
    [
        (False, True, "auto", True),  # CPU with native bf16: measured faster (bench/RESULTS.md)
        (False, False, "auto", False),
        (True, True, "auto", True),
        (True, False, "auto", False),  # a GPU without bf16 falls back to fp32
        (False, True, "true", True),  # asked for explicitly: honoured
        (True, True, "false", False),
    ],
)
def test_auto_bf16_means_bf16_where_the_hardware_has_it_else_fp32(
    cuda, supported, setting, expected, monkeypatch
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(memory, "bf16_supported", lambda: supported)
    recipe = recipes.load(ROOT / "recipes/lora_sft.yaml", [f"bf16={setting}"])
    assert setup.make_plan(recipe).bf16 is expected


# ---------------------------------------------------------------- packed rows


def test_packed_and_padded_sft_batches_give_the_same_loss_on_the_same_rows(tiny_model, sft_file, tmp_path):
    """Packing (several examples in one padding-free row) scores the same tokens the same way as
    padded batches: each packed example attends only to itself."""
    import torch

    rows = 6
    few = [f"data.max_rows={rows}", "data.max_length=512"]
    padded, _, _ = train.prepare(_recipe(tiny_model, sft_file, *few, f"batch_size={rows}"), tmp_path / "a")
    packed, _, _ = train.prepare(
        _recipe(tiny_model, sft_file, *few, "batch_size=1", "training.packing=true"), tmp_path / "b"
    )
    assert padded.args.train_sampling_strategy == "group_by_length" and packed.args.packing
    padded_batch = next(iter(padded.get_train_dataloader()))
    packed_batch = next(iter(packed.get_train_dataloader()))
    assert packed_batch["input_ids"].shape[0] == 1  # one row holds them all ...
    assert int((packed_batch["position_ids"] == 0).sum()) == rows  # ... each from position 0
    assert "attention_mask" not in packed_batch and padded_batch["attention_mask"].min() == 0  # padding
    labelled = int((padded_batch["labels"] != -100).sum())
    assert int((packed_batch["labels"] != -100).sum()) == labelled > rows
    model = padded.model.eval()
    packed.model.load_state_dict(model.state_dict())  # the same weights (LoRA included)
    with torch.no_grad():
        loss_padded = padded.compute_loss(model, dict(padded_batch))
        loss_packed = packed.compute_loss(packed.model.eval(), dict(packed_batch))
        leaking = {k: v for k, v in packed_batch.items() if k != "position_ids"}  # examples see each other
        loss_leaking = packed.compute_loss(packed.model, leaking)
    assert abs(float(loss_packed) - float(loss_padded)) < 1e-5, (loss_packed, loss_padded)
    assert abs(float(loss_leaking) - float(loss_padded)) > 1e-4  # the check above can tell


def test_packing_is_a_recipe_field_with_help():
    (doc,) = [d for d in recipes.field_docs() if d.key == "training.packing"]
    assert doc.default is False and "attending only to itself" in doc.help
