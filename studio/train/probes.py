"""Which questions a run's probes ask, and how the training answers open.

The shipped recipes probe with generic starter questions. A run that keeps them and holds rows out
of training (`data.eval_split`) asks up to `HELDOUT_PROBES` questions from those held-out rows
instead, so the probes are the user's kind of question; any other `probes.prompts` are asked as
given. The held-out rows are the trainer's own: the records shuffled with the recipe's seed, the
first `data.eval_split` fraction. Knows nothing about models or TRL (train/run.py answers the
questions) nor about the UI.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from studio.train import outcome
from studio.train.recipes import Recipe
from studio.train.tokenized import load_records

STARTER_PROBES = ("Give three tips for staying healthy.", "What is the capital of France?")
HELDOUT_PROBES = 3
OPENING_SAMPLE = 500  # training answers looked at for a shared opening


@dataclass(frozen=True)
class ProbePlan:
    prompts: list[str]
    opening: str = ""  # how most training answers start ("" when they share no opening)


def keeps_starters(prompts: list[str]) -> bool:
    """Whether a recipe's probe questions are (some of) the shipped starter questions."""
    return bool(prompts) and set(prompts) <= set(STARTER_PROBES)


def _content(message: dict) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


def question(record: dict) -> str:
    """The single user question of a one-turn record ("" for a longer conversation)."""
    if "messages" in record:
        messages = record["messages"]
        last = max((k for k, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
        prompt = messages[:last]
    else:
        prompt = record.get("prompt") or []
    users = [m for m in prompt if m.get("role") == "user"]
    return _content(users[0]).strip() if len(users) == 1 and prompt[-1].get("role") == "user" else ""


def reference(record: dict) -> str:
    """The answer a record teaches: the last assistant turn, the chosen one, or a good completion."""
    if "messages" in record:
        answers = [m for m in record["messages"] if m.get("role") == "assistant"]
    elif "chosen" in record:
        answers = record["chosen"]
    else:
        answers = record.get("completion") if record.get("label") else []
    return _content(answers[-1]) if answers else ""


def heldout(recipe: Recipe, records: list[dict]) -> list[dict]:
    """The records the trainer holds out of training (empty when data.eval_split is 0)."""
    if recipe.data.eval_split <= 0:
        return []
    shuffled = list(records)
    random.Random(recipe.training.seed).shuffle(shuffled)
    return shuffled[: max(1, int(len(shuffled) * recipe.data.eval_split))]


def plan(recipe: Recipe, records: list[dict] | None = None) -> ProbePlan:
    """The probe questions of a run and the opening its training answers share."""
    prompts = list(recipe.probes.prompts)
    if not prompts:
        return ProbePlan([])
    records = load_records(recipe) if records is None else records
    held = heldout(recipe, records)
    if keeps_starters(prompts) and held:
        asked = [q for q in dict.fromkeys(question(r) for r in held) if q][:HELDOUT_PROBES]
        prompts = asked or prompts
    held_ids = {id(r) for r in held}
    answers = [reference(r) for r in records if id(r) not in held_ids][:OPENING_SAMPLE]
    return ProbePlan(prompts, outcome.answer_opening(answers))
