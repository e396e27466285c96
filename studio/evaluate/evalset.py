"""The prompts an evaluation asks: a run's held-out split, a saved dataset or file, or typed prompts.

Each item carries the conversation the models answer (ending with the user's turn), the reference
answer when the data has one, and the SFT record whose trained tokens the reference likelihood
scores. The held-out split is the trainer's own: the same records (`train.tokenized.load_records`),
shuffled with the recipe's seed, the first `data.eval_split` fraction held out. Knows nothing about
models, the eval folder or the UI.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

HELDOUT = "heldout"
PROMPTS = "prompts"


@dataclass
class EvalItem:
    i: int
    prompt: str  # the last user message, as the results table shows it
    messages: list[dict]  # what the models answer; ends with the user's turn
    reference: str | None = None
    record: dict | None = None  # {"messages": [...]} with the reference: scored like training

    def as_dict(self) -> dict:
        return asdict(self)


def _content(message: dict) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else str(content or "")


def _item(i: int, prompt: list[dict], answer: list[dict] | None) -> EvalItem | None:
    users = [m for m in prompt if m.get("role") == "user"]
    if not users or prompt[-1].get("role") != "user":
        return None
    reference = _content(answer[-1]) if answer else None
    record = {"messages": [*prompt, *answer]} if answer else None
    return EvalItem(i, _content(users[-1]), list(prompt), reference, record)


def items_from_records(records: list[dict]) -> list[EvalItem]:
    """Eval items from canonical records (SFT, preference or KTO)."""
    items: list[EvalItem] = []
    for record in records:
        if "messages" in record:
            messages = record["messages"]
            last = max((k for k, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
            if last is None:
                item = _item(len(items), messages, None)
            else:
                # the reference is the final answer; earlier answers stay in the prompt and, like
                # training, in the scored record
                item = _item(len(items), messages[:last], [messages[last]])
                if item is not None:
                    item.record = {"messages": messages[: last + 1]}
        elif "chosen" in record:
            item = _item(len(items), record["prompt"], record["chosen"])
        else:
            item = _item(len(items), record["prompt"], record["completion"] if record.get("label") else None)
        if item is not None:
            items.append(item)
    return items


def from_prompts(prompts: list[str]) -> list[EvalItem]:
    """Typed prompts (no references): one user turn each, blank lines skipped."""
    texts = [p.strip() for p in prompts if p.strip()]
    return [EvalItem(i, text, [{"role": "user", "content": text}]) for i, text in enumerate(texts)]


def from_dataset(spec: str) -> list[EvalItem]:
    """A saved dataset name, a 'sample:' file or a data file path (.txt: one prompt a line)."""
    from studio.data import check, store

    path = store.resolve(spec)
    if path.suffix == ".txt":
        return from_prompts(path.read_text(encoding="utf-8").splitlines())
    report = check.load(path)
    if not report.records:
        problems = "; ".join(str(p) for p in report.problems[:3])
        raise ValueError(f"{path}: no usable rows to evaluate on ({problems}); check it in the Data tab")
    return items_from_records(report.records)


def run_recipe(run_dir: Path):
    """The run's resolved recipe (recipe.yaml, read through the run-folder contract), validated."""
    from studio import rundir
    from studio.train import recipes

    data = rundir.read_recipe(run_dir)
    if not data:
        raise ValueError(
            f"{Path(run_dir) / 'recipe.yaml'} is missing or unreadable: evaluate a run the studio trained"
        )
    return recipes.from_dict(data, source=str(Path(run_dir) / "recipe.yaml"))


def heldout(run_dir: Path) -> list[EvalItem]:
    """The rows the run held out of training (`data.eval_split`), split exactly as the trainer did.

    (For SFT the trainer splits after dropping rows whose answer was cut off entirely by
    `data.max_length`; with such rows the two splits can differ by those rows.)
    """
    from studio.train.tokenized import load_records

    recipe = run_recipe(run_dir)
    fraction = recipe.data.eval_split
    if fraction <= 0:
        raise ValueError(
            f"{Path(run_dir).name} held no rows out of training (data.eval_split is 0): evaluate it on a "
            "saved dataset or typed prompts, or train with data.eval_split=0.1"
        )
    records = load_records(recipe)
    random.Random(recipe.training.seed).shuffle(records)
    n_eval = max(1, int(len(records) * fraction))
    return items_from_records(records[:n_eval])


def build(run_dir: Path, eval_set: str, prompts: list[str], limit: int) -> list[EvalItem]:
    """The items of an eval set spec, at most `limit` of them, numbered from 0."""
    if eval_set == HELDOUT:
        items = heldout(run_dir)
    elif eval_set == PROMPTS:
        items = from_prompts(prompts)
    else:
        items = from_dataset(eval_set)
    if not items:
        raise ValueError(f"eval set {eval_set!r} has no prompt ending with a user turn to ask")
    items = items[:limit]
    for i, item in enumerate(items):
        item.i = i
    return items
