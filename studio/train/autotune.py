"""The guided path's automatic choices: from the model's size, the machine, the data's size and
token lengths, the goal and the time budget to a recipe, each choice with a one-line reason a
non-programmer can read.

A pure function of plain facts: it loads no model, reads no file and imports no torch, so the
`python -m studio tune` command and the Train tab's guided view call the same `choose()` and a
table of cases tests it. It must not know about Gradio, argparse or run folders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GOALS = {  # plain goal -> (method, recipe file)
    "style": ("sft", "recipes/lora_sft.yaml"),
    "prefer": ("dpo", "recipes/dpo.yaml"),
    "thumbs": ("kto", "recipes/kto.yaml"),
}
GOAL_WORDS = {
    "style": "teach answers in my style and format",
    "prefer": "prefer the chosen answers over the rejected ones",
    "thumbs": "learn from thumbs up / thumbs down",
}
BUDGETS = {"quick": 5 * 60, "balanced": 20 * 60, "thorough": 60 * 60}  # seconds of training
EPOCHS = {"quick": 3, "balanced": 5, "thorough": 8}  # passes wanted, if the time allows


@dataclass(frozen=True)
class Facts:
    """What the choices depend on, measured before the run."""

    n_params: int  # model parameters
    memory_bytes: float  # free memory of the training device
    device: str  # "cuda" | "cpu"
    rows: int  # training examples
    p95_tokens: int  # 95th percentile of an example's length in tokens
    goal: str = "style"
    budget: str = "quick"
    step_seconds: float | None = None  # measured by a warm-up; None: not measured yet
    overhead_seconds: float = 0.0  # measured too: loading and the test questions, once per run
    # Estimated peak memory of this plan's training in 16-bit and in 4-bit (studio.train.memory, from
    # the model's config and the chosen batch and length); None: judged from the weights alone.
    need_bytes: tuple[float, float] | None = None


@dataclass(frozen=True)
class Choice:
    label: str  # plain words
    field: str  # recipe field (the technical name, shown as a hint)
    value: object
    reason: str


@dataclass
class Plan:
    method: str
    recipe: str  # recipe file under recipes/
    choices: list[Choice] = field(default_factory=list)
    steps: int = 0
    seconds: float | None = None  # expected training time, when a step was timed

    def sets(self) -> list[str]:
        """The choices as `--set key=value` overrides of the recipe file."""
        return [f"{c.field}={_yaml(c.value)}" for c in self.choices if c.field]


def _yaml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n < 10e9 else f"{n / 1e9:.0f} GB"


def _size(n_params: int) -> str:
    if n_params >= 1e9:
        return f"{n_params / 1e9:.1f}B"
    return f"{n_params / 1e6:.0f}M" if n_params >= 1e6 else f"{n_params / 1e3:.0f}k-parameter"


def choose(facts: Facts) -> Plan:
    """The recipe for these facts, each choice with its reason."""
    if facts.goal not in GOALS:
        raise ValueError(f"goal {facts.goal!r} must be one of: {', '.join(GOALS)}")
    if facts.budget not in BUDGETS:
        raise ValueError(f"budget {facts.budget!r} must be one of: {', '.join(BUDGETS)}")
    if facts.rows < 1:
        raise ValueError("the dataset has no rows to train on: check it in the Data tab first")
    method, recipe = GOALS[facts.goal]
    plan = Plan(method, recipe)
    plan.choices.append(
        Choice(
            "What it learns", "", method, f"you asked to {GOAL_WORDS[facts.goal]}: that is {method.upper()}"
        )
    )
    plan.choices += [_four_bit(facts), *_rank(facts), _learning_rate(facts, method)]
    plan.choices += _length_and_batch(facts)
    steps, steps_choice = _steps(facts, plan)
    plan.steps = steps
    plan.choices.append(steps_choice)
    plan.choices.append(
        Choice("Check on held-out examples", "data.eval_split", _eval_split(facts), _eval_reason(facts))
    )
    if facts.step_seconds:
        plan.seconds = facts.overhead_seconds + steps * facts.step_seconds
    return plan


def _four_bit(facts: Facts) -> Choice:
    # QLoRA (Dettmers et al. 2023, arXiv:2305.14314): a 4-bit frozen base trains nearly as well as
    # 16-bit LoRA at a quarter of the weight memory, but it rounds the weights and saves no time
    # (on this project's 2-core CPU, one 7-step run each, one after another: a step of the quick plan
    # took 3.8 s in 4-bit, 4.1-4.4 s in 16-bit; GPUs pay for dequantizing). So 4-bit only when 16-bit does not fit comfortably: the
    # full estimate (weights, adapter and optimizer, activations, logits, framework) within 80% of
    # free memory, the memory check's "fits"; without an estimate, 16-bit weights within half of it.
    label, key = "Shrink the model to 4-bit", "quantization.load_in_4bit"
    where = "this computer's" if facts.device == "cpu" else "your GPU's"
    free = f"{where} {_gb(facts.memory_bytes)} free memory"
    if facts.need_bytes:
        need16, need4 = facts.need_bytes
        if need16 <= 0.8 * facts.memory_bytes:
            return Choice(
                label,
                key,
                False,
                f"no: training the {_size(facts.n_params)} model in 16-bit needs about {_gb(need16)} of "
                f"{free}; 4-bit would only save memory, and it rounds the model's weights",
            )
        tail = "" if need4 <= facts.memory_bytes else ": even so it may not fit, so a smaller model is safer"
        return Choice(
            label,
            key,
            True,
            f"yes: training the {_size(facts.n_params)} model in 16-bit needs about {_gb(need16)}, "
            f"too much for {free}; in 4-bit about {_gb(need4)}{tail}",
        )
    weights16 = 2.0 * facts.n_params
    if weights16 < 0.5 * facts.memory_bytes:
        return Choice(
            label,
            key,
            False,
            f"no: the {_size(facts.n_params)} model in 16-bit ({_gb(weights16)} of weights) fits "
            f"{free} with room to train; 4-bit would only save memory",
        )
    return Choice(
        label,
        key,
        True,
        f"yes: {free} is too small for this {_size(facts.n_params)} model in 16-bit "
        f"({_gb(weights16)} of weights)",
    )


def _rank(facts: Facts) -> list[Choice]:
    # LoRA (Hu et al. 2021, arXiv:2106.09685, Table 6): ranks 4-8 already capture most of an
    # adaptation; QLoRA used 64 on every linear layer for large instruction sets. "LoRA Without
    # Regret" (Schulman et al., Thinking Machines 2025): capacity matters only once the data is
    # large, so the rank grows with the data: 16 under 5k examples, 32 under 50k, 64 above.
    # Alpha stays 2 x rank (the LoRA paper's and PEFT examples' habit), so the update's scale
    # alpha/r does not shrink when the rank grows.
    rank = 16 if facts.rows < 5_000 else 32 if facts.rows < 50_000 else 64
    return [
        Choice(
            "How much the adapter can learn",
            "lora.r",
            rank,
            f"{rank}: enough for {facts.rows} examples; more only helps with much more data",
        ),
        Choice("Strength of the adapter", "lora.alpha", 2 * rank, f"{2 * rank}: twice the rank, as usual"),
    ]


def _learning_rate(facts: Facts, method: str) -> Choice:
    # SFT with LoRA: 2e-4 is QLoRA's rate for 7B-13B models (1e-4 for 33B+); "LoRA Without Regret"
    # finds LoRA's best rate ~10x full fine-tuning's and higher for small models, so models under
    # 1B get 1e-3 (measured on the embedded 135M model: the style shows after a few epochs).
    # DPO/KTO: the TRL DPO docs and Zephyr (Tunstall et al. 2023) use 5e-7 full, 5e-6..5e-5 LoRA.
    if method == "sft":
        rate = 1e-3 if facts.n_params < 1e9 else 2e-4 if facts.n_params < 20e9 else 1e-4
        why = (
            "small models take bigger steps" if facts.n_params < 1e9 else "the usual LoRA rate for this size"
        )
    else:
        rate = 5e-5 if facts.n_params < 1e9 else 5e-6
        why = "preference training moves gently from the current answers"
    return Choice("How big each learning step is", "training.learning_rate", rate, f"{rate:g}: {why}")


def _length_and_batch(facts: Facts) -> list[Choice]:
    # Max length: the 95th percentile rounded up to a multiple of 64, so at most 1 in 20 examples
    # is cut (TRL's SFTTrainer truncates at max_length), capped at 2048.
    length = min(2048, max(64, 64 * math.ceil(facts.p95_tokens / 64)))
    # Batch: 16 examples a step is the usual effective batch for LoRA fine-tunes (QLoRA: 16);
    # fewer for a small dataset so one pass still takes several steps; per-device batch shrinks
    # with length so activations stay small, and gradient accumulation makes up the rest.
    effective = max(2, min(16, facts.rows // 8))
    per_device = max(1, min(effective, 4096 // length))
    accum = max(1, effective // per_device)
    return [
        Choice(
            "Longest example kept",
            "data.max_length",
            length,
            f"{length} tokens: 95% of your examples are {facts.p95_tokens} tokens or shorter",
        ),
        Choice(
            "Examples per step",
            "training.batch_size",
            per_device,
            f"{per_device * accum} examples per step"
            + (f" ({per_device} at a time, {accum} times)" if accum > 1 else "")
            + f" suits {facts.rows} examples",
        ),
        Choice("Steps added up per update", "training.grad_accum", accum, "see examples per step"),
    ]


def _steps(facts: Facts, plan: Plan) -> tuple[int, Choice]:
    # Style and format show after a few passes over a small set (LIMA, Zhou et al. 2023: 1k
    # examples, 15 epochs); the budget caps it when a timed warm-up says how long a step takes.
    per_device = next(c.value for c in plan.choices if c.field == "training.batch_size")
    accum = next(c.value for c in plan.choices if c.field == "training.grad_accum")
    train_rows = max(1, facts.rows - _eval_rows(facts))
    per_epoch = max(1, math.ceil(train_rows / (per_device * accum)))
    epochs = EPOCHS[facts.budget]
    steps = per_epoch * epochs
    reason = f"{steps} steps: {epochs} passes over your {train_rows} training examples"
    if facts.step_seconds:
        training_s = max(0.0, BUDGETS[facts.budget] - facts.overhead_seconds)
        fits = max(10, int(training_s / facts.step_seconds))  # the budget wins
        if fits < steps:
            steps = fits
            reason = (
                f"{steps} steps: as many passes as fit the {facts.budget} budget on this machine "
                f"({facts.step_seconds:.2g} s a step, measured)"
            )
    return steps, Choice("Training length", "training.max_steps", steps, reason)


def _eval_rows(facts: Facts) -> int:
    return math.ceil(facts.rows * _eval_split(facts)) if _eval_split(facts) else 0


def _eval_split(facts: Facts) -> float:
    return 0.1 if facts.rows >= 40 else 0.0


def _eval_reason(facts: Facts) -> str:
    if facts.rows >= 40:
        return "10% of the examples are kept aside to check the model on data it has not seen"
    return "none: with fewer than 40 examples every one is needed for training"
