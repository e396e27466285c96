"""The quality report of the stored votes: how many make training pairs, and the biases that
would teach the tuned model the wrong thing (the answer shown first winning, the longer answer
winning), with wins per pair of models.

Knows nothing about SQLite (votes come from studio.prefs.store), chat or the UI.
"""

from __future__ import annotations

from dataclasses import dataclass

from studio.prefs import records, store
from studio.prefs.store import Vote


@dataclass(frozen=True)
class ModelPairStats:
    model_a: str  # the two models' labels, in sorted order
    model_b: str
    a_wins: int
    b_wins: int
    ties: int
    both_bad: int

    @property
    def a_win_rate(self) -> float | None:
        decisive = self.a_wins + self.b_wins
        return self.a_wins / decisive if decisive else None


@dataclass(frozen=True)
class QualityReport:
    total: int
    decisive: int  # votes for answer A or answer B
    ties: int
    both_bad: int
    edited: int
    usable_pairs: int  # rows export_dpo writes (repeats counted once)
    ties_left_out: int  # ties without an edit: no pair
    both_bad_left_out: int  # both_bad without an edit: no pair (KTO negatives only)
    identical_pairs: int  # chosen == rejected: left out of the exports
    shown_first_wins: int  # decisive votes won by the answer the screen showed first (on the left)
    position_bias: float | None  # shown_first_wins / decisive
    length_votes: int  # decisive votes whose two answers differ in length
    longer_wins: int
    length_bias: float | None  # longer_wins / length_votes
    model_pairs: list[ModelPairStats]

    def notes(self) -> list[str]:
        """Plain-language warnings for the Votes tab."""
        notes = []
        if self.position_bias is not None and self.decisive >= 10 and abs(self.position_bias - 0.5) > 0.2:
            notes.append(
                f"the answer shown first (on the left) won {self.shown_first_wins} of {self.decisive} "
                "votes: turn on blind mode so the sides are shuffled"
            )
        if self.length_bias is not None and self.length_votes >= 10 and self.length_bias > 0.75:
            notes.append(
                f"the longer answer won {self.longer_wins} of {self.length_votes} votes: "
                "the tuned model may learn to ramble rather than to be right"
            )
        if self.identical_pairs:
            notes.append(f"{self.identical_pairs} pairs had the same chosen and rejected text: left out")
        return notes


def model_label(model: str, adapter: str) -> str:
    """How a model shows in the report: the spec, plus the adapter when there is one.

    >>> model_label("default", "runs/r1/adapter")
    'default + runs/r1/adapter'
    """
    model = model or "(unknown model)"
    return f"{model} + {adapter}" if adapter else model


def _model_pairs(votes: list[Vote]) -> list[ModelPairStats]:
    tally: dict[tuple[str, str], list[int]] = {}
    for vote in votes:
        labels = {
            "A": model_label(vote.model_a, vote.adapter_a),
            "B": model_label(vote.model_b, vote.adapter_b),
        }
        key = tuple(sorted(labels.values()))
        counts = tally.setdefault(key, [0, 0, 0, 0])
        if vote.winner is not None:
            counts[0 if labels[vote.winner] == key[0] else 1] += 1
        else:
            counts[2 if vote.verdict == "tie" else 3] += 1
    return [ModelPairStats(a, b, *counts) for (a, b), counts in sorted(tally.items())]


def _length_tally(decisive: list[Vote]) -> tuple[int, int]:
    """(votes whose answers differ in length, of those won by the longer answer)."""
    length_votes = longer_wins = 0
    for vote in decisive:
        winner = vote.answer(vote.winner).strip()
        loser = vote.answer("B" if vote.winner == "A" else "A").strip()
        if len(winner) != len(loser):
            length_votes += 1
            longer_wins += len(winner) > len(loser)
    return length_votes, longer_wins


def quality_report(votes: list[Vote] | None = None) -> QualityReport:
    """Counts and biases of the stored votes, or of `votes` (e.g. one annotator's)."""
    votes = store.all_votes() if votes is None else votes
    decisive = [v for v in votes if v.winner is not None]
    first_wins = sum(v.winner == v.shown_first for v in decisive)
    length_votes, longer_wins = _length_tally(decisive)
    return QualityReport(
        total=len(votes),
        decisive=len(decisive),
        ties=sum(v.verdict == "tie" for v in votes),
        both_bad=sum(v.verdict == "both_bad" for v in votes),
        edited=sum(v.edited is not None for v in votes),
        usable_pairs=len(records.dpo_records(votes)),
        ties_left_out=sum(v.verdict == "tie" and not v.edited for v in votes),
        both_bad_left_out=sum(v.verdict == "both_bad" and not v.edited for v in votes),
        identical_pairs=sum(c.strip() == r.strip() for v in votes for c, r in records.candidate_pairs(v)),
        shown_first_wins=first_wins,
        position_bias=first_wins / len(decisive) if decisive else None,
        length_votes=length_votes,
        longer_wins=longer_wins,
        length_bias=longer_wins / length_votes if length_votes else None,
        model_pairs=_model_pairs(votes),
    )
