"""The guided path's automatic choices on a table of cases (model size, memory, data size,
lengths, goal, budget), each checked for its value and its plain reason; and `python -m studio
tune` printing them for real data and the real default model."""

from __future__ import annotations

import subprocess
import sys

import pytest

from studio.train import autotune
from studio.train.autotune import Facts
from tests.conftest import ROOT

GB = 1e9


def _values(plan: autotune.Plan) -> dict:
    return {c.field: c.value for c in plan.choices if c.field}


def _reason(plan: autotune.Plan, field: str) -> str:
    return next(c.reason for c in plan.choices if c.field == field)


CASES = [  # facts, expected values, words the 4-bit reason must hold
    (
        Facts(135e6, 16 * GB, "cpu", 42, 91),
        {
            "quantization.load_in_4bit": False,
            "lora.r": 16,
            "training.learning_rate": 1e-3,
            "data.max_length": 128,
            "training.max_steps": 24,
            "data.eval_split": 0.1,
        },
        "only save memory",
    ),
    (  # the full estimate decides when the plan has one: 16-bit weights (16 GB) fit in half of 40 GB,
        # but training them does not fit in 80% of it
        Facts(8e9, 40 * GB, "cuda", 2000, 700, need_bytes=(36 * GB, 12 * GB)),
        {"quantization.load_in_4bit": True},
        "16-bit needs about 36 GB, too much for your GPU's 40 GB free memory; in 4-bit about 12 GB",
    ),
    (
        Facts(135e6, 24 * GB, "cpu", 42, 91, need_bytes=(1.9 * GB, 1.6 * GB)),
        {"quantization.load_in_4bit": False},
        "16-bit needs about 1.9 GB of this computer's 24 GB free memory",
    ),
    (
        Facts(70e9, 24 * GB, "cuda", 2000, 700, need_bytes=(160 * GB, 48 * GB)),
        {"quantization.load_in_4bit": True},
        "in 4-bit about 48 GB: even so it may not fit, so a smaller model is safer",
    ),
    (
        Facts(8e9, 8 * GB, "cuda", 2000, 700),
        {
            "quantization.load_in_4bit": True,
            "lora.r": 16,
            "training.learning_rate": 2e-4,
            "data.max_length": 704,
            "training.batch_size": 5,
            "training.grad_accum": 3,
        },
        "too small for this 8.0B model",
    ),
    (
        Facts(1.5e9, 24 * GB, "cuda", 20_000, 3000),
        {
            "quantization.load_in_4bit": False,
            "lora.r": 32,
            "lora.alpha": 64,
            "data.max_length": 2048,
            "training.batch_size": 2,
            "training.grad_accum": 8,
        },
        "fits your GPU's 24 GB",
    ),
    (
        Facts(7e9, 80 * GB, "cuda", 100_000, 300, goal="prefer", budget="thorough"),
        {"quantization.load_in_4bit": False, "lora.r": 64, "training.learning_rate": 5e-6},
        "fits your GPU's 80 GB",
    ),
    (
        Facts(135e6, 4 * GB, "cpu", 12, 40, goal="thumbs"),
        {
            "data.eval_split": 0.0,
            "training.batch_size": 2,
            "data.max_length": 64,
            "training.learning_rate": 5e-5,
            "training.max_steps": 18,
        },
        "fits this computer's 4.0 GB",
    ),
]


@pytest.mark.parametrize(("facts", "expected", "why_4bit"), CASES)
def test_choices_and_their_reasons(facts, expected, why_4bit):
    plan = autotune.choose(facts)
    values = _values(plan)
    for field, value in expected.items():
        assert values[field] == value, (field, values[field])
    assert why_4bit in _reason(plan, "quantization.load_in_4bit")
    assert plan.recipe == autotune.GOALS[facts.goal][1] and plan.method == autotune.GOALS[facts.goal][0]
    assert all(c.reason and c.label for c in plan.choices)  # every choice says why, in words
    assert f"{facts.rows}" in _reason(plan, "lora.r")
    assert str(plan.steps) in _reason(plan, "training.max_steps")
    assert f"training.max_steps={plan.steps}" in plan.sets()


def test_a_timed_warm_up_caps_the_steps_at_the_budget():
    slow = Facts(135e6, 16 * GB, "cpu", 4000, 100, step_seconds=2.0)  # quick: 5 min -> 150 steps
    plan = autotune.choose(slow)
    assert plan.steps == 150 and plan.seconds == 300.0
    assert "fit the quick budget" in _reason(plan, "training.max_steps")
    assert autotune.choose(Facts(135e6, 16 * GB, "cpu", 4000, 100)).steps > 150  # untimed: 3 passes


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"goal": "vibes"}, "goal 'vibes' must be one of"),
        ({"budget": "x"}, "budget"),
        ({"rows": 0}, "no rows"),
    ],
)
def test_bad_facts_are_refused_with_the_fix(change, message):
    base = {"n_params": 135e6, "memory_bytes": GB, "device": "cpu", "rows": 10, "p95_tokens": 50}
    with pytest.raises(ValueError, match=message):
        autotune.choose(Facts(**{**base, **change}))


def test_tune_command_prints_each_choice_for_the_sample_data(default_model):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "studio",
            "tune",
            "sample:alpaca.jsonl",
            "--model",
            default_model,
            "--dry-run",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Recipe: recipes/lora_sft.yaml (SFT)" in proc.stdout
    assert "[lora.r=16]" in proc.stdout and "[training.learning_rate=0.001]" in proc.stdout
    assert "95% of your examples are" in proc.stdout
    # the 4-bit choice is judged by the run's full memory estimate, not the weights alone
    assert "training the 135M model in 16-bit needs about" in proc.stdout


def test_tune_command_names_a_missing_dataset():
    proc = subprocess.run(
        [sys.executable, "-m", "studio", "tune", "no-such-data", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "dataset 'no-such-data' not found" in proc.stderr
