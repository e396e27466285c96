"""The trainer's side of the run folder: the callback that turns log events into metrics lines,
a stop request into a checkpoint and a non-finite loss into a failed run; the log tee; the run
folder that several ranks agree on. Knows the transformers callback API; knows nothing about TRL,
recipes or the UI. Every file it writes goes through `studio.rundir`.
"""

from __future__ import annotations

import io
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from studio import rundir
from studio.train import pace

_SUMMARY_KEY = "train_loss"  # only the end-of-training summary has it
_NOISE = ("train_runtime", "train_tokens_per_second", "num_input_tokens_seen")  # cumulative, and per-method


class _Tee(io.TextIOBase):
    def __init__(self, stream, log) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        try:
            self.stream.write(text)
        except (OSError, ValueError):
            pass  # the terminal went away (a closed pipe): the run and its log carry on
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


def tee_output(log_path: Path) -> None:
    """Copy stdout/stderr into train.log, unless they already are train.log (a launcher redirected them)."""
    log_path = Path(log_path)
    if log_path.exists():
        target = os.stat(log_path)
        try:
            out = os.fstat(sys.stdout.fileno())
            if (out.st_dev, out.st_ino) == (target.st_dev, target.st_ino):
                return
        except (OSError, ValueError, io.UnsupportedOperation):
            pass
    log = open(log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives as long as the process
    sys.stdout = _Tee(sys.stdout, log)
    sys.stderr = _Tee(sys.stderr, log)


def agree_on_run_dir(given: Path | None, make_default: Callable[[], Path]) -> Path:
    """The run folder; with several processes and none given, rank 0 names it and tells the rest."""
    if given is not None:
        return given.expanduser().resolve()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return make_default()
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    PartialState(cpu=not torch.cuda.is_available())
    names = [str(make_default()) if int(os.environ.get("RANK", "0")) == 0 else None]
    broadcast_object_list(names, from_process=0)
    return Path(names[0])


class TokenCounter:
    """Wraps a data collator and counts the real (unpadded) tokens of every batch it builds.

    Works for every method's batch layout (input_ids, chosen_/rejected_/completion_ ids), where
    the Trainer's own counter only knows `input_ids`.
    """

    def __init__(self, collator) -> None:
        self.collator = collator
        self.tokens = 0

    def __call__(self, examples):
        batch = self.collator(examples)
        masks = [value for key, value in batch.items() if key.endswith("attention_mask")]
        if masks:
            self.tokens += sum(int(mask.sum()) for mask in masks if hasattr(mask, "sum"))
        elif "position_ids" in batch:  # padding-free (packed) rows: every token is real
            self.tokens += int(batch["input_ids"].numel())
        return batch


class RunCallback(TrainerCallback):
    """Metrics lines, status updates, stop-on-signal, and fail-on-non-finite-loss."""

    def __init__(self, run_dir: Path, flag, is_main: bool, counter: TokenCounter | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.counter = counter
        self.flag = flag
        self.is_main = is_main
        self.error: str | None = None
        self._last_tokens = 0
        self._last_time = time.monotonic()
        self._last_status = 0.0
        self.clock = pace.StepClock()

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_tokens = self._tokens()
        self._last_time = time.monotonic()
        if self.is_main:
            rundir.update_status(self.run_dir, step=state.global_step, max_steps=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if _any_rank(self.flag.raised):
            self.flag.raised = True
            control.should_save = True
            control.should_training_stop = True
        now = time.monotonic()
        self.clock.step_ended(state.global_step, now)
        if self.is_main and now - self._last_status > 2.0:
            self._last_status = now
            self._status(state)

    def _status(self, state) -> None:
        """Step, total and the pace of the recent steps (so readers can say the time left)."""
        fields = self.clock.status_fields(state.global_step, state.max_steps)
        rundir.update_status(self.run_dir, step=state.global_step, max_steps=state.max_steps, **fields)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        if _SUMMARY_KEY in logs:
            if self.is_main:
                rundir.update_status(self.run_dir, summary={k: v for k, v in logs.items() if _number(v)})
            return
        bad = [k for k in ("loss", "grad_norm", "eval_loss") if k in logs and not _finite(logs[k])]
        if bad:
            self.error = (
                f"the {bad[0]} became {logs[bad[0]]} at step {state.global_step}: training diverged. Lower "
                f"training.learning_rate (now {args.learning_rate:g}), keep training.max_grad_norm at 1.0, "
                "or turn training.bf16 off"
            )
            control.should_training_stop = True
            control.should_save = False
        if self.is_main:
            self._write(state, logs)

    def _tokens(self) -> int:
        # per process; every rank reads the same number of tokens on average
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return self.counter.tokens * world if self.counter is not None else 0

    def _write(self, state, logs: dict) -> None:
        row = {"step": state.global_step, "time": round(time.time(), 3)}
        row.update({k: v for k, v in logs.items() if (_number(v) or v is None) and k not in _NOISE})
        now = time.monotonic()
        tokens = self._tokens()
        if "loss" in logs and tokens > self._last_tokens and now > self._last_time:
            # tokens read since the previous log line, over the wall time since then
            row["tokens_per_second"] = round((tokens - self._last_tokens) / (now - self._last_time), 2)
            self._last_tokens, self._last_time = tokens, now
        rundir.append_metrics(self.run_dir, _finite_json(row))
        self._status(state)
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k not in ("time",))
        print(f"[studio] {shown}", flush=True)


class StepTimer(TrainerCallback):
    """Wall seconds of each optimizer step for a timed warm-up: the first from its beginning to its
    end (it holds the warm-up), the others from one step's end to the next, so the logging,
    evaluation and saving that follow a step count as they will in the real run."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.first_step_at: float | None = None  # monotonic time the first step began
        self._last_end: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first_step_at is None:
            self.first_step_at = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.monotonic()
        self.seconds.append(now - (self._last_end if self._last_end is not None else self.first_step_at))
        self._last_end = now


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value) -> bool:
    return _number(value) and math.isfinite(value)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _finite_json(row: dict) -> dict:
    # JSON has no NaN: a diverged loss is written as a string the UI can show
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in row.items()}


def _any_rank(flag: bool) -> bool:
    """True on every rank if any rank was asked to stop, so all stop at the same step."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return flag
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return flag
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
