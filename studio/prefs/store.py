"""The vote store: every chat vote and edited answer, in SQLite at STUDIO_HOME/studio.db.

A vote keeps the two answers by COLUMN: `answer_a` came from the chat's model A, `answer_b` from
model B. `verdict` is the column the user preferred ("A", "B"), or "tie" / "both_bad". Blind mode
shuffles which answer the screen shows first; `shown_first` ("A" | "B") records that, for the
position-bias report only: what the user preferred never depends on where it was shown.

Schema history (MIGRATIONS, PRAGMA user_version): v1 named the columns left/right and kept the
verdict in screen terms; v2 names them A/B and maps every v1 verdict to the column it meant; v3
adds who voted (`annotator`), where each answer came from (`source_a`, `source_b`), the generated
pair a queue vote rates (`pair_id`, '' for a chat vote) and the thumbs verdicts "up" / "down",
which rate answer A alone (a thumbs vote keeps `answer_b` empty; KTO data).

Durability: WAL with synchronous=FULL, one short transaction per vote, so a vote whose
`record_vote` returned survives a `kill -9` of the app and a power loss alike. Every call opens
its own connection (Gradio calls from several worker threads); busy_timeout absorbs contention.
This module owns studio.db: nothing else opens it. Knows nothing about models, chat, training
records or the UI.
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

from studio import workspace

COLUMNS = ("A", "B")  # the chat's two models, in the order the user picked them
PAIR_VERDICTS = (*COLUMNS, "tie", "both_bad")
THUMBS = ("up", "down")  # a single answer (column A) rated good or bad
VERDICTS = (*PAIR_VERDICTS, *THUMBS)
ROLES = ("system", "user", "assistant")
BUSY_TIMEOUT_S = 30.0
_SETUP_LOCK = threading.Lock()


@dataclass(frozen=True)
class Vote:
    id: int
    created_at: str
    session_id: str
    messages: list[dict]  # the conversation the two answers reply to, system prompt included
    answer_a: str
    answer_b: str
    model_a: str
    adapter_a: str
    model_b: str
    adapter_b: str
    shown_first: str  # "A" | "B": the column whose answer the screen showed first (on the left)
    verdict: str  # "A" | "B" (the preferred column) | "tie" | "both_bad" | "up" | "down" (A alone)
    edited: str | None
    settings: dict
    annotator: str = ""  # the login that voted ('' when the app ran without logins)
    source_a: str = ""  # where answer A came from, e.g. "default + runs/r1/adapter (greedy)"
    source_b: str = ""
    pair_id: str = ""  # "<job_id>/<prompt_id>" of a generated pair; '' for a chat vote

    @property
    def winner(self) -> str | None:
        """The preferred column ("A" or "B"); None for a tie or 'both bad'."""
        return self.verdict if self.verdict in COLUMNS else None

    def answer(self, column: str) -> str:
        return self.answer_a if column == "A" else self.answer_b


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


_V2_TABLE = """CREATE TABLE votes_v2 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    session_id TEXT NOT NULL DEFAULT '',
    messages TEXT NOT NULL,
    answer_a TEXT NOT NULL,
    answer_b TEXT NOT NULL,
    model_a TEXT NOT NULL DEFAULT '',
    adapter_a TEXT NOT NULL DEFAULT '',
    model_b TEXT NOT NULL DEFAULT '',
    adapter_b TEXT NOT NULL DEFAULT '',
    shown_first TEXT NOT NULL CHECK (shown_first IN ('A', 'B')),
    verdict TEXT NOT NULL CHECK (verdict IN ('A', 'B', 'tie', 'both_bad')),
    edited TEXT,
    settings TEXT NOT NULL DEFAULT '{}'
)"""

# v1 kept the verdict in screen terms: "left" was the answer shown on the left, which was column
# A's when shown_left = 'left' and column B's when blind mode had swapped them.
_V1_TO_V2 = """INSERT INTO votes_v2 (id, created_at, session_id, messages, answer_a, answer_b,
        model_a, adapter_a, model_b, adapter_b, shown_first, verdict, edited, settings)
    SELECT id, created_at, session_id, messages, answer_left, answer_right,
        model_left, adapter_left, model_right, adapter_right,
        CASE shown_left WHEN 'left' THEN 'A' ELSE 'B' END,
        CASE WHEN verdict IN ('tie', 'both_bad') THEN verdict
             WHEN (verdict = 'left') = (shown_left = 'left') THEN 'A' ELSE 'B' END,
        edited, settings
    FROM votes ORDER BY id"""


def _schema_v2(conn: sqlite3.Connection) -> None:
    """Columns A/B instead of left/right, verdicts by column. SQLite's RENAME COLUMN cannot change
    the CHECK constraints that pin the old values, so the table is rebuilt (SQLite's documented
    ALTER TABLE procedure) inside the migration's transaction, keeping ids and the id counter."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'votes'").fetchone()
    conn.execute(_V2_TABLE)
    conn.execute(_V1_TO_V2)
    conn.execute("DROP TABLE votes")  # drops votes_session with it
    conn.execute("ALTER TABLE votes_v2 RENAME TO votes")
    conn.execute("CREATE INDEX votes_session ON votes (session_id)")
    if row is not None:  # the counter: a vote deleted before the upgrade keeps its id retired
        conn.execute("DELETE FROM sqlite_sequence WHERE name = 'votes'")
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('votes', ?)", (row[0],))


