"""THE training entrypoint: recipe -> tokenizer and model -> dataset -> TRL trainer -> run folder.

Run as: python -m studio train RECIPE.yaml [--set key=value ...] [--run-dir DIR] [--resume]
   or:  accelerate launch --multi_gpu --num_processes 2 -m studio train RECIPE.yaml ...

Reads top to bottom like a recipe: setup (preflight, tokenizer, data, model), train, cleanup
(adapter, probes, status). The run folder of DESIGN.md is its only output: status.json, metrics.jsonl,
train.log, checkpoints/, adapter/, probes.json. It is the only module that imports TRL trainers; the
losses are TRL's. It knows nothing about the UI: a UI reads the run folder. Rank 0 alone writes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from transformers import PrinterCallback

from studio import models, rundir, workspace
from studio.train import callbacks, memory, recipes
from studio.train.recipes import Recipe


@dataclass
class Plan:
    """What the hardware decided for this run: precision, checkpointing, device."""

    bf16: bool
    gradient_checkpointing: bool
    use_cpu: bool
    estimate: memory.MemoryEstimate | None = None
    notes: list[str] = field(default_factory=list)


class StopFlag:
    """Set by SIGTERM/SIGINT; the trainer callback turns it into save + stop at the next step."""

    def __init__(self) -> None:
        self.raised = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        if self.raised and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self.raised = True
        print(
            f"[studio] received {signal.Signals(signum).name}: saving a checkpoint and stopping", flush=True
        )


# ---------------------------------------------------------------- setup: hardware, tokenizer, data


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_plan(recipe: Recipe, model_info=None) -> Plan:
    """Resolve the recipe's 'auto' settings against this machine."""
    import torch

    use_cpu = not torch.cuda.is_available()
    want = recipe.training.bf16
    bf16 = memory.bf16_supported() if want == "auto" else bool(want)
    plan = Plan(bf16=bf16, gradient_checkpointing=False, use_cpu=use_cpu)
    if model_info is not None:
        plan.estimate = memory.estimate_memory(model_info, recipe, gradient_checkpointing=False, bf16=bf16)
    gc = recipe.training.gradient_checkpointing
    if gc == "auto":  # ~40% slower: only when the estimate says memory is short (not when unknown)
        plan.gradient_checkpointing = plan.estimate is not None and plan.estimate.verdict in (
            "tight",
            "will not fit",
        )
    else:
        plan.gradient_checkpointing = bool(gc)
    if plan.estimate is not None and plan.gradient_checkpointing:
        plan.estimate = memory.estimate_memory(model_info, recipe, gradient_checkpointing=True, bf16=bf16)
    plan.notes.append(
        f"precision: {'bf16' if bf16 else 'fp32'}; gradient checkpointing: {plan.gradient_checkpointing}"
    )
    return plan


def pick_pad_token(tokenizer) -> tuple[str, bool]:
    """A pad token that is not EOS: (token, added). Padding with EOS would mask EOS out of the loss
    and the model would never learn to stop, so reuse an unused special token, or add one."""
    eos = tokenizer.eos_token
    if tokenizer.pad_token is not None and tokenizer.pad_token != eos:
        return tokenizer.pad_token, False
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    unused = [t for t in specials if t not in (eos, tokenizer.bos_token) and t not in template]
    for hint in ("pad", "endoftext", "unk"):
        for token in unused:
            if hint in token.lower():
                return token, False
    if unused:
        return unused[0], False
    return "<|pad|>", True


def setup_tokenizer(recipe: Recipe):
    """Tokenizer with the chosen chat template and a pad token distinct from EOS."""
    from studio.data import templates

    tokenizer = models.load_tokenizer(recipe.model)
    templates.ensure_chat_template(tokenizer, recipe.data.chat_template)
    token, added = pick_pad_token(tokenizer)
    if added:
        tokenizer.add_special_tokens({"pad_token": token})
    else:
        tokenizer.pad_token = token
    tokenizer.padding_side = "right"
    return tokenizer, added


def load_records(recipe: Recipe) -> list[dict]:
    """Canonical records for the recipe's method; paired preference data is unpaired for KTO."""
    from studio.data import check, store

    report = check.load(store.resolve(recipe.dataset), method=recipe.method, max_rows=recipe.data.max_rows)
    records = list(report.records)
    if recipe.method == "kto" and report.kind == "preference":
        records = unpair(records)
    if not records:
        raise ValueError(
            f"dataset {recipe.dataset}: no usable rows ({'; '.join(map(str, report.problems[:3]))})"
        )
    return records


