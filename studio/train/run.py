"""THE training entrypoint: recipe -> tokenizer and model -> dataset -> TRL trainer -> run folder.

Run as: python -m studio train RECIPE.yaml [--set key=value ...] [--run-dir DIR] [--resume]
   or:  accelerate launch --multi_gpu --num_processes 2 -m studio train RECIPE.yaml ...

Reads top to bottom like a recipe: setup (preflight, tokenizer, data, model), train, cleanup
(adapter, probes, status). The run folder of DESIGN.md is its only output: status.json, metrics.jsonl,
train.log, checkpoints/, adapter/, probes.json. It is the only module that imports TRL trainers; the
losses are TRL's. It knows nothing about the UI: a UI reads the run folder. Rank 0 alone writes.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path

from transformers import PrinterCallback

from studio import models, processes, rundir, workspace
from studio.train import (
    callbacks,
    lm_head,
    lora_dropout,
    memory,
    preflight,
    probes,
    recipes,
    setup,
    tokenized,
)
from studio.train.recipes import Recipe


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


# ---------------------------------------------------------------- setup: trainer


def common_args(recipe: Recipe, plan: setup.Plan, run_dir: Path, has_eval: bool) -> dict:
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


def build_trainer(
    recipe: Recipe,
    model,
    tokenizer,
    train_ds,
    eval_ds,
    plan: setup.Plan,
    run_dir: Path,
    extra_callbacks: list,
):
    """The TRL trainer for the recipe's method (SimPO is CPO with the simpo loss)."""
    args = common_args(recipe, plan, run_dir, eval_ds is not None)
    p = recipe.preference
    length = recipe.data.max_length
    peft_config = None if recipe.backend == "unsloth" else setup.lora_config(recipe)  # Unsloth attached it
    common = dict(
        model=model,
        processing_class=tokenizer,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        peft_config=peft_config,
        callbacks=extra_callbacks,
    )
    if recipe.method == "sft":
        from trl import SFTConfig, SFTTrainer

        # Length-grouped batches pad each batch to its own longest row; packed rows (TRL's best-fit
        # packing, padding-free) hold several examples that each attend only to themselves: the
        # position ids restart per example and transformers turns them into a block-diagonal mask
        # (only without a KV cache: setup.load_model turns use_cache off).
        packing = recipe.training.packing
        grouped = recipe.training.group_by_length and not packing
        sampling = "group_by_length" if grouped else "random"
        config = SFTConfig(
            **args,
            max_length=length,
            train_sampling_strategy=sampling,
            packing=packing,
            packing_strategy="bfd",
        )
        trainer = SFTTrainer(args=config, **common)
        _cpu_lm_head(trainer)
        if grouped:
            trainer._get_train_sampler = lambda dataset=None: tokenized.length_sampler(trainer, dataset)
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
        trainer = KTOTrainer(args=config, **common)
        _cpu_lm_head(trainer, mean_logits=True)  # KTO logs each side's mean logit
        return trainer
    raise ValueError(f"method {recipe.method!r} is not one of {', '.join(recipes.METHODS)}")


def _cpu_lm_head(trainer, mean_logits: bool = False) -> None:
    """On a CPU, TRL's fused LM head falls back to many fp32 passes; the studio's does fewer."""
    from trl.trainer.utils import FusedCausalLMOutput

    model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    if lm_head.install(model, FusedCausalLMOutput, mean_logits):
        print("[studio] loss: labels scored on the CPU in whole-vocabulary chunks", flush=True)
    if getattr(trainer, "ref_model", None) is not None:  # a full fine-tune's frozen reference (KTO)
        lm_head.install(trainer.ref_model, FusedCausalLMOutput)


