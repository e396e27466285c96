"""Preflight: everything that can be checked about a recipe before any weights load.

The recipe alone (cross-field rules and ranges), then the hardware and backend, the tokenizer and
its chat template, the dataset (format, kind, lengths), the run folder and the memory estimate.
Each finding is a `recipes.Problem` that names the field, what is wrong and the fix. Knows nothing
about TRL or the UI.
"""

from __future__ import annotations

import math
from pathlib import Path

from studio.train.recipes import Problem, Recipe


def config_problems(recipe: Recipe) -> list[Problem]:
    """Cross-field checks of the recipe alone."""
    out = []
    q, lo, t = recipe.quantization, recipe.lora, recipe.training
    if q.load_in_4bit and q.load_in_8bit:
        out.append(
            Problem(
                "quantization.load_in_8bit",
                "4-bit and 8-bit loading are both on",
                "choose one: set quantization.load_in_8bit=false for QLoRA",
            )
        )
    if (q.load_in_4bit or q.load_in_8bit) and not lo.enabled:
        out.append(
            Problem(
                "lora.enabled",
                "a quantized model cannot be fully fine-tuned",
                "set lora.enabled=true, or turn quantization off for a full fine-tune",
            )
        )
    if lo.enabled and lo.alpha < lo.r:
        out.append(
            Problem(
                "lora.alpha",
                f"alpha {lo.alpha} is below the rank {lo.r}: the update is scaled down and learns slowly",
                f"set lora.alpha={2 * lo.r} (2 x rank)",
                "warning",
            )
        )
    if lo.enabled and (lo.r < 1 or not lo.targets):
        out.append(
            Problem(
                "lora.r",
                "LoRA needs a rank of at least 1 and one target layer",
                "set lora.r=16 and lora.targets to the projections",
            )
        )
    if not 0.0 <= recipe.data.eval_split < 0.5:
        out.append(
            Problem(
                "data.eval_split",
                f"{recipe.data.eval_split} is not a fraction below 0.5",
                "use 0 (no evaluation) or e.g. 0.1",
            )
        )
    if t.max_steps <= 0 and t.epochs <= 0:
        out.append(
            Problem(
                "training.max_steps",
                "neither max_steps nor epochs is positive",
                "set training.max_steps=N or training.epochs=1",
            )
        )
    for name in ("batch_size", "grad_accum", "save_steps", "logging_steps", "eval_steps", "num_processes"):
        if getattr(t, name) < 1:
            out.append(Problem(f"training.{name}", "must be at least 1", f"set training.{name}=1 or more"))
    if recipe.data.max_length < 16:
        out.append(
            Problem("data.max_length", "is too short to hold a prompt and an answer", "use 256 or more")
        )
    if recipe.method == "kto" and t.batch_size < 2:
        out.append(
            Problem(
                "training.batch_size",
                "KTO compares each example with others in its batch",
                "set training.batch_size=2 or more",
            )
        )
    if t.neftune_alpha is not None and recipe.method != "sft":
        out.append(Problem("training.neftune_alpha", "NEFTune is meant for SFT", "leave it empty", "warning"))
    return out + _range_problems(recipe)


# (field, lowest, highest, lowest allowed itself?, fix): numbers the trainer would accept but misuse
_RANGES = (
    ("training.learning_rate", 0.0, 1.0, False, "use e.g. 2e-4 for LoRA or 1e-5 for a full fine-tune"),
    ("training.warmup_ratio", 0.0, float("inf"), True, "use a fraction such as 0.05, or a step count"),
    ("training.weight_decay", 0.0, 1.0, True, "use 0 or e.g. 0.01"),
    ("training.max_grad_norm", 0.0, float("inf"), True, "use 1.0"),
    ("lora.dropout", 0.0, 0.99, True, "use 0.05 (or 0 for none)"),
    ("lora.r", 0, 4096, True, "ranks of 8-64 suit almost every task; use lora.r=16"),
    ("preference.beta", 0.0, float("inf"), False, "use 0.1 (DPO) or 2.0 (SimPO)"),
)