def unpair(records: list[dict]) -> list[dict]:
    """Preference pairs -> KTO rows: each chosen answer labelled good, each rejected one bad."""
    rows = []
    for rec in records:
        rows.append({"prompt": rec["prompt"], "completion": rec["chosen"], "label": True})
        rows.append({"prompt": rec["prompt"], "completion": rec["rejected"], "label": False})
    return rows


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


# ---------------------------------------------------------------- setup: model and trainer


def load_with_unsloth(recipe: Recipe, tokenizer, plan: Plan):
    """The model with its LoRA already attached, through Unsloth's fused kernels (one CUDA GPU)."""
    reason = recipes.unsloth_unavailable()
    if reason:
        raise ValueError(f"backend unsloth: {reason} — set backend: transformers")
    from unsloth import FastLanguageModel  # optional dependency, present only where preflight allowed it

    lo = recipe.lora
    model, _ = FastLanguageModel.from_pretrained(
        model_name=models.resolve(recipe.model),
        max_seq_length=recipe.data.max_length,
        dtype=None,  # Unsloth picks bf16 where the GPU has it
        load_in_4bit=recipe.quantization.load_in_4bit,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=lo.r,
        lora_alpha=lo.alpha,
        lora_dropout=lo.dropout,
        target_modules=list(lo.targets),
        bias="none",
        use_rslora=lo.use_rslora,
        use_gradient_checkpointing="unsloth" if plan.gradient_checkpointing else False,
        random_state=recipe.training.seed,
    )
    model.config.pad_token_id = tokenizer.pad_token_id  # our tokenizer tokenized the data
    return model


def load_model(recipe: Recipe, tokenizer, plan: Plan, added_pad: bool):
    import torch

    if recipe.backend == "unsloth":
        return load_with_unsloth(recipe, tokenizer, plan)

    dtype = torch.bfloat16 if plan.bf16 else torch.float32
    kwargs = {"dtype": dtype}
    q = recipe.quantization
    if q.load_in_4bit or q.load_in_8bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=q.load_in_4bit,
            load_in_8bit=q.load_in_8bit,
            bnb_4bit_quant_type=q.quant_type,
            bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
        if not plan.use_cpu:
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    model = models.load_model(recipe.model, **kwargs)
    if added_pad:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    return model


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


