"""The honest time estimate before a launch: time a few real training steps on this machine.

`measure()` runs `python -m studio train RECIPE --set ... --time-steps N` (studio.train.run.time_steps):
the real model, the real data and the run's own callbacks, in a throwaway folder, N+1 steps of
which the first (loading kernels, allocating, warming caches) is not counted. It returns the
seconds a step takes, how long loading took and how long the test questions take, so a plan can
say "about 4 min on this machine" and cap its steps to a time budget.

Spawns the trainer as a child process and reads its last line; imports no torch and knows
nothing about the UI or about how training works inside that process.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from studio.train import pace, runs

ROOT = Path(__file__).resolve().parents[2]  # the checkout: recipes/ and sample_data/ resolve from it
MARK = "[studio] timing "  # studio.train.run.TIMING_MARK (not imported: that module loads transformers)
STEPS = 5  # timed after the warm-up step; the median of them resists a burst of other work


@dataclass(frozen=True)
class Timing:
    """What a timed warm-up measured on this machine."""

    step_seconds: tuple[float, ...]  # every timed step; the first one (the warm-up) is not counted
    load_seconds: float  # from the process start to the first step: imports, model, data
    probe_seconds: float = 0.0  # one test question answered
    probes: int = 0  # test questions the run asks before and after training
    busy: str = ""  # what else was using the machine while it was timed, in words

    @property
    def per_step(self) -> float:
        """Median seconds of a step after the warm-up step (a burst of other work on one step,
        or one unusually long batch, does not set the estimate)."""
        return statistics.median(self.step_seconds[1:] or self.step_seconds)

    @property
    def overhead_seconds(self) -> float:
        """Loading plus the test questions before and after training."""
        return self.load_seconds + 2 * self.probes * self.probe_seconds

    def total_seconds(self, steps: int) -> float:
        return self.overhead_seconds + steps * self.per_step

    def words(self, steps: int) -> str:
        """'about 4 min on this machine (measured: 1.2 s a step × 200 steps, plus 25 s to load and ...)'."""
        extra = f"plus {self.load_seconds:.0f} s to load"
        if self.probes:
            extra += f" and {2 * self.probes * self.probe_seconds:.0f} s for the test questions"
        return (
            f"{pace.duration_words(self.total_seconds(steps))} on this machine (measured: "
            f"{self.per_step:.2g} s a step × {steps} steps, {extra})"
        )


def command(recipe: str, sets: list[str], steps: int = STEPS) -> list[str]:
    argv = [sys.executable, "-m", "studio", "train", str(recipe)]
    for item in sets:
        argv += ["--set", item]
    return [*argv, "--time-steps", str(steps)]


def measure(recipe: str, sets: list[str], steps: int = STEPS, timeout_s: float = 900) -> Timing:
    """Time `steps` training steps of this recipe on this machine. Raises ValueError saying why
    the warm-up could not train (the same reasons a run would fail for)."""
    try:
        proc = subprocess.run(
            command(recipe, sets, steps),
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as exc:
        raise ValueError(
            f"timing a few steps took over {timeout_s:.0f} s: this model is too slow here to estimate"
        ) from exc
    return parse(proc.stdout, proc.stderr, proc.returncode)


def parse(stdout: str, stderr: str = "", returncode: int = 0) -> Timing:
    """The Timing from the warm-up's output; ValueError with its last words when it failed."""
    line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith(MARK)), None)
    if returncode != 0 or line is None:
        errors = [ln.split("\r")[-1] for ln in stderr.splitlines() if ln.strip()]
        named = [ln for ln in errors if "cannot start" in ln or "Error" in ln]  # a refusal, a traceback's end
        said = named or errors or [ln for ln in stdout.splitlines() if ln.strip()]
        why = said[-1].removeprefix("[studio] ") if said else f"exit code {returncode}"
        raise ValueError(f"the warm-up could not train: {why}")
    data = json.loads(line[len(MARK) :])
    others = tuple(i.run_id for i in runs.list_runs() if i.state in runs.ACTIVE)
    cores = os.cpu_count() or 1
    return Timing(
        step_seconds=tuple(float(s) for s in data["step_seconds"]),
        load_seconds=float(data["load_seconds"]),
        probe_seconds=float(data.get("probe_seconds", 0.0)),
        probes=int(data.get("probes", 0)),
        busy=pace.busy_note(os.getloadavg()[0], cores, training_here=cores, other_runs=others),
    )
