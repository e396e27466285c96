"""Two short training runs that should learn alike: the recipe settings for 20 quick LoRA steps on
the tiny model, and the check that two loss curves stay within noise of each other."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "near",
    "paris",
    "by",
    "the",
    "sea",
]


def write_rows(path: Path) -> Path:
    """24 short instruction rows whose answers repeat, so 20 steps visibly lower the loss."""
    rows = [
        {"instruction": " ".join(WORDS[i % 5 : i % 5 + 4]), "output": " ".join(WORDS[i % 7 :])}
        for i in range(24)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def twenty_steps(model: Path, dataset: Path, *extra: str) -> list[str]:
    """`--set` items for 20 LoRA steps at a learning rate high enough to see the loss fall."""
    return [
        f"model={model}",
        f"dataset={dataset}",
        "data.max_length=64",
        "data.eval_split=0",
        "probes.prompts=[]",
        "batch_size=4",
        "max_steps=20",
        "learning_rate=0.01",
        "save_steps=1000",
        *extra,
    ]


def losses(trainer) -> list[float]:
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def assert_within_noise(ours: list[float], reference: list[float]) -> None:
    """Both runs logged 20 losses, the reference learned, and the curves stay close step by step."""
    assert len(ours) == len(reference) == 20
    drop = reference[0] - min(reference)
    assert drop > 0.2, reference  # the runs learn, so the curves can tell a broken one apart
    gaps = [abs(a - b) for a, b in zip(ours, reference, strict=True)]
    assert sum(gaps) / len(gaps) < 0.1 * drop and max(gaps) < 0.25 * drop, (ours, reference)