def lora_config(recipe: Recipe):
    if not recipe.lora.enabled:
        return None
    from peft import LoraConfig

    lo = recipe.lora
    return LoraConfig(
        r=lo.r,
        lora_alpha=lo.alpha,
        lora_dropout=lo.dropout,
        target_modules=list(lo.targets),
        use_rslora=lo.use_rslora,
        use_dora=lo.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def common_args(recipe: Recipe, plan: Plan, run_dir: Path, has_eval: bool) -> dict:
    """TrainingArguments shared by every method."""
    t = recipe.training
    return dict(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps,
        seed=t.seed,
        data_seed=t.seed,
        bf16=plan.bf16,
        gradient_checkpointing=plan.gradient_checkpointing,
        use_cpu=plan.use_cpu,
        optim="adamw_torch",
        neftune_noise_alpha=t.neftune_alpha,
        report_to="none",
        logging_nan_inf_filter=False,  # a diverged loss must show, so the run can fail on it
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        log_level="warning",
    )


def build_trainer(recipe: Recipe, model, tokenizer, train_ds, eval_ds, plan: Plan, run_dir: Path, callbacks):
    """The TRL trainer for the recipe's method (SimPO is CPO with the simpo loss)."""
    args = common_args(recipe, plan, run_dir, eval_ds is not None)
    p = recipe.preference
    length = recipe.data.max_length
    peft_config = None if recipe.backend == "unsloth" else lora_config(recipe)  # Unsloth attached it
    common = dict(
        model=model,
        processing_class=tokenizer,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    if recipe.method == "sft":
        from trl import SFTConfig, SFTTrainer

        # Length-grouped batches: each batch still pads to its own longest row and no row attends
        # to another (no packing); only less padding is computed.
        sampling = "group_by_length" if recipe.training.group_by_length else "random"
        config = SFTConfig(**args, max_length=length, train_sampling_strategy=sampling)
        trainer = SFTTrainer(args=config, **common)
        if recipe.training.group_by_length:
            trainer._get_train_sampler = lambda dataset=None: length_sampler(trainer, dataset)
        return trainer
    if recipe.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer(args=DPOConfig(**args, beta=p.beta, max_length=length), **common)
    if recipe.method == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        config = CPOConfig(
            **args,
            loss_type="simpo",
            cpo_alpha=0.0,
            beta=p.beta,
            simpo_gamma=p.simpo_gamma_beta_ratio * p.beta,
            max_length=length,
        )
        return CPOTrainer(args=config, **common)
    if recipe.method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer(args=ORPOConfig(**args, beta=p.beta, max_length=length), **common)
    if recipe.method == "kto":
        from trl import KTOConfig, KTOTrainer

        config = KTOConfig(
            **args,
            beta=p.beta,
            max_length=length,
            desirable_weight=p.desirable_weight,
            undesirable_weight=p.undesirable_weight,
        )
        return KTOTrainer(args=config, **common)
    raise ValueError(f"method {recipe.method!r} is not one of {', '.join(recipes.METHODS)}")


def prepare(recipe: Recipe, run_dir: Path, callbacks=(), plan: Plan | None = None):
    """Everything up to a ready trainer: (trainer, tokenizer, plan). Used by `run` and by tests."""
    plan = plan or make_plan(recipe, _model_info(recipe))
    tokenizer, added_pad = setup_tokenizer(recipe)
    train_ds, eval_ds = build_datasets(recipe, tokenizer)
    model = load_model(recipe, tokenizer, plan, added_pad)
    trainer = build_trainer(recipe, model, tokenizer, train_ds, eval_ds, plan, run_dir, list(callbacks))
    trainer.remove_callback(PrinterCallback)  # RunCallback prints one compact line per log event
    return trainer, tokenizer, plan


def _model_info(recipe: Recipe):
    try:
        return models.info(recipe.model)
    except (ValueError, AttributeError, OSError):
        return None


# ---------------------------------------------------------------- train and clean up


def run(recipe: Recipe, run_dir: Path, resume: bool, flag: StopFlag) -> tuple[str, str | None]:
    """Train; return (final state, error or None). Rank 0 writes the run folder's outputs."""
    main = rank() == 0
    plan = make_plan(recipe, _model_info(recipe))
    for note in plan.notes:
        print(f"[studio] {note}", flush=True)
    if main and plan.estimate is not None:
        rundir.update_status(run_dir, memory_estimate_gb=round(plan.estimate.total_gb, 3))
    rss_before = _rss()
    watcher = callbacks.RunCallback(run_dir, flag, is_main=main)
    trainer, tokenizer, plan = prepare(recipe, run_dir, [watcher], plan)
    watcher.counter = trainer.data_collator = callbacks.TokenCounter(trainer.data_collator)
    if main and plan.estimate is not None and recipe.method == "sft":
        longest = max(len(ids) for ids in trainer.train_dataset["input_ids"])  # batches pad to their longest
        estimate = memory.estimate_memory(
            _model_info(recipe),
            recipe,
            gradient_checkpointing=plan.gradient_checkpointing,
            bf16=plan.bf16,
            seq_length=min(longest, recipe.data.max_length),
        )
        rundir.update_status(run_dir, memory_estimate_gb=round(estimate.total_gb, 3))
    checkpoint = rundir.last_complete_checkpoint(run_dir) if resume else None
    if main:
        if resume:
            for path in rundir.discard_partial_checkpoints(run_dir):
                print(f"[studio] ignoring the half-written {path.name}", flush=True)
            rundir.truncate_metrics(run_dir, checkpoint.step if checkpoint else 0)
        if recipe.probes.prompts and not (run_dir / "probes.json").is_file():
            before = answer(trainer.model, tokenizer, recipe.probes.prompts, recipe.probes.max_new_tokens)
            rundir.write_probes(run_dir, recipe.probes.prompts, before, [])
    if flag.raised:
        return "stopped", None
    print(
        f"[studio] training {recipe.method} on {recipe.model} with {recipe.dataset}"
        + (f", resuming from {checkpoint.path.name}" if checkpoint else ""),
        flush=True,
    )
    trainer.train(resume_from_checkpoint=str(checkpoint.path) if checkpoint else None)
    if main:  # measured next to the estimate, so both can be compared after the run
        rundir.update_status(run_dir, peak_memory_gb=round(_peak_memory(rss_before) / memory.GB, 3))
    if watcher.error:
        return "failed", watcher.error
    if flag.raised:
        return "stopped", None
    save_final(trainer, run_dir, main)
    if main and recipe.probes.prompts:
        after = answer(trainer.model, tokenizer, recipe.probes.prompts, recipe.probes.max_new_tokens)
        probes = json.loads((run_dir / "probes.json").read_text(encoding="utf-8"))
        rundir.write_probes(run_dir, recipe.probes.prompts, probes["before"], after)
    return "completed", None


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak_memory(rss_before: int) -> int:
    """Peak CUDA memory allocated, or on CPU the peak resident memory above what was there before loading."""
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before


def save_final(trainer, run_dir: Path, main: bool) -> None:
    """adapter/ (weights + tokenizer + chat template) appears only once it is complete."""
    tmp = run_dir / ".adapter.partial"
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))  # every rank calls it; rank 0 writes
    if not main:
        return
    trainer.processing_class.save_pretrained(str(tmp))
    (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle: not something to share with an adapter
    final = run_dir / "adapter"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    print(f"[studio] saved {final}", flush=True)


def answer(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers to single-turn prompts (the probes)."""
    import torch

    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    answers = []
    with torch.no_grad():
        for prompt in prompts:
            enc = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            ).to(model.device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
            )
            answers.append(
                tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
            )
    model.train(was_training)
    return answers


# ---------------------------------------------------------------- entrypoint


def default_run_dir(recipe: Recipe) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    short = Path(recipe.model).name.replace("_", "-")[:24] or "model"
    base = f"{stamp}-{recipe.method}-{short}"
    run_id, n = base, 1
    while workspace.run_path(run_id).exists():
        n += 1
        run_id = f"{base}-{n}"
    return workspace.run_path(run_id)


def quiet_libraries() -> None:
    """No progress bars or deprecation chatter in train.log: metrics lines say how it goes."""
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()


def main(
    recipe_path: str, sets: list[str] | None = None, run_dir: str | None = None, resume: bool = False
) -> int:
    """`python -m studio train`: 0 completed or stopped, 1 failed while training, 2 refused before."""
    quiet_libraries()
    flag = StopFlag()
    flag.install()
    main_rank = rank() == 0
    try:
        recipe = recipes.load(recipe_path, sets or [])
    except ValueError as exc:
        return _refuse(Path(run_dir) if run_dir else None, str(exc), main_rank)
    folder = callbacks.agree_on_run_dir(Path(run_dir) if run_dir else None, lambda: default_run_dir(recipe))
    if resume and run_dir is None:
        return _refuse(None, "--resume needs --run-dir: the folder of the run to continue", main_rank)
    # Only rank 0 judges the run folder: the other ranks would find the recipe.yaml it just wrote.
    problems = recipes.preflight(recipe, run_dir=folder if main_rank else None, resume=resume)
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems:
        print(f"[studio] preflight {problem.severity}: {problem}", flush=True)
    if errors:
        return _refuse(folder, "\n".join(str(p) for p in errors), main_rank)
    folder.mkdir(parents=True, exist_ok=True)
    if main_rank:
        callbacks.tee_output(folder / "train.log")
        workspace.atomic_write_text(folder / "recipe.yaml", recipes.to_yaml(recipe))
        rundir.update_status(
            folder,
            state="running",
            pid=os.getpid(),
            started_at=_now(),
            ended_at=None,
            exit_code=None,
            error=None,
            max_steps=recipe.training.max_steps,
            processes=world_size(),
        )
    print(f"[studio] run folder: {folder}", flush=True)
    state, error, code = _guarded_run(recipe, folder, resume, flag)
    if main_rank:
        rundir.update_status(folder, state=state, ended_at=_now(), exit_code=code, error=error)
    print(f"[studio] {state}" + (f": {error}" if error else ""), flush=True)
    close_distributed()
    return code


def close_distributed() -> None:
    """Tear down the process group before exit: a gloo group left to the interpreter's shutdown
    can abort a rank ("terminate called without an active exception") after training succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _guarded_run(recipe: Recipe, folder: Path, resume: bool, flag: StopFlag) -> tuple[str, str | None, int]:
    try:
        state, error = run(recipe, folder, resume, flag)
    except MemoryError:
        return "failed", rundir.oom_message(folder), 1
    except Exception as exc:  # the run's status must say why, whatever broke
        traceback.print_exc()
        if type(exc).__name__ == "OutOfMemoryError":
            return "failed", rundir.oom_message(folder), 1
        return "failed", f"{type(exc).__name__}: {exc}", 1
    return state, error, (1 if state == "failed" else 0)


def _refuse(folder: Path | None, message: str, main_rank: bool) -> int:
    print(f"[studio] cannot start: {message}", file=sys.stderr, flush=True)
    if folder is not None and main_rank and folder.is_dir():
        rundir.update_status(folder, state="failed", ended_at=_now(), exit_code=2, error=message)
    return 2


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
