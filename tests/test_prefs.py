"""The preference store: votes round-trip, survive kill -9, map blind mode, export canonical records."""

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
from studio.data import store
from studio.prefs import store as prefs

ROOT = Path(__file__).resolve().parent.parent
CONVO = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Capital of France?"},
]


def vote(verdict: str, left: str = "Paris.", right: str = "Lyon, probably.", **kw) -> int:
    kw.setdefault("model_left", "default")
    kw.setdefault("model_right", "default")
    kw.setdefault("adapter_right", "runs/r1/adapter")
    return prefs.record_vote(CONVO, left, right, verdict, **kw)


def test_record_list_delete_round_trip():
    first = vote("left", edited="Paris, France.", settings={"temperature": 0.7}, session_id="s1")
    second = vote("tie", shown_left="right", session_id="s1")
    third = vote("both_bad")
    assert prefs.count() == 3
    newest = prefs.list_votes(limit=2)
    assert [v.id for v in newest] == [third, second]
    assert [v.id for v in prefs.list_votes(limit=10, offset=2)] == [first]
    got = prefs.list_votes(limit=1, offset=2)[0]
    assert got.messages == CONVO
    assert (got.answer_left, got.answer_right, got.verdict) == ("Paris.", "Lyon, probably.", "left")
    assert (got.model_left, got.adapter_left, got.model_right, got.adapter_right) == (
        "default",
        "",
        "default",
        "runs/r1/adapter",
    )
    assert (got.edited, got.settings, got.session_id, got.shown_left) == (
        "Paris, France.",
        {"temperature": 0.7},
        "s1",
        "left",
    )
    assert got.created_at.startswith("20")
    prefs.delete_vote(third)
    assert prefs.count() == 2
    with pytest.raises(ValueError, match=f"vote {third} not found"):
        prefs.delete_vote(third)
    assert vote("right") > third  # a deleted id is never handed out again


def test_record_vote_validates_and_flattens_text_blocks():
    with pytest.raises(ValueError, match="verdict 'meh'"):
        vote("meh")
    with pytest.raises(ValueError, match="shown_left"):
        vote("left", shown_left="middle")
    with pytest.raises(ValueError, match=r"messages\[1\]: role 'tool'"):
        prefs.record_vote([CONVO[0], {"role": "tool", "content": "x"}], "a", "b", "left")
    with pytest.raises(ValueError, match="last message must be the user's turn"):
        prefs.record_vote([*CONVO, {"role": "assistant", "content": "x"}], "a", "b", "left")
    with pytest.raises(ValueError, match="settings"):
        vote("left", settings={"bad": object()})
    blocks = [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "you"}]}]
    prefs.record_vote(blocks, "a", "b", "left", edited="   ")
    got = prefs.list_votes()[0]
    assert got.messages == [{"role": "user", "content": "Hi you"}]
    assert got.edited is None  # a blank edit is no edit
    assert prefs.count() == 1


def test_schema_is_versioned_in_wal_mode_and_refuses_a_newer_schema():
    vote("left")
    with prefs._connect() as conn:  # kill -9 cannot tell FULL from OFF; a power loss can
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with sqlite3.connect(workspace.db_path()) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == prefs.SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(ValueError, match="schema version 99 is newer"):
        prefs.count()


def test_migrate_upgrades_an_old_database_in_place():
    with sqlite3.connect(workspace.db_path()) as conn:  # version 0: an empty file
        conn.execute("CREATE TABLE unrelated (x)")
    assert prefs.count() == 0
    conn = sqlite3.connect(workspace.db_path(), isolation_level=None)
    assert prefs.migrate(conn) == prefs.SCHEMA_VERSION  # nothing left to do
    conn.close()


