"""Human verdicts for an evaluation: the blind A/B chat votes cast on the same two models.

A vote counts when its two columns held exactly the evaluation's two models (in either column
order: the chat's column A need not be the evaluation's A), whether it was cast in the A/B chat or
on a generated pair in the rating queue; a thumbs vote rates one answer alone and does not count. Its winner becomes "A", "B" or "tie" (a tie or "both bad" vote); its prompt is the
last user message, which is how it is matched to the judge's verdict on the same prompt. Reads
the preference store through its public functions only. Knows nothing about the UI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from studio.prefs import store as prefs

PAIRWISE = ("A", "B", "tie", "both_bad")


@dataclass(frozen=True)
class HumanVerdict:
    vote_id: int
    prompt: str
    outcome: str  # "A" | "B" | "tie"


def side_key(side: str, run_dir: Path) -> str:
    """A side as the chat records it: "" for the base, else the adapter folder's resolved path."""
    if side in ("", "base"):
        return ""
    folder = Path(run_dir) / "adapter" if side == "adapter" else Path(side).expanduser()
    if (folder / "adapter" / "adapter_config.json").is_file():
        folder = folder / "adapter"
    return str(folder.resolve())


def _adapter_key(value: str) -> str:
    if not value:
        return ""
    folder = Path(value).expanduser()
    if (folder / "adapter" / "adapter_config.json").is_file():  # a run folder: its adapter
        folder = folder / "adapter"
    return str(folder.resolve())


def _last_user(messages: list[dict]) -> str:
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    return " ".join(str(content or "").split())


def _columns(vote: prefs.Vote) -> tuple[tuple[str, str], int | None]:
    """The two chat columns' adapters and the index (0/1) of the one preferred (None: a tie)."""
    winner = None if vote.winner is None else (0 if vote.winner == "A" else 1)
    return (_adapter_key(vote.adapter_a), _adapter_key(vote.adapter_b)), winner


def verdicts(key_a: str, key_b: str, votes: list[prefs.Vote] | None = None) -> list[HumanVerdict]:
    """Every vote on the pair (key_a, key_b), as outcomes in the evaluation's terms."""
    votes = prefs.all_votes() if votes is None else votes
    out = []
    for vote in votes:
        if vote.verdict not in PAIRWISE:  # a thumbs vote rates one answer alone
            continue
        columns, winner = _columns(vote)
        if set(columns) != {key_a, key_b} or columns[0] == columns[1]:
            continue
        outcome = "tie" if winner is None else ("A" if columns[winner] == key_a else "B")
        out.append(HumanVerdict(vote.id, _last_user(vote.messages), outcome))
    return out


def same_prompt(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())
