"""What a run did, in words: "loss fell from 2.1 to 0.6; answers now open with 'Short answer:' on
5 of 5 probes".

Reads metrics.jsonl and probes.json through `studio.rundir` and nothing else; the shared opening of
the training answers is found by `answer_opening` (the trainer records it in probes.json, so this
module never loads the dataset). `word_diff` says which words of a probe answer changed. Knows
nothing about models, TRL or the UI: the Runs tab renders what it returns.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from studio import rundir

OPENING_SHARE = 0.6  # an opening counts when at least this share of the training answers start with it
OPENING_MIN_ANSWERS = 3
OPENING_MAX_WORDS = 6
FLAT = 0.05  # a loss that moved less than 5% "stayed" where it was


@dataclass
class Outcome:
    """The facts behind the sentence, so a screen or a test can use them directly."""

    loss_start: float | None = None
    loss_end: float | None = None
    eval_start: float | None = None
    eval_end: float | None = None
    accuracy: float | None = None  # rewards/accuracies at the end (preference methods)
    opening: str = ""  # how most training answers start ("" when they share no opening)
    probes: int = 0
    opened_before: int = 0
    opened_after: int = 0
    changed: int = 0  # probe answers whose text differs after training
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "; ".join(self.parts)


def answer_opening(answers: list[str]) -> str:
    """The longest opening (up to 6 words) that most answers share, or "" when there is none.

    >>> answer_opening(["Short answer: 4.", "Short answer: Paris.", "Short answer: Jupiter."])
    'Short answer:'
    >>> answer_opening(["Paris.", "Four.", "The sun."])
    ''
    """
    firsts = [a.split()[:OPENING_MAX_WORDS] for a in answers if a and a.strip()]
    if len(firsts) < OPENING_MIN_ANSWERS:
        return ""
    need = OPENING_SHARE * len(firsts)
    best: list[str] = []
    for n in range(1, OPENING_MAX_WORDS + 1):
        counts: dict[tuple[str, ...], int] = {}
        for words in firsts:
            if len(words) >= n:
                counts[tuple(words[:n])] = counts.get(tuple(words[:n]), 0) + 1
        common = [k for k, c in counts.items() if c >= need]
        if not common:
            break
        best = list(common[0])
    opening = " ".join(best)
    # a lone short word ("The", "I") is how sentences start, not a style the data teaches
    return opening if len(opening) >= 4 and re.search(r"[A-Za-z0-9]", opening) else ""


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _ends(rows: list[dict], key: str) -> tuple[float | None, float | None]:
    """The first and last value of a metric, each averaged over up to 3 points (one step is noisy)."""
    values = [float(r[key]) for r in rows if isinstance(r.get(key), int | float)]
    if not values:
        return None, None
    k = max(1, min(3, len(values) // 3))
    return _mean(values[:k]), _mean(values[-k:])


def _num(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.2g}"


def _movement(name: str, start: float, end: float) -> str:
    if abs(end - start) <= FLAT * max(abs(start), 1e-9):
        return f"{name} stayed near {_num(start)}"
    verb = "fell" if end < start else "rose"
    return f"{name} {verb} from {_num(start)} to {_num(end)}"


def _opens(answer: str, opening: str) -> bool:
    return answer.strip().startswith(opening)


def describe(metrics: list[dict], probes: dict) -> Outcome:
    """The outcome of a run from its metrics rows and its probes.json record."""
    out = Outcome()
    out.loss_start, out.loss_end = _ends(metrics, "loss")
    out.eval_start, out.eval_end = _ends([r for r in metrics if "eval_loss" in r], "eval_loss")
    accuracies = [
        r["rewards/accuracies"] for r in metrics if isinstance(r.get("rewards/accuracies"), int | float)
    ]
    out.accuracy = float(accuracies[-1]) if accuracies else None
    if out.loss_start is not None:
        out.parts.append(_movement("loss", out.loss_start, out.loss_end))
    else:
        out.parts.append("no loss logged yet")
    evals = [r for r in metrics if isinstance(r.get("eval_loss"), int | float)]
    if len(evals) >= 2:
        out.parts.append(_movement("held-out loss", out.eval_start, out.eval_end))
    elif evals:
        out.parts.append(f"held-out loss ended at {_num(out.eval_end)}")
    if out.accuracy is not None:
        out.parts.append(f"the chosen answer scored higher on {out.accuracy:.0%} of the last pairs")
    _describe_probes(out, probes)
    return out


def _describe_probes(out: Outcome, probes: dict) -> None:
    prompts = probes.get("prompts") or []
    before, after = probes.get("before") or [], probes.get("after") or []
    if not prompts or len(after) < len(prompts):
        return  # no probes, or not answered after training yet
    before = list(before) + [""] * (len(prompts) - len(before))
    out.probes = len(prompts)
    out.changed = sum(1 for b, a in zip(before, after, strict=False) if b.strip() != a.strip())
    out.opening = str(probes.get("opening") or "")
    if out.opening:
        out.opened_before = sum(_opens(b, out.opening) for b in before)
        out.opened_after = sum(_opens(a, out.opening) for a in after)
        was = f" ({out.opened_before} before)" if out.opened_before else ""
        if out.opened_after:
            out.parts.append(
                f"answers now open with '{out.opening}' on {out.opened_after} of {out.probes} probes{was}"
            )
        else:
            out.parts.append(f"no probe answer opens with '{out.opening}' yet, as the training answers do")
        return
    out.parts.append(f"{out.changed} of {out.probes} probe answers changed")


def summarize(run_dir: Path) -> Outcome:
    """`describe` for a run folder (metrics.jsonl and probes.json)."""
    return describe(rundir.read_metrics(run_dir), rundir.read_probes(run_dir))


def word_diff(before: str, after: str) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    """Both texts as (piece, changed) runs of words: what left `before`, what is new in `after`.

    >>> word_diff("It is Paris.", "Short answer: Paris.")[1]
    [('Short answer:', True), (' ', False), ('Paris.', False)]
    """
    old, new = before.split(), after.split()
    left: list[tuple[str, bool]] = []
    right: list[tuple[str, bool]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        _add(left, " ".join(old[i1:i2]), op != "equal")
        _add(right, " ".join(new[j1:j2]), op != "equal")
    return left, right


def _add(runs: list[tuple[str, bool]], text: str, changed: bool) -> None:
    if not text:
        return
    if runs:
        runs.append((" ", False))
    runs.append((text, changed))