def _range_problems(recipe: Recipe) -> list[Problem]:
    """NaN, infinity and out-of-range numbers, each named with the fix."""
    out = []
    for key, low, high, low_ok, fix in _RANGES:
        section, name = key.split(".")
        value = getattr(getattr(recipe, section), name)
        if key == "lora.r" and not recipe.lora.enabled:
            continue
        above = value > low if not low_ok else value >= low
        if not (math.isfinite(value) and above and value <= high):
            bound = f"{'at least' if low_ok else 'above'} {low:g}" + (
                f" and at most {high:g}" if math.isfinite(high) else ""
            )
            out.append(Problem(key, f"{value!r} is out of range: it must be {bound}", fix))
    return out


def unsloth_unavailable() -> str | None:
    """Why the Unsloth backend cannot run here, or None when it can."""
    import importlib.util

    if importlib.util.find_spec("unsloth") is None:
        return "the unsloth package is not installed (pip install unsloth, on a machine with an NVIDIA GPU)"
    import torch

    if not torch.cuda.is_available():
        return "Unsloth runs only on an NVIDIA GPU with CUDA, and none is visible here"
    return None


def _backend_problems(recipe: Recipe) -> list[Problem]:
    if recipe.backend != "unsloth":
        return []
    fix = "set backend: transformers (same recipe, same results, slower on a GPU)"
    reason = unsloth_unavailable()
    if reason:
        return [Problem("backend", f"backend unsloth cannot run: {reason}", fix)]
    if not recipe.lora.enabled or recipe.training.num_processes > 1:
        return [Problem("backend", "the Unsloth backend trains LoRA / QLoRA on one GPU only", fix)]
    return []


def _hardware_problems(recipe: Recipe) -> list[Problem]:
    from studio.train import memory

    backend = _backend_problems(recipe)
    if backend:
        return backend
    if recipe.training.bf16 is True and not memory.bf16_supported():
        return [
            Problem(
                "training.bf16",
                "bf16 is asked for but this machine cannot compute in bfloat16",
                "set training.bf16=auto (fp32 here) or false",
            )
        ]
    return []


def _tokenizer_problems(recipe: Recipe) -> tuple[object | None, list[Problem]]:
    from studio import models
    from studio.data import templates

    try:
        tokenizer = models.load_tokenizer(recipe.model)
    except ValueError as exc:
        return None, [
            Problem("model", str(exc), "choose 'default', a local model folder, or a cached Hub id")
        ]
    out = []
    eos, pad = tokenizer.eos_token, tokenizer.pad_token
    if pad is None or pad == eos:
        what = "has no pad token" if pad is None else f"pads with its end-of-sequence token {eos}"
        out.append(
            Problem(
                "model",
                f"the tokenizer {what}",
                "nothing to do: train pads with an unused special "
                "token (or adds one) so the model still learns to stop",
                "info",
            )
        )
    try:
        templates.ensure_chat_template(tokenizer, recipe.data.chat_template)
    except ValueError as exc:
        out.append(
            Problem("data.chat_template", str(exc), "set data.chat_template=chatml (or llama3, alpaca)")
        )
        return None, out
    return tokenizer, out


def _dataset_problems(recipe: Recipe) -> tuple[list[dict], str, list[Problem]]:
    from studio.data import check, formats, store

    try:
        report = check.load(
            store.resolve(recipe.dataset), method=recipe.method, max_rows=recipe.data.max_rows
        )
    except ValueError as exc:
        return [], "", [Problem("dataset", str(exc), "choose a saved dataset, a sample, or a readable file")]
    want = formats.kind_for_method(recipe.method)
    records = list(report.records)
    fits = report.kind == want
    if not fits or not records:
        first = (
            "; ".join(str(p) for p in report.problems[:3]) or f"it holds {report.kind or 'no usable'} data"
        )
        return (
            [],
            "",
            [
                Problem(
                    "dataset",
                    f"{recipe.dataset} does not fit {recipe.method.upper()}: {first}",
                    f"use a {want} dataset (e.g. {_sample_for(want)}) or another method",
                )
            ],
        )
    return records, report.kind, []