def prepare(recipe: Recipe, run_dir: Path, extra_callbacks=(), plan: setup.Plan | None = None):
    """Everything up to a ready trainer: (trainer, tokenizer, plan). Used by `run` and by tests."""
    plan = plan or setup.make_plan(recipe, _model_info(recipe))
    tokenizer, added_pad = setup.setup_tokenizer(recipe)
    train_ds, eval_ds = tokenized.build_datasets(recipe, tokenizer)
    model = setup.load_model(recipe, tokenizer, plan, added_pad)
    trainer = build_trainer(recipe, model, tokenizer, train_ds, eval_ds, plan, run_dir, list(extra_callbacks))
    trainer.remove_callback(PrinterCallback)  # RunCallback prints one compact line per log event
    if recipe.backend != "unsloth":  # Unsloth's kernels handle their own dropout
        folded = lora_dropout.fold(trainer.model)
        if folded:
            how = "its dropout as a 1-byte mask" if recipe.lora.dropout > 0 else "no dropout"
            print(f"[studio] LoRA: {folded} layers keep their input once, {how}", flush=True)
    return trainer, tokenizer, plan


def _model_info(recipe: Recipe):
    try:
        return models.info(recipe.model)
    except (ValueError, AttributeError, OSError):
        return None


# ---------------------------------------------------------------- train and clean up


def run(recipe: Recipe, run_dir: Path, resume: bool, flag: StopFlag) -> tuple[str, str | None]:
    """Train; return (final state, error or None). Rank 0 writes the run folder's outputs."""
    main = setup.rank() == 0
    plan = setup.make_plan(recipe, _model_info(recipe))
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
        if recipe.probes.prompts and not rundir.read_probes(run_dir):
            asked = probes.plan(recipe)
            # An adapter's "before" is the base with the adapter switched off, asked after training:
            # generating before the first step left a 4-bit base's backward pass ~7x weaker
            # (measured: grad norm 0.23 vs 1.64 on step 1 of the sample QLoRA run; the house style
            # then never showed). A full fine-tune has no base to switch back to: ask it now.
            before = (
                []
                if _adapter_model(trainer.model)
                else answer(trainer.model, tokenizer, asked.prompts, recipe.probes.max_new_tokens)
            )
            rundir.write_probes(run_dir, asked.prompts, before, [], opening=asked.opening)
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
        asked = rundir.read_probes(run_dir)  # the questions asked before training, kept on resume
        prompts = asked.get("prompts") or recipe.probes.prompts
        after = answer(trainer.model, tokenizer, prompts, recipe.probes.max_new_tokens)
        before = asked.get("before") or []
        adapter_model = _adapter_model(trainer.model)
        if not before and adapter_model is not None:
            with adapter_model.disable_adapter():
                before = answer(adapter_model, tokenizer, prompts, recipe.probes.max_new_tokens)
        rundir.write_probes(run_dir, prompts, before, after, opening=asked.get("opening", ""))
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


def _adapter_model(model):
    """The PEFT model under any wrapper, or None for a full fine-tune."""
    model = getattr(model, "module", model)
    return model if hasattr(model, "disable_adapter") and hasattr(model, "peft_config") else None


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


# ---------------------------------------------------------------- timed warm-up


TIMING_MARK = "[studio] timing "  # the line `python -m studio train --time-steps` ends with


