"""The preference store: votes round-trip, survive kill -9, upgrade from the v1 schema, and export
canonical records of the answer the user preferred."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from studio import workspace
from studio.data import store as datasets
from studio.prefs import records, report, store

ROOT = Path(__file__).resolve().parent.parent
CONVO = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Capital of France?"},
]


def vote(verdict: str, a: str = "Paris.", b: str = "Lyon, probably.", **kw) -> int:
    kw.setdefault("model_a", "default")
    kw.setdefault("model_b", "default")
    kw.setdefault("adapter_b", "runs/r1/adapter")
    return store.record_vote(CONVO, a, b, verdict, **kw)


def test_record_list_delete_round_trip():
    first = vote("A", edited="Paris, France.", settings={"temperature": 0.7}, session_id="s1")
    second = vote("tie", shown_first="B", session_id="s1")
    third = vote("both_bad")
    assert store.count() == 3
    newest = store.list_votes(limit=2)
    assert [v.id for v in newest] == [third, second]
    assert [v.id for v in store.list_votes(limit=10, offset=2)] == [first]
    got = store.list_votes(limit=1, offset=2)[0]
    assert got.messages == CONVO
    assert (got.answer_a, got.answer_b, got.verdict) == ("Paris.", "Lyon, probably.", "A")
    assert (got.model_a, got.adapter_a, got.model_b, got.adapter_b) == (
        "default",
        "",
        "default",
        "runs/r1/adapter",
    )
    assert (got.edited, got.settings, got.session_id, got.shown_first) == (
        "Paris, France.",
        {"temperature": 0.7},
        "s1",
        "A",
    )
    assert got.created_at.startswith("20")
    store.delete_vote(third)
    assert store.count() == 2
    with pytest.raises(ValueError, match=f"vote {third} not found"):
        store.delete_vote(third)
    assert vote("B") > third  # a deleted id is never handed out again


def test_record_vote_validates_and_flattens_text_blocks():
    with pytest.raises(ValueError, match="verdict 'meh'"):
        vote("meh")
    with pytest.raises(ValueError, match="verdict 'left'"):  # v1's screen terms are no verdicts now
        vote("left")
    with pytest.raises(ValueError, match="shown_first"):
        vote("A", shown_first="middle")
    with pytest.raises(ValueError, match=r"messages\[1\]: role 'tool'"):
        store.record_vote([CONVO[0], {"role": "tool", "content": "x"}], "a", "b", "A")
    with pytest.raises(ValueError, match="last message must be the user's turn"):
        store.record_vote([*CONVO, {"role": "assistant", "content": "x"}], "a", "b", "A")
    with pytest.raises(ValueError, match="settings"):
        vote("A", settings={"bad": object()})
    blocks = [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "you"}]}]
    store.record_vote(blocks, "a", "b", "A", edited="   ")
    got = store.list_votes()[0]
    assert got.messages == [{"role": "user", "content": "Hi you"}]
    assert got.edited is None  # a blank edit is no edit
    assert store.count() == 1


def test_schema_is_versioned_in_wal_mode_and_refuses_a_newer_schema():
    vote("A")
    with store._connect() as conn:  # kill -9 cannot tell FULL from OFF; a power loss can
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with sqlite3.connect(workspace.db_path()) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(ValueError, match="schema version 99 is newer"):
        store.count()


def test_a_file_without_the_schema_gets_it_and_migrating_again_does_nothing():
    with sqlite3.connect(workspace.db_path()) as conn:  # version 0: an empty file
        conn.execute("CREATE TABLE unrelated (x)")
    assert store.count() == 0
    conn = sqlite3.connect(workspace.db_path(), isolation_level=None)
    assert store.migrate(conn) == store.SCHEMA_VERSION  # nothing left to do
    conn.close()


# The v1 schema as released: columns left/right, verdicts in screen terms ("left" = the answer
# shown on the left, which was the right column's when blind mode set shown_left = 'right').
V1_SCHEMA = """
CREATE TABLE votes (
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
);
CREATE INDEX votes_session ON votes (session_id);
PRAGMA user_version = 1;
"""
# (answer_left, answer_right, shown_left, verdict, edited) -> the DPO pairs v1 exported for them
V1_VOTES = [
    ("Paris.", "Lyon.", "left", "left", None),  # -> (Paris., Lyon.)
    ("Paris.", "Lyon.", "left", "right", None),  # -> (Lyon., Paris.)
    ("Rome.", "Milan.", "right", "left", None),  # blind, left pane showed answer_right -> (Milan., Rome.)
    ("Rome.", "Milan.", "right", "right", "Rome!"),  # blind, right pane showed answer_left -> (Rome!, Milan.)
    ("Oslo.", "Bergen.", "right", "tie", "Oslo, Norway."),  # -> (Oslo, Norway., Oslo.), (..., Bergen.)
    ("Bern.", "Zurich.", "left", "both_bad", None),  # -> no pair
    ("Gone.", "Deleted.", "left", "left", None),  # deleted before the upgrade
]
V1_PAIRS = [
    ("Paris.", "Lyon."),
    ("Lyon.", "Paris."),
    ("Milan.", "Rome."),
    ("Rome!", "Milan."),
    ("Oslo, Norway.", "Oslo."),
    ("Oslo, Norway.", "Bergen."),
]


def test_a_v1_database_upgrades_keeping_every_vote_and_its_dpo_records():
    with sqlite3.connect(workspace.db_path()) as conn:
        conn.executescript(V1_SCHEMA)
        for i, (left, right, shown_left, verdict, edited) in enumerate(V1_VOTES):
            conn.execute(
                "INSERT INTO votes (created_at, session_id, messages, answer_left, answer_right, model_left,"
                " adapter_left, model_right, adapter_right, shown_left, verdict, edited, settings)"
                " VALUES (?, 's1', ?, ?, ?, 'default', '', 'default', 'runs/r1/adapter', ?, ?, ?, ?)",
                (f"2026-11-0{i + 1}T00:00:00.000+00:00", json.dumps(CONVO), left, right, shown_left,
                 verdict, edited, json.dumps({"seed": i})),
            )  # fmt: skip
        conn.execute("DELETE FROM votes WHERE answer_left = 'Gone.'")
    kept = len(V1_VOTES) - 1

    votes = store.all_votes()  # the first connection migrates
    assert [v.id for v in votes] == list(range(1, kept + 1))
    assert _pairs(records.export_dpo()) == V1_PAIRS
    assert all(r["prompt"] == CONVO for r in records.export_dpo())
    assert [(v.shown_first, v.verdict) for v in votes] == [
        ("A", "A"), ("A", "B"), ("B", "B"), ("B", "A"), ("B", "tie"), ("A", "both_bad")
    ]  # fmt: skip
    first = votes[0]
    assert (first.answer_a, first.answer_b, first.model_a, first.adapter_a, first.model_b, first.adapter_b) == (
        "Paris.", "Lyon.", "default", "", "default", "runs/r1/adapter"
    )  # fmt: skip
    assert (first.session_id, first.settings, first.created_at) == (
        "s1",
        {"seed": 0},
        "2026-11-01T00:00:00.000+00:00",
    )
    assert [v.edited for v in votes] == [None, None, None, "Rome!", "Oslo, Norway.", None]
    with sqlite3.connect(workspace.db_path()) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION == 3
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(votes)")}
        assert "votes_session" in indexes
    assert vote("A") == len(V1_VOTES) + 1  # the id deleted before the upgrade stays retired
    with pytest.raises(sqlite3.IntegrityError):  # the new CHECK constraints hold
        with store._connect() as conn:
            conn.execute("UPDATE votes SET verdict = 'left' WHERE id = 1")


@pytest.mark.parametrize(
    ("shown_first", "verdict", "chosen", "rejected"),
    [
        ("A", "A", "Paris.", "Lyon."),
        ("A", "B", "Lyon.", "Paris."),
        ("B", "B", "Lyon.", "Paris."),  # blind: B's answer was shown first, and the user liked it
        ("B", "A", "Paris.", "Lyon."),
    ],
)
def test_chosen_is_the_preferred_column_wherever_it_was_shown(shown_first, verdict, chosen, rejected):
    vote(verdict, a="Paris.", b="Lyon.", shown_first=shown_first)
    assert records.export_dpo() == [
        {
            "prompt": CONVO,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
    ]
    assert records.export_kto()[0]["completion"][0]["content"] == chosen


def _pairs(records: list[dict]) -> list[tuple[str, str]]:
    return [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in records]


def test_export_dpo_rules_and_atomic_file(tmp_path):
    vote("A", a="A", b="B", edited="A+")  # edit beats the loser only
    vote("tie", a="C", b="D")  # no pair
    vote("both_bad", a="E", b="F")  # no pair
    vote("tie", a="G", b="H", edited="G+")  # edit beats both
    vote("both_bad", a="I", b="I", edited="J")  # same answer twice: one pair
    vote("B", a="K", b="K")  # identical: no signal, left out
    vote("A", a="A", b="B", edited="A+")  # the same exchange voted again: written once
    out = tmp_path / "exports" / "votes.dpo.jsonl"
    rows = records.export_dpo(out)
    assert _pairs(rows) == [("A+", "B"), ("G+", "G"), ("G+", "H"), ("J", "I")]
    for record in rows:
        assert set(record) == {"prompt", "chosen", "rejected"}
        assert record["prompt"] == CONVO and record["chosen"][0]["role"] == "assistant"
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    assert [p.name for p in out.parent.iterdir()] == ["votes.dpo.jsonl"]  # no temp file left


def test_export_kto_labels(tmp_path):
    vote("B", a="bad", b="good")
    vote("both_bad", a="meh", b="worse")
    vote("tie", a="T1", b="T2")  # a tie says nothing about good or bad
    vote("tie", a="T3", b="T4", edited="T5")
    vote("A", a="good", b="bad")  # repeats both examples of the first vote: written once
    rows = records.export_kto(tmp_path / "k.jsonl")
    got = [(r["completion"][0]["content"], r["label"]) for r in rows]
    assert got == [
        ("good", True),
        ("bad", False),
        ("meh", False),
        ("worse", False),
        ("T5", True),
        ("T3", False),
        ("T4", False),
    ]
    assert all(set(r) == {"prompt", "completion", "label"} and r["prompt"] == CONVO for r in rows)
    assert len((tmp_path / "k.jsonl").read_text().splitlines()) == 7


@pytest.mark.parametrize(("method", "export"), [("dpo", records.export_dpo), ("kto", records.export_kto)])
def test_exports_pass_the_data_check_unchanged(tmp_path, method, export):
    from studio.data import check

    vote("A")
    vote("A", shown_first="B", edited="Paris is the capital.")
    vote("both_bad", a="Rome.", b="Berlin.")
    path = tmp_path / f"votes.{method}.jsonl"
    rows = export(path)
    checked = check.load(path, method=method)
    assert checked.usable and checked.problems == []
    assert checked.kind == ("preference" if method == "dpo" else "kto")
    assert checked.records == rows  # canonical already: the data layer has nothing to change


def test_save_as_dataset_lists_it_for_the_train_tab():
    with pytest.raises(ValueError, match="no usable votes"):
        records.save_as_dataset("votes-empty")
    vote("tie")
    with pytest.raises(ValueError, match="no usable votes for a preference dataset yet"):
        records.save_as_dataset("votes-ties")
    vote("A")
    vote("both_bad", a="Rome.")  # KTO: Rome. is a new negative, Lyon's a repeat
    entry = records.save_as_dataset("my-votes")
    assert (entry.kind, entry.rows, entry.format, entry.source) == ("preference", 1, "votes", "studio.db")
    kto = records.save_as_dataset("my-votes-kto", kind="kto")
    assert (kto.kind, kto.rows) == ("kto", 3)
    assert {e.name for e in datasets.list_saved()} == {"my-votes", "my-votes-kto"}
    assert datasets.resolve("my-votes").read_text().count("\n") == 1
    with pytest.raises(ValueError, match="not 'sft'"):
        records.save_as_dataset("x", kind="sft")


def test_quality_report_numbers():
    tuned = {"adapter_b": "runs/r1/adapter"}
    vote("A", a="short", b="a much longer answer", **tuned)  # base wins, shown first, shorter
    vote("B", a="x", b="longer one", **tuned)  # tuned wins, shown second, longer
    vote("B", a="aaaa", b="bb", shown_first="B", **tuned)  # blind: tuned wins, shown first, shorter
    vote("A", a="same", b="same", **tuned)  # identical pair, equal lengths
    vote("tie", **tuned)
    vote("both_bad", **tuned)
    vote("both_bad", a="p", b="q", edited="fixed", **tuned)  # two pairs
    vote("B", a="abc", b="abcdef", edited="edited", **tuned)  # tuned wins, longer
    vote("B", a="one", b="two", model_a="other", model_b="default", adapter_b="")
    quality = report.quality_report()
    assert (quality.total, quality.decisive, quality.ties, quality.both_bad, quality.edited) == (
        9,
        6,
        1,
        2,
        2,
    )
    assert (quality.usable_pairs, quality.identical_pairs) == (7, 1)
    assert (quality.ties_left_out, quality.both_bad_left_out) == (1, 1)
    assert (quality.shown_first_wins, quality.position_bias) == (3, 0.5)
    assert (quality.length_votes, quality.longer_wins, quality.length_bias) == (4, 2, 0.5)
    assert quality.usable_pairs == len(records.export_dpo())
    by_pair = {(p.model_a, p.model_b): p for p in quality.model_pairs}
    base_tuned = by_pair[("default", "default + runs/r1/adapter")]
    assert (base_tuned.a_wins, base_tuned.b_wins, base_tuned.ties, base_tuned.both_bad) == (2, 3, 1, 2)
    assert base_tuned.a_win_rate == 0.4
    other = by_pair[("default", "other")]
    assert (other.a_wins, other.b_wins) == (1, 0)
    assert any("identical" in n or "same chosen" in n for n in quality.notes())


def test_quality_report_warns_about_position_and_length_bias():
    for i in range(10):
        vote("A", a="long answer " * (i + 2), b="short")
    notes = report.quality_report().notes()
    assert any("blind mode" in n for n in notes)
    assert any("longer answer won 10 of 10" in n for n in notes)
    assert report.quality_report().position_bias == 1.0


def test_concurrent_threads_all_votes_land():
    ids: list[int] = []
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                ids.append(vote("A", a=f"w{n} a{i}", b="b", session_id=f"t{n}"))
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(ids)) == 60 and store.count() == 60


CHILD = """
import os, signal, sys
sys.path.insert(0, {root!r})
from studio.prefs import store
msgs = [{{"role": "user", "content": "hi"}}]
n = 0
while True:
    n += 1
    vote_id = store.record_vote(msgs, "a" * 2000, "b" * n, "A", session_id="child")
    print(vote_id, flush=True)
    if {self_kill} and n == 15:
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("self_kill", [True, False], ids=["killed-right-after-return", "killed-mid-vote"])
def test_votes_survive_kill_9(studio_home, self_kill):
    code = CHILD.format(root=str(ROOT), self_kill=self_kill)
    env = {**os.environ, "STUDIO_HOME": str(studio_home)}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    returned = []
    for line in child.stdout:
        returned.append(int(line))
        if len(returned) == 30:  # the parent kills while the child is inside its next vote
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert len(returned) == (15 if self_kill else 30)
    stored = {v.id for v in store.all_votes()}
    assert set(returned) <= stored
    with sqlite3.connect(workspace.db_path()) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_corrupt_database_is_explained_not_a_traceback(studio_home):
    from studio.ui import votes_tab

    (studio_home / "studio.db").write_bytes(b"this is not SQLite at all" * 100)
    with pytest.raises(ValueError, match="move it aside"):
        store.count()
    assert "cannot be read" in votes_tab.report_markdown()
    assert votes_tab.votes_frame().empty