@pytest.mark.parametrize(
    ("shown_left", "verdict", "chosen", "rejected"),
    [
        ("left", "left", "Paris.", "Lyon."),
        ("left", "right", "Lyon.", "Paris."),
        ("right", "left", "Lyon.", "Paris."),  # blind: the right column was on screen-left
        ("right", "right", "Paris.", "Lyon."),
    ],
)
def test_blind_mode_chosen_is_the_answer_the_user_preferred(shown_left, verdict, chosen, rejected):
    vote(verdict, left="Paris.", right="Lyon.", shown_left=shown_left)
    assert prefs.export_dpo() == [
        {
            "prompt": CONVO,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
    ]
    assert prefs.export_kto()[0]["completion"][0]["content"] == chosen


def _pairs(records: list[dict]) -> list[tuple[str, str]]:
    return [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in records]


def test_export_dpo_rules_and_atomic_file(tmp_path):
    vote("left", left="A", right="B", edited="A+")  # edit beats the loser only
    vote("tie", left="C", right="D")  # no pair
    vote("both_bad", left="E", right="F")  # no pair
    vote("tie", left="G", right="H", edited="G+")  # edit beats both
    vote("both_bad", left="I", right="I", edited="J")  # same answer twice: one pair
    vote("right", left="K", right="K")  # identical: no signal, left out
    vote("left", left="A", right="B", edited="A+")  # the same exchange voted again: written once
    out = tmp_path / "exports" / "votes.dpo.jsonl"
    records = prefs.export_dpo(out)
    assert _pairs(records) == [("A+", "B"), ("G+", "G"), ("G+", "H"), ("J", "I")]
    for record in records:
        assert set(record) == {"prompt", "chosen", "rejected"}
        assert record["prompt"] == CONVO and record["chosen"][0]["role"] == "assistant"
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    assert [p.name for p in out.parent.iterdir()] == ["votes.dpo.jsonl"]  # no temp file left


def test_export_kto_labels(tmp_path):
    vote("right", left="bad", right="good")
    vote("both_bad", left="meh", right="worse")
    vote("tie", left="T1", right="T2")  # a tie says nothing about good or bad
    vote("tie", left="T3", right="T4", edited="T5")
    vote("left", left="good", right="bad")  # repeats both examples of the first vote: written once
    records = prefs.export_kto(tmp_path / "k.jsonl")
    got = [(r["completion"][0]["content"], r["label"]) for r in records]
    assert got == [
        ("good", True),
        ("bad", False),
        ("meh", False),
        ("worse", False),
        ("T5", True),
        ("T3", False),
        ("T4", False),
    ]
    assert all(set(r) == {"prompt", "completion", "label"} and r["prompt"] == CONVO for r in records)
    assert len((tmp_path / "k.jsonl").read_text().splitlines()) == 7


@pytest.mark.parametrize(("method", "export"), [("dpo", prefs.export_dpo), ("kto", prefs.export_kto)])
def test_exports_pass_the_data_check_unchanged(tmp_path, method, export):
    from studio.data import check

    vote("left")
    vote("right", shown_left="right", edited="Paris is the capital.")
    vote("both_bad", left="Rome.", right="Berlin.")
    path = tmp_path / f"votes.{method}.jsonl"
    records = export(path)
    report = check.load(path, method=method)
    assert report.usable and report.problems == []
    assert report.kind == ("preference" if method == "dpo" else "kto")
    assert report.records == records  # canonical already: the data layer has nothing to change


def test_save_as_dataset_lists_it_for_the_train_tab():
    with pytest.raises(ValueError, match="no usable votes"):
        prefs.save_as_dataset("votes-empty")
    vote("tie")
    with pytest.raises(ValueError, match="no usable votes for a preference dataset yet"):
        prefs.save_as_dataset("votes-ties")
    vote("left")
    vote("both_bad", left="Rome.")  # KTO: Rome. is a new negative, Lyon's a repeat
    entry = prefs.save_as_dataset("my-votes")
    assert (entry.kind, entry.rows, entry.format, entry.source) == ("preference", 1, "votes", "studio.db")
    kto = prefs.save_as_dataset("my-votes-kto", kind="kto")
    assert (kto.kind, kto.rows) == ("kto", 3)
    assert {e.name for e in store.list_saved()} == {"my-votes", "my-votes-kto"}
    assert store.resolve("my-votes").read_text().count("\n") == 1
    with pytest.raises(ValueError, match="not 'sft'"):
        prefs.save_as_dataset("x", kind="sft")


def test_quality_report_numbers():
    tuned = {"adapter_right": "runs/r1/adapter"}
    vote("left", left="short", right="a much longer answer", **tuned)  # base wins, screen left, shorter
    vote("right", left="x", right="longer one", **tuned)  # tuned wins, screen right, longer
    vote("left", left="aaaa", right="bb", shown_left="right", **tuned)  # blind: tuned wins, shorter
    vote("left", left="same", right="same", **tuned)  # identical pair, equal lengths
    vote("tie", **tuned)
    vote("both_bad", **tuned)
    vote("both_bad", left="p", right="q", edited="fixed", **tuned)  # two pairs
    vote("right", left="abc", right="abcdef", edited="edited", **tuned)  # tuned wins, longer
    vote("right", left="one", right="two", model_left="other", model_right="default", adapter_right="")
    report = prefs.quality_report()
    assert (report.total, report.decisive, report.ties, report.both_bad, report.edited) == (9, 6, 1, 2, 2)
    assert (report.usable_pairs, report.identical_pairs) == (7, 1)
    assert (report.ties_left_out, report.both_bad_left_out) == (1, 1)
    assert (report.left_wins, report.position_bias) == (3, 0.5)
    assert (report.length_votes, report.longer_wins, report.length_bias) == (4, 2, 0.5)
    assert report.usable_pairs == len(prefs.export_dpo())
    by_pair = {(p.model_a, p.model_b): p for p in report.model_pairs}
    base_tuned = by_pair[("default", "default + runs/r1/adapter")]
    assert (base_tuned.a_wins, base_tuned.b_wins, base_tuned.ties, base_tuned.both_bad) == (2, 3, 1, 2)
    assert base_tuned.a_win_rate == 0.4
    other = by_pair[("default", "other")]
    assert (other.a_wins, other.b_wins) == (1, 0)
    assert any("identical" in n or "same chosen" in n for n in report.notes())


def test_quality_report_warns_about_position_and_length_bias():
    for i in range(10):
        vote("left", left="long answer " * (i + 2), right="short")
    notes = prefs.quality_report().notes()
    assert any("blind mode" in n for n in notes)
    assert any("longer answer won 10 of 10" in n for n in notes)
    assert prefs.quality_report().position_bias == 1.0


def test_concurrent_threads_all_votes_land():
    ids: list[int] = []
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                ids.append(vote("left", left=f"w{n} a{i}", right="b", session_id=f"t{n}"))
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(ids)) == 60 and prefs.count() == 60


CHILD = """
import os, signal, sys
sys.path.insert(0, {root!r})
from studio.prefs import store as prefs
msgs = [{{"role": "user", "content": "hi"}}]
n = 0
while True:
    n += 1
    vote_id = prefs.record_vote(msgs, "a" * 2000, "b" * n, "left", session_id="child")
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
    stored = {v.id for v in prefs.all_votes()}
    assert set(returned) <= stored
    with sqlite3.connect(workspace.db_path()) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_corrupt_database_is_explained_not_a_traceback(studio_home):
    from studio.ui import votes_tab

    (studio_home / "studio.db").write_bytes(b"this is not SQLite at all" * 100)
    with pytest.raises(ValueError, match="move it aside"):
        prefs.count()
    assert "cannot be read" in votes_tab.report_markdown()
    assert votes_tab.votes_frame().empty