_V3_TABLE = (
    _V2_TABLE.replace("votes_v2", "votes_v3")
    .replace("'tie', 'both_bad')", "'tie', 'both_bad', 'up', 'down')")
    .replace(
        "settings TEXT NOT NULL DEFAULT '{}'\n)",
        "settings TEXT NOT NULL DEFAULT '{}',\n"
        "    annotator TEXT NOT NULL DEFAULT '',\n"
        "    source_a TEXT NOT NULL DEFAULT '',\n"
        "    source_b TEXT NOT NULL DEFAULT '',\n"
        "    pair_id TEXT NOT NULL DEFAULT ''\n)",
    )
)
_V2_COLUMNS = (
    "id, created_at, session_id, messages, answer_a, answer_b, model_a, adapter_a, model_b,"
    " adapter_b, shown_first, verdict, edited, settings"
)


def _schema_v3(conn: sqlite3.Connection) -> None:
    """Annotator, answer sources and pair id; thumbs verdicts. The verdict CHECK changes, so the
    table is rebuilt as in v2, keeping ids and the id counter."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'votes'").fetchone()
    conn.execute(_V3_TABLE)
    conn.execute(f"INSERT INTO votes_v3 ({_V2_COLUMNS}) SELECT {_V2_COLUMNS} FROM votes ORDER BY id")
    conn.execute("DROP TABLE votes")
    conn.execute("ALTER TABLE votes_v3 RENAME TO votes")
    conn.execute("CREATE INDEX votes_session ON votes (session_id)")
    conn.execute("CREATE INDEX votes_pair ON votes (pair_id, annotator)")
    if row is not None:
        conn.execute("DELETE FROM sqlite_sequence WHERE name = 'votes'")
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('votes', ?)", (row[0],))


MIGRATIONS = [
    _schema_v1,
    _schema_v2,
    _schema_v3,
]  # MIGRATIONS[i] takes the schema from user_version i to i + 1
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
    answer_a: str,
    answer_b: str,
    verdict: str,
    *,
    model_a: str = "",
    model_b: str = "",
    adapter_a: str = "",
    adapter_b: str = "",
    shown_first: str = "A",
    edited: str | None = None,
    settings: dict | None = None,
    session_id: str = "",
    annotator: str = "",
    source_a: str = "",
    source_b: str = "",
    pair_id: str = "",
) -> int:
    """Store one vote durably (committed and fsynced on return) and return its id.

    `verdict` names the preferred column ("A" / "B"), not a place on the screen; "up" / "down"
    rate answer A alone."""
    if verdict not in VERDICTS:
        raise ValueError(f"vote verdict {verdict!r} must be one of {', '.join(VERDICTS)}")
    if shown_first not in COLUMNS:
        raise ValueError(f"vote shown_first {shown_first!r} must be 'A' or 'B' (the column shown first)")
    if not isinstance(answer_a, str) or not isinstance(answer_b, str):
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
        answer_a,
        answer_b,
        str(model_a),
        str(adapter_a),
        str(model_b),
        str(adapter_b),
        shown_first,
        verdict,
        edited,
        settings_json,
        str(annotator),
        str(source_a),
        str(source_b),
        str(pair_id),
    )
    with _connect() as conn:
        cur = conn.execute(
            "INSERT INTO votes (created_at, session_id, messages, answer_a, answer_b, model_a,"
            " adapter_a, model_b, adapter_b, shown_first, verdict, edited, settings,"
            " annotator, source_a, source_b, pair_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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


def set_edited(vote_id: int, edited: str) -> None:
    """Replace a vote's edited answer in place: the vote keeps its id, verdict and time."""
    edited = (edited or "").strip()
    if not edited:
        raise ValueError(f"vote {vote_id}: the edited answer is empty — write the better answer first")
    with _connect() as conn:
        if conn.execute("UPDATE votes SET edited = ? WHERE id = ?", (edited, int(vote_id))).rowcount == 0:
            raise ValueError(f"vote {vote_id} not found in {workspace.db_path()}: refresh the vote list")


def count() -> int:
    with _connect() as conn:
        return int(conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0])


def pair_votes(prefix: str) -> list[Vote]:
    """Votes on generated pairs whose pair_id starts with `prefix` ("<job_id>/"), oldest first."""
    return _select(
        "SELECT * FROM votes WHERE pair_id != '' AND substr(pair_id, 1, ?) = ? ORDER BY id",
        (len(prefix), prefix),
    )


def last_vote_by(annotator: str, prefix: str) -> Vote | None:
    """The newest vote this annotator cast on pairs whose id starts with `prefix` (for undo)."""
    votes = [v for v in pair_votes(prefix) if v.annotator == annotator]
    return votes[-1] if votes else None