def _sample_for(kind: str) -> str:
    return {"sft": "sample:alpaca.jsonl", "preference": "sample:dpo.jsonl", "kto": "sample:kto.jsonl"}[kind]


def _length_problems(recipe: Recipe, tokenizer, records: list[dict], kind: str) -> list[Problem]:
    from studio.data import stats

    sample = records[:200]
    measured = stats.token_stats(sample, tokenizer, recipe.data.max_length, recipe.data.chat_template, kind)
    if not measured.count:
        return []
    share = measured.over_max / measured.count
    lengths = sorted(measured.total_lengths)
    median = lengths[len(lengths) // 2]
    if share > 0.5:
        return [
            Problem(
                "data.max_length",
                f"{recipe.data.max_length} tokens is shorter than most examples "
                f"({share:.0%} are longer; median {median})",
                f"set data.max_length={_round_up(median * 2)}",
            )
        ]
    if measured.dropped:
        return [
            Problem(
                "data.max_length",
                f"{measured.dropped} of {measured.count} examples lose their whole "
                "answer at this length and are skipped",
                f"set data.max_length={_round_up(lengths[-1])}",
                "warning",
            )
        ]
    return []


def _round_up(n: int) -> int:
    return max(64, 1 << max(n - 1, 1).bit_length())


def run_dir_problems(run_dir: Path, resume: bool) -> list[Problem]:
    """A new run must not overwrite another; a resumed one continues from its last complete
    checkpoint, or starts again from step 0 in the same folder when it stopped before the first."""
    from studio import rundir

    run_dir = Path(run_dir)
    if resume:
        if not rundir.read_status(run_dir) and not rundir.read_recipe(run_dir):
            return [
                Problem("run_dir", f"{run_dir} holds no run to resume", "start the recipe without --resume")
            ]
        if rundir.last_complete_checkpoint(run_dir) is None:
            return [
                Problem(
                    "run_dir",
                    "stopped before the first checkpoint — nothing to resume",
                    "starting again from step 0 in the same folder",
                    "info",
                )
            ]
        return []
    state = rundir.read_status(run_dir).get("state")
    used = rundir.holds_a_run(run_dir)
    if used or state not in (None, "queued", "starting"):
        return [
            Problem(
                "run_dir",
                f"{run_dir} already holds a run ({', '.join(used) or state})",
                "choose a new --run-dir, or add --resume to continue that run",
            )
        ]
    return []


def preflight(recipe: Recipe, run_dir: Path | None = None, resume: bool = False) -> list[Problem]:
    """Every problem found before loading weights (configs, tokenizer, dataset, run folder only)."""
    problems = config_problems(recipe) + _hardware_problems(recipe)
    tokenizer, found = _tokenizer_problems(recipe)
    problems += found
    records, kind, found = _dataset_problems(recipe)
    problems += found
    if tokenizer is not None and records:
        problems += _length_problems(recipe, tokenizer, records, kind)
    if run_dir is not None:
        problems += run_dir_problems(run_dir, resume)
    if not any(p.field == "model" and p.severity == "error" for p in problems):
        problems += _memory_problems(recipe)
    return problems


def _memory_problems(recipe: Recipe) -> list[Problem]:
    from studio import models
    from studio.train import memory

    try:
        estimate = memory.estimate_memory(models.info(recipe.model), recipe)
    except (ValueError, AttributeError, OSError):
        return []
    if estimate.verdict == "will not fit":
        return [
            Problem(
                "quantization.load_in_4bit",
                f"the run needs {estimate.summary()}",
                "use QLoRA, a smaller batch_size or max_length, or gradient checkpointing",
                "warning",
            )
        ]
    return []
