"""The voting queue's rules (order, blind coin, skip, undo, overlap, holds) and the agreement
numbers (percent, Cohen's and Fleiss' kappa, majority) against hand-computed tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from studio.prefs import agreement, pairs, queue, records, store
from studio.prefs.pairs import Pair, Source
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def _no_holds():
    queue._HOLDS.clear()
    queue._QUEUES.clear()
    yield
    queue._HOLDS.clear()
    queue._QUEUES.clear()


def make_job(n: int = 6) -> str:
    """A job with n finished pairs (answers 'good i' for A, 'bad i' for B)."""
    prompts = [[{"role": "user", "content": f"Question {i}?"}] for i in range(n)]
    job = pairs.new_job(prompts, Source(model="m"), Source(model="m", adapter="ad"))
    for p in job.prompts:
        i = p["id"]
        pair = Pair(pairs.pair_id(job.job_id, i), i, p["messages"], f"good {i}", f"bad {i}", "A src", "B src")
        pairs.append_pair(job.job_id, pair)
    return job.job_id


def pick_for(shown: queue.Shown, column: str) -> str:
    """The screen pick that means `column`."""
    return "first" if shown.shown_first == column else "second"


def test_each_person_sees_each_pair_once_in_a_fixed_shuffle_and_blind_coins():
    # 40 pairs: the coins hash the job id, which holds the time, so with 8 pairs one run in 128
    # drew the same side every time (CI met it); with 40, one in 2**39
    job = make_job(40)
    q = queue.RatingQueue(job, "alice", overlap=2)
    seen, coins = [], set()
    while (shown := q.next()) is not None:
        assert q.next() is shown or q.next().pair == shown.pair  # asking again keeps the pair on screen
        seen.append(shown.pair.prompt_id)
        coins.add(shown.shown_first)
        assert {shown.first, shown.second} == {shown.pair.answer_a, shown.pair.answer_b}
        q.vote(pick_for(shown, "A"))
    assert sorted(seen) == list(range(40)) and seen != list(range(40))  # shuffled, each once
    assert coins == {"A", "B"}  # blind: both orders occur
    again = queue.RatingQueue(job, "alice", overlap=2)
    assert again.next() is None  # the store knows what alice rated, across queue objects
    bob = queue.RatingQueue(job, "bob", overlap=2)
    assert bob.next().pair.prompt_id == seen[0]  # same job shuffle: pairs short of the overlap first
    votes = store.pair_votes(job + "/")
    assert len(votes) == 40 and all(v.verdict == "A" and v.annotator == "alice" for v in votes)
    assert (votes[0].source_a, votes[0].source_b, votes[0].answer_a) == (
        "A src",
        "B src",
        "good " + votes[0].pair_id.rsplit("/", 1)[1],
    )
    assert (
        q.progress().mine == 40
        and q.progress().done == 0
        and str(q.progress()) == "0 of 40 pairs done · you rated 40"
    )


def test_skip_puts_the_pair_last_and_undo_brings_the_last_vote_back():
    job = make_job(3)
    q = queue.RatingQueue(job, "alice")
    first = q.next()
    q.skip()
    second = q.next()
    assert second.pair != first.pair
    q.vote("tie")
    third = q.next()
    assert third.pair not in (first.pair, second.pair)
    q.vote("both_bad", edited="A better answer.")
    assert q.next().pair == first.pair  # the skipped pair comes back last
    shown = q.undo()  # deletes the 'both_bad' vote, shows that pair again in the same order
    assert shown.pair == third.pair and shown.shown_first == third.shown_first
    assert [v.verdict for v in store.pair_votes(job + "/")] == ["tie"]
    q.vote("first")
    assert q.next().pair == first.pair
    q.vote("second")
    assert q.next() is None
    assert q.progress().done == 3
    q.undo()
    q.undo()
    q.undo()
    with pytest.raises(ValueError, match="nothing to undo"):
        q.undo()
    with pytest.raises(ValueError, match="choose one of"):
        q.vote("left")


def test_overlap_and_holds_two_people_never_share_a_pair_beyond_the_overlap():
    job = make_job(4)
    alice, bob, carol = (queue.RatingQueue(job, name, overlap=1) for name in ("alice", "bob", "carol"))
    a, b = alice.next(), bob.next()
    assert a.pair != b.pair  # held for alice while on her screen
    alice.vote("first")
    bob.vote("first")
    c = carol.next()
    assert c.pair not in (a.pair, b.pair)
    carol.skip()  # released: someone else may take it
    assert alice.next().pair == c.pair
    alice.vote("tie")
    assert bob.next() is not None and bob.next().pair not in (a.pair, b.pair, c.pair)
    bob.vote("tie")
    assert carol.next() is None  # every pair has its one rating
    two = {name: queue.RatingQueue(job, name, overlap=2) for name in ("alice", "bob", "dave")}
    # with overlap 2 each pair takes a second person: dave rates all four, alice and bob none
    rated = 0
    while two["dave"].next() is not None:
        two["dave"].vote("first")
        rated += 1
    assert rated == 4
    assert two["dave"].progress().done == 4 and two["alice"].next() is None and two["bob"].next() is None
    raters = {}
    for vote in store.pair_votes(job + "/"):
        raters.setdefault(vote.pair_id, []).append(vote.annotator)
    assert all(len(names) == 2 == len(set(names)) for names in raters.values())


def test_thumbs_mode_rates_answer_a_alone_for_kto():
    job = make_job(3)
    q = queue.RatingQueue(job, "alice", thumbs=True)
    shown = q.next()
    assert shown.shown_first == "A" and shown.first == shown.pair.answer_a
    q.vote("up")
    q.next()
    q.vote("down", edited="Fixed.")
    q.next()
    with pytest.raises(ValueError, match="up, down"):
        q.vote("first")
    votes = store.pair_votes(job + "/")
    assert [(v.verdict, v.answer_b, v.source_b) for v in votes] == [("up", "", ""), ("down", "", "")]
    labels = sorted((r["completion"][0]["content"], r["label"]) for r in records.kto_records(votes))
    assert labels == sorted([(votes[0].answer_a, True), ("Fixed.", True), (votes[1].answer_a, False)])
    assert queue.RatingQueue(job, "alice").next() is not None  # pair mode has its own queue


# ---- agreement ----------------------------------------------------------------------------------


def test_cohen_kappa_against_a_hand_computed_table():
    # 50 items: both yes 20, yes/no 5, no/yes 10, both no 15. p_o = 35/50 = 0.7;
    # rater 1 yes 25/50, rater 2 yes 30/50: p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = 0.2/0.5 = 0.4
    first = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    second = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert agreement.cohen_kappa(first, second) == pytest.approx(0.4)
    assert agreement.percent_agreement([[x, y] for x, y in zip(first, second, strict=True)]) == pytest.approx(
        0.7
    )
    assert agreement.cohen_kappa(["A", "B"], ["A", "B"]) == pytest.approx(1.0)
    assert agreement.cohen_kappa([], []) is None


def test_fleiss_kappa_against_the_textbook_table():
    # Fleiss (1971) as worked on Wikipedia: 10 items, 14 raters, 5 categories -> 0.210
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert agreement.fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)
    # by hand, 3 raters on 2 items: [3,0] P=1, [1,2] P=1/3; P_bar=2/3; p=(4/6, 2/6), P_e=5/9;
    # kappa = (2/3 - 5/9) / (4/9) = 0.25
    assert agreement.fleiss_kappa([[3, 0], [1, 2]]) == pytest.approx(0.25)


def _vote(job: str, i: int, who: str, verdict: str, edited: str | None = None) -> None:
    store.record_vote(
        [{"role": "user", "content": f"Question {i}?"}], f"good {i}", f"bad {i}", verdict,
        annotator=who, pair_id=f"{job}/{i}", edited=edited,
    )  # fmt: skip


def test_majority_export_equals_the_hand_computed_case(tmp_path):
    job = make_job(4)
    # pair 0: A, A, B -> A.  pair 1: B, B, tie -> B (bob's edit kept).  pair 2: A, B -> tie, dropped.
    # pair 3: alice alone, A -> A.  plus one chat vote, kept as it is.
    for i, who, verdict, edited in [
        (0, "alice", "A", None), (0, "bob", "A", None), (0, "carol", "B", None),
        (1, "alice", "B", None), (1, "bob", "B", "bad 1, fixed"), (1, "carol", "tie", None),
        (2, "alice", "A", None), (2, "bob", "B", None), (3, "alice", "A", None),
    ]:  # fmt: skip
        _vote(job, i, who, verdict, edited)
    store.record_vote([{"role": "user", "content": "Chat?"}], "yes", "no", "A")
    found = agreement.majority(store.all_votes())
    assert (found.resolved, found.dropped_ties) == (3, 1)
    got = [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in records.dpo_records(found.votes)]
    assert got == [("good 0", "bad 0"), ("bad 1, fixed", "good 1"), ("good 3", "bad 3"), ("yes", "no")]
    stats = agreement.agreement(store.all_votes())
    assert stats.pairs == 3 and stats.raters == ["alice", "bob", "carol"] and stats.cohen is None
    # rater pairs agreeing: pair 0 1 of 3, pair 1 1 of 3, pair 2 0 of 1 -> 2/7
    assert stats.percent == pytest.approx(2 / 7)
    # Fleiss table over labels (A, B, tie): [2,1,0], [0,2,1], [1,1,0]; P_i = 1/3, 1/3, 0 -> P_bar = 2/9;
    # shares A 3/8, B 4/8, tie 1/8 -> P_e = (9+16+1)/64 = 26/64; kappa = (2/9 - 26/64) / (1 - 26/64)
    assert stats.fleiss == pytest.approx((2 / 9 - 26 / 64) / (1 - 26 / 64))

    out = tmp_path / "team.jsonl"
    env = {**os.environ}
    cli = subprocess.run(
        [sys.executable, "-m", "studio", "votes", "export", str(out), "--majority"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert "3 pairs resolved, 1 tied pairs dropped" in cli.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in lines] == got
    datacheck = subprocess.run(
        [sys.executable, "-m", "studio", "data", "check", str(out), "--method", "dpo"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert datacheck.returncode == 0, datacheck.stdout + datacheck.stderr
    bob = subprocess.run(
        [sys.executable, "-m", "studio", "votes", "export", str(tmp_path / "bob.jsonl"), "--annotator", "bob"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bob.returncode == 0 and "3 records" in bob.stdout
    rep = subprocess.run(
        [sys.executable, "-m", "studio", "votes", "report"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "annotators: (no login) 1, alice 4, bob 3, carol 2" in rep.stdout
    assert "agreement on 3 pairs rated by several people (alice, bob, carol): percent 0.286" in rep.stdout


def test_two_raters_get_cohen_kappa():
    job = make_job(4)
    for i, (x, y) in enumerate([("A", "A"), ("A", "A"), ("B", "B"), ("B", "A")]):
        _vote(job, i, "alice", x)
        _vote(job, i, "bob", y)
    stats = agreement.agreement(store.all_votes())
    assert stats.cohen == pytest.approx(0.5) and stats.percent == pytest.approx(0.75)
    assert stats.fleiss == pytest.approx(agreement.fleiss_kappa([[2, 0], [2, 0], [0, 2], [1, 1]]))


def test_queue_votes_count_in_an_evaluation_of_the_same_two_models(tmp_path):
    """A pair rated in the queue records the adapters it came from, as a chat vote does, so the
    evaluation of base vs that adapter counts it; a thumbs vote rates one answer and does not."""
    from studio.evaluate import human

    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    prompts = [[{"role": "user", "content": f"Question {i}?"}] for i in range(2)]
    job = pairs.new_job(prompts, Source(model="m", adapter=str(run)), Source(model="m"))
    for p in job.prompts:
        i = p["id"]
        pair = Pair(pairs.pair_id(job.job_id, i), i, p["messages"], f"tuned {i}", f"base {i}", "A", "B")
        pairs.append_pair(job.job_id, pair)
    q = queue.RatingQueue(job.job_id, "alice")
    shown = q.next()
    q.vote(pick_for(shown, "A"))  # the adapter's answer wins
    thumbs = queue.RatingQueue(job.job_id, "alice", thumbs=True)
    thumbs.next()
    thumbs.vote("up")
    found = human.verdicts(human.side_key("base", run), human.side_key("adapter", run))
    assert [(v.prompt, v.outcome) for v in found] == [(shown.pair.messages[0]["content"], "B")]