def time_steps(recipe_path: str, sets: list[str] | None, steps: int) -> int:
    """`python -m studio train --time-steps N`: train N+1 steps on the real model and data in a
    throwaway folder, print each step's seconds, how long loading took and how long one probe
    answer takes, as one JSON line after TIMING_MARK; save nothing. 0 timed, 2 refused."""
    import json
    import tempfile
    import time

    import psutil

    quiet_libraries()
    try:
        recipe = recipes.load(recipe_path, sets or [])
    except ValueError as exc:
        return _refuse(None, str(exc), True)
    errors = [p for p in preflight.preflight(recipe) if p.severity == "error"]
    if errors:
        return _refuse(None, "\n".join(str(p) for p in errors), True)
    recipe.training.max_steps = steps + 1  # the first step warms up and is not counted
    recipe.training.save_steps = steps + 2  # no checkpoint
    with tempfile.TemporaryDirectory(prefix="studio-timing-") as tmp:
        timer = callbacks.StepTimer()
        watcher = callbacks.RunCallback(Path(tmp), StopFlag(), is_main=True)  # its cost is part of a step
        trainer, tokenizer, _ = prepare(recipe, Path(tmp), [watcher, timer])
        watcher.counter = trainer.data_collator = callbacks.TokenCounter(trainer.data_collator)
        trainer.train()
        probe_s, asked = 0.0, probes.plan(recipe).prompts  # the questions the run will ask
        if asked:
            began = time.monotonic()
            answer(trainer.model, tokenizer, asked[:1], recipe.probes.max_new_tokens)
            probe_s = time.monotonic() - began
    started = psutil.Process().create_time()
    first_step_wall = time.time() - (time.monotonic() - (timer.first_step_at or time.monotonic()))
    timing = {
        "step_seconds": [round(s, 4) for s in timer.seconds],
        "load_seconds": round(first_step_wall - started, 2),
        "probe_seconds": round(probe_s, 2),
        "probes": len(asked),
    }
    print(TIMING_MARK + json.dumps(timing), flush=True)
    return 0


# ---------------------------------------------------------------- entrypoint


def default_run_dir(recipe: Recipe) -> Path:
    return workspace.run_path(rundir.new_run_id(recipe.method, recipe.model))


def quiet_libraries() -> None:
    """No progress bars or library chatter in train.log: metrics lines say how it goes.

    Left out: bitsandbytes' note that an optional CPU kernel package is missing (it falls back
    to its own kernel) and torch's notice that bitsandbytes' 4-bit matmul has no registered
    autograd kernel (bitsandbytes computes that gradient itself). Other warnings still show.
    """
    import logging
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"bitsandbytes::\w+: an autograd kernel was not registered")
    logging.getLogger("bitsandbytes.backends.cpu").setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()


def main(
    recipe_path: str, sets: list[str] | None = None, run_dir: str | None = None, resume: bool = False
) -> int:
    """`python -m studio train`: 0 completed or stopped, 1 failed while training, 2 refused before."""
    quiet_libraries()
    flag = StopFlag()
    flag.install()
    main_rank = setup.rank() == 0
    try:
        recipe = recipes.load(recipe_path, sets or [])
    except ValueError as exc:
        return _refuse(Path(run_dir) if run_dir else None, str(exc), main_rank)
    folder = callbacks.agree_on_run_dir(Path(run_dir) if run_dir else None, lambda: default_run_dir(recipe))
    if resume and run_dir is None:
        return _refuse(None, "--resume needs --run-dir: the folder of the run to continue", main_rank)
    # Only rank 0 judges the run folder: the other ranks would find the recipe.yaml it just wrote.
    problems = preflight.preflight(recipe, run_dir=folder if main_rank else None, resume=resume)
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems:
        print(f"[studio] preflight {problem.severity}: {problem}", flush=True)
    if errors:
        return _refuse(folder, "\n".join(str(p) for p in errors), main_rank)
    folder.mkdir(parents=True, exist_ok=True)
    if main_rank:
        callbacks.tee_output(rundir.log_path(folder))
        rundir.write_recipe(folder, recipes.to_yaml(recipe))
        rundir.update_status(
            folder,
            state="running",
            **processes.identity(os.getpid()),
            started_at=_now(),
            ended_at=None,
            exit_code=None,
            error=None,
            max_steps=recipe.training.max_steps,
            processes=setup.world_size(),
        )
    print(f"[studio] run folder: {folder}", flush=True)
    state, error, code = _guarded_run(recipe, folder, resume, flag)
    if state == "stopped" and rundir.last_complete_checkpoint(folder) is None:
        error = rundir.NOTHING_TO_RESUME
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
