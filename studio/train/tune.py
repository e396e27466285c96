"""The facts behind the guided path's choices, measured on this machine: the model's size (from its
config), the device's free memory, the dataset's rows and token lengths. `plan()` hands them to
studio.train.autotune.choose, which the `tune` command and the Train tab's guided view share;
`timed()` adds the seconds a step takes here, measured by a short warm-up (studio.train.warmup),
so the plan fits its time budget and says how long it will take.

Loads a tokenizer, never a model's weights (the warm-up loads them in its own process); must not
know about Gradio or argparse.
"""

from __future__ import annotations

import dataclasses

from studio import models
from studio.data import check, stats, store
from studio.train import autotune, memory, recipes, warmup

MEASURE_ROWS = 2000  # token lengths of the first rows are enough for a percentile


def facts(dataset: str, model: str = "default", goal: str = "style", budget: str = "quick") -> autotune.Facts:
    """Measure what the choices depend on. Raises ValueError naming the dataset or model at fault."""
    if goal not in autotune.GOALS:
        raise ValueError(f"goal {goal!r} must be one of: {', '.join(autotune.GOALS)}")
    method = autotune.GOALS[goal][0]
    report = check.load(store.resolve(dataset), method=method)
    if not report.usable or not report.records:
        raise ValueError(
            f"{dataset}: no rows usable for {method.upper()}: run `python -m studio data check "
            f"{dataset} --method {method}` to see why"
        )
    tokenizer = models.load_tokenizer(model)
    lengths = stats.token_stats(
        report.records[:MEASURE_ROWS], tokenizer, 1_000_000, kind=report.kind
    ).total_lengths
    ordered = sorted(lengths) or [1]
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    memory_bytes, device = memory.device_memory_bytes()
    info = models.info(model)
    first = autotune.Facts(
        n_params=info.n_params,
        memory_bytes=memory_bytes,
        device=device,
        rows=report.rows,
        p95_tokens=p95,
        goal=goal,
        budget=budget,
    )
    return dataclasses.replace(first, need_bytes=_needs(first, info, dataset, model))


def _needs(facts_: autotune.Facts, info: models.ModelInfo, dataset: str, model: str) -> tuple[float, float]:
    """The memory estimate of the plan's run in 16-bit and in 4-bit (batch and length as planned)."""
    draft = autotune.choose(facts_)
    sets = sets_for(draft, dataset, model)
    return tuple(
        memory.estimate_memory(
            info,
            recipes.load(draft.recipe, [*sets, f"quantization.load_in_4bit={flag}"]),
            facts_.memory_bytes,
        ).total
        for flag in ("false", "true")
    )


def plan(dataset: str, model: str = "default", goal: str = "style", budget: str = "quick") -> autotune.Plan:
    """The recipe the guided path runs for this dataset and model, with a reason for each choice."""
    return autotune.choose(facts(dataset, model, goal, budget))


def sets_for(plan_: autotune.Plan, dataset: str, model: str) -> list[str]:
    """The `--set` overrides that turn the plan's recipe file into this run's recipe."""
    return [f"model={model}", f"dataset={dataset}", *plan_.sets()]


def timed(facts_: autotune.Facts, dataset: str, model: str) -> tuple[autotune.Plan, warmup.Timing]:
    """Time a few steps of the plan's recipe on this machine, then plan again at that pace: the
    budget caps the steps and the plan says how long it takes. Raises ValueError when it cannot train."""
    first = autotune.choose(facts_)
    timing = warmup.measure(first.recipe, sets_for(first, dataset, model))
    paced = dataclasses.replace(
        facts_, step_seconds=timing.per_step, overhead_seconds=timing.overhead_seconds
    )
    return autotune.choose(paced), timing
