"""The preference store: every chat vote and edited answer, in SQLite at STUDIO_HOME/studio.db.

A vote keeps the two answers in the chat tab's column order (`answer_left` came from the left
column's model), plus `shown_left`: which of those two columns blind mode actually displayed on
the left of the screen. `verdict` is what the user clicked, in SCREEN terms ("left" = the answer
they saw on the left). `winner_slot()` maps one onto the other; exports, reports and tests all
go through it, so the chosen answer is the one the user preferred whatever side it was shown on.

Turning votes into training records (documented choices, tested in tests/test_prefs.py):
- left/right: chosen = the winner, or the user's edit of it; rejected = the loser. The unedited
  winner is not rejected: the user picked it, the edit only polishes it.
- tie or both_bad WITH an edit: the edit beats each original answer -> up to two pairs.
- tie or both_bad without an edit: no DPO pair. KTO: both_bad gives two negatives, a tie nothing
  (equal says nothing about good or bad).
- KTO from pairs: the chosen is desirable (True), each rejected undesirable (False).
- a pair whose chosen and rejected texts are the same teaches nothing and is left out; a record
  repeated by several votes is written once.

Durability: WAL with synchronous=FULL, one short transaction per vote, so a vote whose
`record_vote` returned survives a `kill -9` of the app and a power loss alike. Every call opens
its own connection (Gradio calls from several worker threads); busy_timeout absorbs contention.
Knows nothing about models, chat or the UI.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from studio import workspace
from studio.data import store

VERDICTS = ("left", "right", "tie", "both_bad")
SIDES = ("left", "right")
ROLES = ("system", "user", "assistant")
BUSY_TIMEOUT_S = 30.0
_SETUP_LOCK = threading.Lock()


@dataclass(frozen=True)
class Vote:
    id: int
    created_at: str
    session_id: str
    messages: list[dict]  # the conversation the two answers reply to, system prompt included
    answer_left: str
    answer_right: str
    model_left: str
    adapter_left: str
    model_right: str
    adapter_right: str
    shown_left: str  # "left" | "right": which column's answer the screen showed on the left
    verdict: str  # "left" | "right" | "tie" | "both_bad", in screen terms
    edited: str | None
    settings: dict


# ---- schema -------------------------------------------------------------------------------------


def _schema_v1(conn: sqlite3.Connection) -> None:
    # AUTOINCREMENT: a deleted vote's id is never handed out again.
    conn.execute(
        """CREATE TABLE votes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at TEXT NOT NULL,
            session_id TEXT NOT NULL DEFAULT '',
            messages TEXT NOT NULL,
            answer_left TEXT NOT NULL,
            answer_right TEXT NOT NULL,
            model_left TEXT NOT NULL DEFAULT '',
            adapter_left TEXT NOT NULL DEFAULT '',
            model_right TEXT NOT NULL DEFAULT '',
            adapter_right TEXT NOT NULL DEFAULT '',
            shown_left TEXT NOT NULL CHECK (shown_left IN ('left', 'right')),
            verdict TEXT NOT NULL CHECK (verdict IN ('left', 'right', 'tie', 'both_bad')),
            edited TEXT,
            settings TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    conn.execute("CREATE INDEX votes_session ON votes (session_id)")


MIGRATIONS = [_schema_v1]  # MIGRATIONS[i] takes the schema from user_version i to i + 1
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION in one transaction; return the version found."""
    conn.execute("BEGIN IMMEDIATE")  # re-read the version under the write lock: threads race here
    try:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise ValueError(
                f"{workspace.db_path()}: schema version {found} is newer than this Tune Studio "
                f"understands ({SCHEMA_VERSION}): upgrade Tune Studio or use another STUDIO_HOME"
            )
        for version in range(found, SCHEMA_VERSION):
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch a new file to WAL (persistent in the file). The switch fails at once, without
    waiting on busy_timeout, while another connection reads: retry for a few seconds."""
    for attempt in range(100):
        try:
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal":
                return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
        time.sleep(0.02 * min(attempt + 1, 10))
    raise ValueError(f"{workspace.db_path()}: cannot switch to WAL mode: is another program using it?")


