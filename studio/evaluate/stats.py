"""The statistics of an evaluation: win rate with its Wilson interval, Cohen's kappa, and the rule
that turns a judge's two verdicts (A shown first, then B shown first) into one outcome.

Outcomes are always named from the models' side: "A" (the first model, usually the base), "B"
(the second, usually the tuned adapter) or "tie". Knows nothing about models, files or the UI.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

OUTCOMES = ("A", "tie", "B")
Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion successes/n (95% by default); (0, 1) when n is 0.

    >>> [round(x, 4) for x in wilson(8, 10)]
    [0.4902, 0.9433]
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def both_orders(first: str, second: str) -> str:
    """One outcome from the verdicts of the two orders (each "A", "B" or "tie", in model terms).

    A model wins only when both orders prefer it; a split verdict (the judge followed the
    position, not the answer) or a tie in either order is a tie. This cancels position bias.

    >>> both_orders("B", "B"), both_orders("A", "B"), both_orders("B", "tie")
    ('B', 'tie', 'tie')
    """
    for verdict in (first, second):
        if verdict not in OUTCOMES:
            raise ValueError(f"verdict {verdict!r} must be one of {', '.join(OUTCOMES)}")
    return first if first == second else "tie"


@dataclass(frozen=True)
class WinRate:
    """B's record against A: wins, ties, losses, and the win rate (a tie counts half) with its 95%
    Wilson interval."""

    wins: int
    ties: int
    losses: int

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def rate(self) -> float | None:
        return (self.wins + 0.5 * self.ties) / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.wins + 0.5 * self.ties, self.n) if self.n else None

    def as_dict(self) -> dict:
        low, high = self.interval or (None, None)
        return {
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
            "n": self.n,
            "win_rate": self.rate,
            "low": low,
            "high": high,
        }

    def text(self) -> str:
        """'0.62 [0.51, 0.72], n=80 (45 wins, 10 ties, 25 losses)'; 'no verdicts' when n is 0."""
        if not self.n:
            return "no verdicts"
        low, high = self.interval
        return (
            f"{self.rate:.2f} [{low:.2f}, {high:.2f}], n={self.n} "
            f"({self.wins} wins, {self.ties} ties, {self.losses} losses)"
        )


def win_rate(outcomes: list[str]) -> WinRate:
    """B's win rate over A from outcomes "A" / "tie" / "B"."""
    counts = Counter(outcomes)
    unknown = set(counts) - set(OUTCOMES)
    if unknown:
        raise ValueError(f"outcomes {sorted(unknown)} are not among {', '.join(OUTCOMES)}")
    return WinRate(wins=counts["B"], ties=counts["tie"], losses=counts["A"])


@dataclass(frozen=True)
class Agreement:
    n: int
    percent: float | None  # share of prompts where both gave the same outcome, 0-100
    kappa: float | None  # Cohen's kappa: agreement beyond what chance would give


def cohen_kappa(first: list[str], second: list[str]) -> Agreement:
    """Agreement of two raters over the same items (e.g. the judge and the humans).

    kappa = (p_observed - p_chance) / (1 - p_chance); None when chance agreement is already 1
    (both raters always said the same single label: kappa is undefined there).

    >>> a = cohen_kappa(["A", "A", "B", "B"], ["A", "B", "B", "B"])
    >>> a.percent, a.kappa
    (75.0, 0.5)
    """
    if len(first) != len(second):
        raise ValueError(f"agreement needs paired ratings: {len(first)} vs {len(second)}")
    n = len(first)
    if n == 0:
        return Agreement(0, None, None)
    observed = sum(x == y for x, y in zip(first, second, strict=True)) / n
    count_1, count_2 = Counter(first), Counter(second)
    chance = sum(count_1[label] * count_2[label] for label in count_1) / (n * n)
    kappa = None if chance >= 1 else (observed - chance) / (1 - chance)
    return Agreement(n, 100 * observed, kappa)
