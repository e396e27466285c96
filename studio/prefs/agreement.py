"""How much the annotators agree on the pairs several of them rated, and the majority verdict of
each pair.

Labels are verdicts by column ("A", "B", "tie", "both_bad"; "up"/"down" in thumbs mode), so blind
shuffling plays no part. Each annotator counts once per pair: their newest vote on it.

- percent agreement: over every pair rated by 2+ people, the share of rater pairs that agree
  (for two raters: the share of pairs with the same verdict);
- Cohen's kappa (two raters): (p_o - p_e) / (1 - p_e), p_e from each rater's own label shares;
- Fleiss' kappa (any number): Fleiss (1971); with a different number of raters per pair each
  pair's agreement uses its own count, which is Fleiss' formula when the count is constant;
- majority: the verdict more people gave than any other; a pair whose top verdicts tie is
  dropped, and the number dropped is reported.

Knows nothing about SQLite (votes come in as a list), the queue or the UI.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import combinations

from studio.prefs.store import Vote


def latest_by_rater(votes: list[Vote]) -> dict[str, dict[str, Vote]]:
    """pair_id -> annotator -> that annotator's newest vote on it (votes oldest first)."""
    table: dict[str, dict[str, Vote]] = {}
    for vote in votes:
        if vote.pair_id:
            table.setdefault(vote.pair_id, {})[vote.annotator] = vote
    return table


def percent_agreement(items: list[list[str]]) -> float | None:
    """Share of agreeing rater pairs over items (each a list of labels, one per rater).

    >>> percent_agreement([["A", "A"], ["A", "B"]])
    0.5
    """
    agree = total = 0
    for labels in items:
        for x, y in combinations(labels, 2):
            agree += x == y
            total += 1
    return agree / total if total else None


def cohen_kappa(first: list[str], second: list[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items (None: nothing to compare).

    >>> cohen_kappa(["A", "A", "B", "B"], ["A", "A", "B", "A"])
    0.5
    """
    if len(first) != len(second):
        raise ValueError(f"cohen_kappa: {len(first)} labels against {len(second)}: rate the same items")
    n = len(first)
    if not n:
        return None
    observed = sum(x == y for x, y in zip(first, second, strict=True)) / n
    c1, c2 = Counter(first), Counter(second)
    expected = sum(c1[label] * c2[label] for label in c1) / (n * n)
    if expected == 1:
        return 1.0 if observed == 1 else None  # one label only: kappa is undefined
    return (observed - expected) / (1 - expected)


def fleiss_kappa(counts: list[list[int]]) -> float | None:
    """Fleiss' kappa from a table: one row per item, one column per label, cells = raters.

    Rows may have different totals (at least 2 raters each are used)."""
    rows = [row for row in counts if sum(row) >= 2]
    if not rows:
        return None
    totals = [sum(row) for row in rows]
    grand = sum(totals)
    shares = [sum(row[j] for row in rows) / grand for j in range(len(rows[0]))]
    per_item = [sum(c * (c - 1) for c in row) / (n * (n - 1)) for row, n in zip(rows, totals, strict=True)]
    observed = sum(per_item) / len(rows)
    expected = sum(p * p for p in shares)
    if expected == 1:
        return 1.0 if observed == 1 else None
    return (observed - expected) / (1 - expected)


@dataclass(frozen=True)
class Agreement:
    pairs: int  # pairs rated by 2+ annotators
    raters: list[str]
    percent: float | None
    cohen: float | None  # only when exactly two annotators rated shared pairs
    fleiss: float | None


def agreement(votes: list[Vote]) -> Agreement:
    """Agreement on the generated pairs that two or more annotators rated."""
    shared = {pid: by for pid, by in latest_by_rater(votes).items() if len(by) >= 2}
    items = [[v.verdict for v in by.values()] for by in shared.values()]
    raters = sorted({name for by in shared.values() for name in by})
    labels = sorted({label for item in items for label in item})
    table = [[item.count(label) for label in labels] for item in items]
    cohen = None
    if len(raters) == 2:
        first, second = raters
        cohen = cohen_kappa(
            [by[first].verdict for by in shared.values()], [by[second].verdict for by in shared.values()]
        )
    return Agreement(len(shared), raters, percent_agreement(items), cohen, fleiss_kappa(table))


@dataclass(frozen=True)
class Majority:
    votes: list[Vote]  # one vote per resolved pair (carrying the majority verdict), chat votes as they are
    resolved: int
    dropped_ties: int  # pairs whose top verdicts had equal counts


def majority(votes: list[Vote]) -> Majority:
    """Resolve each generated pair by majority; chat votes (no pair id) pass through unchanged.

    The vote kept for a pair is the first majority vote with an edit, else the first one."""
    kept = [v for v in votes if not v.pair_id]
    resolved = dropped = 0
    for by in latest_by_rater(votes).values():
        ranked = Counter(v.verdict for v in by.values()).most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            dropped += 1
            continue
        winners = [v for v in by.values() if v.verdict == ranked[0][0]]
        kept.append(next((v for v in winners if v.edited), winners[0]))
        resolved += 1
    return Majority(sorted(kept, key=lambda v: v.id), resolved, dropped)


def by_annotator(votes: list[Vote]) -> dict[str, list[Vote]]:
    """Votes grouped by who cast them ('' = no login), names sorted."""
    groups: dict[str, list[Vote]] = {}
    for vote in votes:
        groups.setdefault(vote.annotator, []).append(vote)
    return dict(sorted(groups.items()))


def summary_lines(votes: list[Vote]) -> list[str]:
    """Plain-language agreement lines for the report (the Votes tab and `votes report`)."""
    found = agreement(votes)
    if not found.pairs:
        return ["agreement: no pair was rated by two or more people yet"]
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    return [
        f"agreement on {found.pairs} pairs rated by several people ({', '.join(found.raters)}): "
        f"percent {fmt(found.percent)}, Cohen's kappa {fmt(found.cohen)}, Fleiss' kappa {fmt(found.fleiss)}"
    ]
