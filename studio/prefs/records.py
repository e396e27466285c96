"""Votes -> training records: DPO / SimPO / ORPO pairs and KTO examples, and saving them as a
dataset the Train tab lists.

The rules (documented choices, tested in tests/test_prefs.py):
- a vote for column A or B: chosen = the winner, or the user's edit of it; rejected = the loser.
  The unedited winner is not rejected: the user picked it, the edit only polishes it.
- tie or both_bad WITH an edit: the edit beats each original answer -> up to two pairs.
- tie or both_bad without an edit: no DPO pair. KTO: both_bad gives two negatives, a tie nothing
  (equal says nothing about good or bad).
- KTO from pairs: the chosen is desirable (True), each rejected undesirable (False).
- thumbs votes ("up" / "down", answer A alone): KTO gets the answer with its label; a thumbs-down
  with an edit also gives the DPO pair (edit, answer) and the edit as a desirable KTO example.
- a pair whose chosen and rejected texts are the same teaches nothing and is left out; a record
  repeated by several votes is written once.

Where blind mode showed an answer plays no part here: a vote names the column it preferred.
Knows nothing about SQLite (it reads votes through studio.prefs.store), chat or the UI.
"""

from __future__ import annotations

import json
from pathlib import Path

from studio import workspace
from studio.data import store as datasets
from studio.prefs import store
from studio.prefs.store import Vote


def candidate_pairs(vote: Vote) -> list[tuple[str, str]]:
    """(chosen, rejected) texts for one vote, identical texts included (the report counts them)."""
    if vote.verdict in store.THUMBS:
        return [(vote.edited, vote.answer_a)] if vote.edited else []
    winner = vote.winner
    if winner is not None:
        loser = "B" if winner == "A" else "A"
        return [(vote.edited or vote.answer(winner), vote.answer(loser))]
    if not vote.edited:
        return []
    return [(vote.edited, answer) for answer in dict.fromkeys((vote.answer_a, vote.answer_b))]


def preference_pairs(vote: Vote) -> list[tuple[str, str]]:
    """(chosen, rejected) texts for one vote; pairs with identical texts are left out."""
    return [(c, r) for c, r in candidate_pairs(vote) if c.strip() != r.strip()]


def kto_examples(vote: Vote) -> list[tuple[str, bool]]:
    """(completion, desirable) for one vote."""
    if vote.verdict == "up":
        return [(vote.edited or vote.answer_a, True)]
    pairs = preference_pairs(vote)
    if vote.verdict == "down" and not pairs:
        return [(vote.answer_a, False)]
    if not pairs:
        if vote.verdict == "both_bad" and not vote.edited:
            return [(a, False) for a in dict.fromkeys((vote.answer_a, vote.answer_b))]
        return []
    return [(pairs[0][0], True)] + [(rejected, False) for _, rejected in pairs]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def write_jsonl(path: str | Path | None, records: list[dict]) -> None:
    if path is not None:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        workspace.atomic_write_text(Path(path), lines)


def _unique(records: list[dict]) -> list[dict]:
    """Drop repeats (the same exchange voted twice): the data check would skip them anyway."""
    seen: dict[str, dict] = {}
    for record in records:
        seen.setdefault(json.dumps(record, sort_keys=True, ensure_ascii=False), record)
    return list(seen.values())


def dpo_records(votes: list[Vote]) -> list[dict]:
    """Canonical preference records for these votes, repeats written once."""
    return _unique(
        [
            {"prompt": vote.messages, "chosen": _assistant(chosen), "rejected": _assistant(rejected)}
            for vote in votes
            for chosen, rejected in preference_pairs(vote)
        ]
    )


def kto_records(votes: list[Vote]) -> list[dict]:
    """Canonical KTO records for these votes, repeats written once."""
    return _unique(
        [
            {"prompt": vote.messages, "completion": _assistant(text), "label": label}
            for vote in votes
            for text, label in kto_examples(vote)
        ]
    )


def export_dpo(path: str | Path | None = None) -> list[dict]:
    """Every vote as preference records (DPO / SimPO / ORPO); written as JSONL to `path` if given."""
    records = dpo_records(store.all_votes())
    write_jsonl(path, records)
    return records


def export_kto(path: str | Path | None = None) -> list[dict]:
    """Every vote as KTO records; written as JSONL to `path` if given."""
    records = kto_records(store.all_votes())
    write_jsonl(path, records)
    return records


def save_as_dataset(name: str, kind: str = "preference") -> datasets.DatasetEntry:
    """Save the votes as a dataset the Train tab lists (kind "preference" or "kto")."""
    if kind not in ("preference", "kto"):
        raise ValueError(f"votes save as kind 'preference' (DPO, SimPO, ORPO) or 'kto', not {kind!r}")
    records = export_dpo() if kind == "preference" else export_kto()
    if not records:
        raise ValueError(
            f"no usable votes for a {kind} dataset yet ({store.count()} votes): pick the better of "
            "two answers or edit one in the Chat tab; ties and 'both bad' alone make no pairs"
        )
    return datasets.save(name, records, kind, fmt="votes", source="studio.db")