@contextmanager
def _connect() -> Iterator[sqlite3.Connection]:
    """A fresh connection per call: safe from any thread, closed on the way out."""
    path = workspace.db_path()
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA synchronous = FULL")  # per connection: fsync the WAL on every commit
            if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                with _SETUP_LOCK:  # first use of a file: one thread sets it up, the others wait
                    _use_wal(conn)
                    migrate(conn)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise ValueError(
                f"{path} is not a readable vote database ({exc}): move it aside (for example to "
                "studio.db.broken) and the studio starts a new one; your other files are untouched"
            ) from exc
        yield conn
    finally:
        conn.close()


# ---- record / list / delete ---------------------------------------------------------------------


def _text(content: object, where: str) -> str:
    """Message content as a string; a list of text blocks (Gradio 6, OpenAI) is joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in content):
        return "".join(str(b.get("text", "")) for b in content)
    raise ValueError(f"{where}: content must be text (a string or a list of text blocks)")


def _clean_messages(messages: list[dict]) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("vote messages: give the conversation so far, ending with the user's turn")
    cleaned = []
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in ROLES:
            raise ValueError(f"vote messages[{i}]: role {role!r} must be one of {', '.join(ROLES)}")
        cleaned.append({"role": role, "content": _text(msg.get("content"), f"vote messages[{i}]")})
    if cleaned[-1]["role"] != "user":
        raise ValueError("vote messages: the last message must be the user's turn both answers reply to")
    return cleaned


def record_vote(
    messages: list[dict],
    answer_left: str,
    answer_right: str,
    verdict: str,
    *,
    model_left: str = "",
    model_right: str = "",
    adapter_left: str = "",
    adapter_right: str = "",
    shown_left: str = "left",
    edited: str | None = None,
    settings: dict | None = None,
    session_id: str = "",
) -> int:
    """Store one vote durably (committed and fsynced on return) and return its id."""
    if verdict not in VERDICTS:
        raise ValueError(f"vote verdict {verdict!r} must be one of {', '.join(VERDICTS)}")
    if shown_left not in SIDES:
        raise ValueError(f"vote shown_left {shown_left!r} must be 'left' or 'right'")
    if not isinstance(answer_left, str) or not isinstance(answer_right, str):
        raise ValueError("vote answers must be strings (the two assistant replies)")
    edited = edited if isinstance(edited, str) and edited.strip() else None
    try:
        settings_json = json.dumps(settings or {}, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"vote settings: {exc}: keep only numbers, strings and booleans") from exc
    row = (
        datetime.now(UTC).isoformat(timespec="milliseconds"),
        str(session_id),
        json.dumps(_clean_messages(messages), ensure_ascii=False),
        answer_left,
        answer_right,
        str(model_left),
        str(adapter_left),
        str(model_right),
        str(adapter_right),
        shown_left,
        verdict,
        edited,
        settings_json,
    )
    with _connect() as conn:
        cur = conn.execute(
            "INSERT INTO votes (created_at, session_id, messages, answer_left, answer_right, model_left,"
            " adapter_left, model_right, adapter_right, shown_left, verdict, edited, settings)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )  # autocommit: the INSERT is its own transaction, durable when execute returns
        return int(cur.lastrowid)


def _vote(row: sqlite3.Row) -> Vote:
    data = dict(row)
    data["messages"] = json.loads(data["messages"])
    data["settings"] = json.loads(data["settings"])
    return Vote(**data)


def _select(sql: str, params: tuple = ()) -> list[Vote]:
    with _connect() as conn:
        conn.row_factory = sqlite3.Row
        return [_vote(row) for row in conn.execute(sql, params)]


def list_votes(limit: int = 50, offset: int = 0) -> list[Vote]:
    """Votes, newest first."""
    return _select("SELECT * FROM votes ORDER BY id DESC LIMIT ? OFFSET ?", (int(limit), int(offset)))


def all_votes() -> list[Vote]:
    """Every vote, oldest first (the order of the exports)."""
    return _select("SELECT * FROM votes ORDER BY id")


def delete_vote(vote_id: int) -> None:
    with _connect() as conn:
        if conn.execute("DELETE FROM votes WHERE id = ?", (int(vote_id),)).rowcount == 0:
            raise ValueError(f"vote {vote_id} not found in {workspace.db_path()}: refresh the vote list")


def count() -> int:
    with _connect() as conn:
        return int(conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0])


# ---- votes -> training records ------------------------------------------------------------------


def winner_slot(vote: Vote) -> str | None:
    """The column ("left"/"right") whose answer the user preferred; None for tie / both_bad.

    >>> v = Vote(1, "", "", [], "a", "b", "", "", "", "", shown_left="right", verdict="left",
    ...          edited=None, settings={})
    >>> winner_slot(v)  # blind mode showed the right column on the left, and the user liked it
    'right'
    """
    if vote.verdict not in SIDES:
        return None
    if vote.shown_left == "left":
        return vote.verdict
    return "right" if vote.verdict == "left" else "left"


def _raw_pairs(vote: Vote) -> list[tuple[str, str]]:
    answers = {"left": vote.answer_left, "right": vote.answer_right}
    slot = winner_slot(vote)
    if slot is not None:
        return [(vote.edited or answers[slot], answers["right" if slot == "left" else "left"])]
    return [(vote.edited, a) for a in dict.fromkeys(answers.values())] if vote.edited else []


def preference_pairs(vote: Vote) -> list[tuple[str, str]]:
    """(chosen, rejected) texts for one vote; pairs with identical texts are left out."""
    return [(c, r) for c, r in _raw_pairs(vote) if c.strip() != r.strip()]


def kto_examples(vote: Vote) -> list[tuple[str, bool]]:
    """(completion, desirable) for one vote."""
    pairs = preference_pairs(vote)
    if not pairs:
        if vote.verdict == "both_bad" and not vote.edited:
            return [(a, False) for a in dict.fromkeys((vote.answer_left, vote.answer_right))]
        return []
    return [(pairs[0][0], True)] + [(rejected, False) for _, rejected in pairs]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _write_jsonl(path: str | Path | None, records: list[dict]) -> None:
    if path is not None:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        workspace.atomic_write_text(Path(path), lines)


def _unique(records: list[dict]) -> list[dict]:
    """Drop repeats (the same exchange voted twice): the data check would skip them anyway."""
    seen: dict[str, dict] = {}
    for record in records:
        seen.setdefault(json.dumps(record, sort_keys=True, ensure_ascii=False), record)
    return list(seen.values())


def _dpo_records(votes: list[Vote]) -> list[dict]:
    return _unique(
        [
            {"prompt": vote.messages, "chosen": _assistant(chosen), "rejected": _assistant(rejected)}
            for vote in votes
            for chosen, rejected in preference_pairs(vote)
        ]
    )


def export_dpo(path: str | Path | None = None) -> list[dict]:
    """Canonical preference records (DPO / SimPO / ORPO); written as JSONL to `path` if given."""
    records = _dpo_records(all_votes())
    _write_jsonl(path, records)
    return records


def export_kto(path: str | Path | None = None) -> list[dict]:
    """Canonical KTO records; written as JSONL to `path` if given."""
    records = _unique(
        [
            {"prompt": vote.messages, "completion": _assistant(text), "label": label}
            for vote in all_votes()
            for text, label in kto_examples(vote)
        ]
    )
    _write_jsonl(path, records)
    return records


def save_as_dataset(name: str, kind: str = "preference") -> store.DatasetEntry:
    """Save the votes as a dataset the Train tab lists (kind "preference" or "kto")."""
    if kind not in ("preference", "kto"):
        raise ValueError(f"votes save as kind 'preference' (DPO, SimPO, ORPO) or 'kto', not {kind!r}")
    records = export_dpo() if kind == "preference" else export_kto()
    if not records:
        raise ValueError(
            f"no usable votes for a {kind} dataset yet ({count()} votes): pick a better answer "
            "(left or right) or edit one in the Chat tab; ties and 'both bad' alone make no pairs"
        )
    return store.save(name, records, kind, fmt="votes", source="studio.db")


# ---- quality report -----------------------------------------------------------------------------


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
    decisive: int  # left / right verdicts
    ties: int
    both_bad: int
    edited: int
    usable_pairs: int  # rows export_dpo writes (repeats counted once)
    ties_left_out: int  # ties without an edit: no pair
    both_bad_left_out: int  # both_bad without an edit: no pair (KTO negatives only)
    identical_pairs: int  # chosen == rejected: left out of the exports
    left_wins: int  # decisive votes won by the answer shown on the LEFT of the screen
    position_bias: float | None  # left_wins / decisive
    length_votes: int  # decisive votes whose two answers differ in length
    longer_wins: int
    length_bias: float | None  # longer_wins / length_votes
    model_pairs: list[ModelPairStats]

    def notes(self) -> list[str]:
        """Plain-language warnings for the Chat tab."""
        notes = []
        if self.position_bias is not None and self.decisive >= 10 and abs(self.position_bias - 0.5) > 0.2:
            notes.append(
                f"the answer shown on the left won {self.left_wins} of {self.decisive} votes: "
                "turn on blind mode so the sides are shuffled"
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
        left = model_label(vote.model_left, vote.adapter_left)
        right = model_label(vote.model_right, vote.adapter_right)
        key = tuple(sorted((left, right)))
        counts = tally.setdefault(key, [0, 0, 0, 0])
        slot = winner_slot(vote)
        if slot is not None:
            winner = left if slot == "left" else right
            counts[0 if winner == key[0] else 1] += 1
        else:
            counts[2 if vote.verdict == "tie" else 3] += 1
    return [ModelPairStats(a, b, *counts) for (a, b), counts in sorted(tally.items())]


def quality_report() -> QualityReport:
    """Counts and biases of the stored votes (what the Chat tab shows under the vote buttons)."""
    votes = all_votes()
    decisive = [v for v in votes if winner_slot(v) is not None]
    left_wins = sum(v.verdict == "left" for v in decisive)
    length_votes = longer_wins = 0
    for vote in decisive:
        winner, loser = (vote.answer_left, vote.answer_right)
        if winner_slot(vote) == "right":
            winner, loser = loser, winner
        if len(winner.strip()) != len(loser.strip()):
            length_votes += 1
            longer_wins += len(winner.strip()) > len(loser.strip())
    return QualityReport(
        total=len(votes),
        decisive=len(decisive),
        ties=sum(v.verdict == "tie" for v in votes),
        both_bad=sum(v.verdict == "both_bad" for v in votes),
        edited=sum(v.edited is not None for v in votes),
        usable_pairs=len(_dpo_records(votes)),
        ties_left_out=sum(v.verdict == "tie" and not v.edited for v in votes),
        both_bad_left_out=sum(v.verdict == "both_bad" and not v.edited for v in votes),
        identical_pairs=sum(c.strip() == r.strip() for v in votes for c, r in _raw_pairs(v)),
        left_wins=left_wins,
        position_bias=left_wins / len(decisive) if decisive else None,
        length_votes=length_votes,
        longer_wins=longer_wins,
        length_bias=longer_wins / length_votes if length_votes else None,
        model_pairs=_model_pairs(votes),
    )
