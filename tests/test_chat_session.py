"""The A/B chat turn without Gradio: blind shuffle, votes by column, edits, adopting the winner,
regenerate, stop, clear, the session registry; and one turn on the tiny model's real engine."""

from __future__ import annotations

from collections import deque

import pytest

from studio.chat import session as turns
from studio.chat.engine import ChatEngine, GenSettings, Reply
from studio.prefs import records, store

SIDES = (turns.Side("default"), turns.Side("default", "/runs/r1/adapter"))
SETTINGS = GenSettings(temperature=0, max_new_tokens=3, system_prompt="Be brief.")


class ScriptedEngine:
    """Stands in for ChatEngine.stream_pair: answers "<column> says <n>" word by word, and keeps
    the conversations it was sent, so a test can see what each column answered."""

    def __init__(self) -> None:
        self.sent: list[tuple[list[dict], list[dict]]] = []

    def stream_pair(self, messages_a, messages_b, adapter_a, adapter_b, settings, stop=None):
        if messages_a[-1]["content"] == "too long":
            raise ValueError("chat: the conversation is 9999 tokens")  # raised before any token
        self.sent.append((messages_a, messages_b))
        n = len(self.sent)
        return self._words(f"A says {n}".split(), f"B says {n}".split(), stop)

    @staticmethod
    def _words(a: list[str], b: list[str], stop):
        for i in range(1, len(a) + 1):
            finish = "stopped" if stop is not None and stop.is_set() else "length" if i == len(a) else None
            yield Reply(" ".join(a[:i]), i, 0.1 * i, finish), Reply(" ".join(b[:i]), i, 0.1 * i, finish)
            if finish:
                return


def turn(session: turns.ChatSession, engine: ScriptedEngine, prompt: str, shown_first: str = "A") -> None:
    """Send, stream to the end and finish one turn; `shown_first` is where the blind coin lands."""
    coin = (lambda: 0.2) if shown_first == "B" else (lambda: 0.7)
    deque(session.send(prompt, engine, (None, "r1"), SIDES, SETTINGS, blind=True, coin=coin), maxlen=0)
    assert session.finish()


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def session() -> turns.ChatSession:
    return turns.get(turns.new_id())


def test_blind_coin_sets_the_order_and_a_pick_names_the_column_shown_there(session, engine):
    turn(session, engine, "Capital of France?", shown_first="B")
    assert session.last.order == ("B", "A")
    first, second = session.panes()
    assert first[-1]["content"] == "B says 1" and second[-1]["content"] == "A says 1"
    voted = session.vote("first")  # the user liked the answer on the left: column B's
    assert (voted.verdict, voted.pick) == ("B", "first")
    [vote] = store.all_votes()
    assert (vote.verdict, vote.shown_first, vote.answer_a, vote.answer_b) == (
        "B",
        "B",
        "A says 1",
        "B says 1",
    )
    assert (vote.model_b, vote.adapter_b, vote.adapter_a, vote.session_id) == (
        "default",
        "/runs/r1/adapter",
        "",
        session.id,
    )
    assert vote.messages[0] == {"role": "system", "content": "Be brief."}
    assert vote.settings["max_new_tokens"] == 3
    [record] = records.export_dpo()
    assert (record["chosen"][0]["content"], record["rejected"][0]["content"]) == ("B says 1", "A says 1")


def test_without_blind_mode_a_is_always_shown_first(session, engine):
    for _ in range(3):
        replies = session.send("Hi", engine, (None, "r1"), SIDES, SETTINGS, blind=False, coin=lambda: 0.0)
        deque(replies, maxlen=0)
        session.finish()
        assert session.last.shown_first == "A"
    assert session.vote("second").verdict == "B"


def test_panes_keep_each_turns_own_order_and_answers(session, engine):
    turn(session, engine, "one", shown_first="A")
    session.vote("second")  # B wins: both columns continue from "B says 1"
    turn(session, engine, "two", shown_first="B")
    first, second = session.panes()
    assert [m["content"] for m in first] == ["one", "A says 1", "two", "B says 2"]
    assert [m["content"] for m in second] == ["one", "B says 1", "two", "A says 2"]


def test_after_a_vote_both_columns_continue_from_the_chosen_answer(session, engine):
    turn(session, engine, "one")
    session.vote("tie")  # no winner: each column keeps its own answer
    turn(session, engine, "two")
    sent_a, sent_b = engine.sent[-1]
    assert [m["content"] for m in sent_a] == ["one", "A says 1", "two"]
    assert [m["content"] for m in sent_b] == ["one", "B says 1", "two"]
    session.vote("second", edited="")  # a blank edit is no edit: B's answer wins
    turn(session, engine, "three")
    sent_a, sent_b = engine.sent[-1]
    assert [m["content"] for m in sent_a] == ["one", "A says 1", "two", "B says 2", "three"]
    assert [m["content"] for m in sent_b] == ["one", "B says 1", "two", "B says 2", "three"]
    assert session.history("A")[-1]["content"] == "A says 3"  # not voted yet: its own answer


def test_an_edit_after_a_vote_updates_it_keeps_its_number_and_shows_in_both_panes(session, engine):
    turn(session, engine, "one", shown_first="B")
    first_vote = session.vote("second").vote_id  # column A was shown second
    edited = session.save_edit("  The capital is Paris.  ")
    assert edited.vote_id == first_vote and edited.verdict == "A"  # the vote is not renumbered
    [vote] = store.all_votes()  # one vote, now with the edit
    assert (vote.id, vote.verdict, vote.edited) == (first_vote, "A", "The capital is Paris.")
    for pane in session.panes():  # the saved answer closes the turn in both panes, marked as edited
        assert pane[-1] == {"role": "assistant", "content": "The capital is Paris.", "edited": True}
    assert session.save_edit("Paris.").vote_id == first_vote  # a second edit keeps the number too
    assert store.all_votes()[0].edited == "Paris."
    assert records.export_dpo()[0]["chosen"][0]["content"] == "Paris."
    assert session.history("B")[-1]["content"] == "Paris."
    turn(session, engine, "two")
    assert session.save_edit("Mine.").verdict == "both_bad"  # an edit alone: both answers were bad
    assert store.all_votes()[-1].edited == "Mine."


def test_votes_are_refused_until_there_is_a_finished_turn_and_only_once(session, engine):
    with pytest.raises(turns.TurnError, match="Send a message first"):
        session.vote("first")
    replies = session.send("one", engine, (None, "r1"), SIDES, SETTINGS, blind=True)
    next(replies)
    with pytest.raises(turns.TurnError, match="Wait for both answers"):
        session.vote("first")
    deque(replies, maxlen=0)
    session.finish()
    assert not session.finish()  # finishing twice does nothing
    session.vote("tie")
    with pytest.raises(turns.TurnError, match="already has a vote"):
        session.vote("first")
    with pytest.raises(turns.TurnError, match="Write your answer first"):
        session.save_edit("   ")
    with pytest.raises(ValueError, match="pick 'left'"):
        session.vote("left")
    with pytest.raises(turns.TurnError, match="Type a message first"):
        session.send("  ", engine, (None, "r1"), SIDES, SETTINGS, blind=True)
    assert store.count() == 1


def test_stop_keeps_the_partial_answers_and_they_can_be_voted_on(session, engine):
    replies = session.send("one", engine, (None, "r1"), SIDES, SETTINGS, blind=False)
    next(replies)
    replies.close()  # the Stop button: the page cancels the stream
    assert session.finish()
    assert session.last.answers == {"A": "A", "B": "B"}
    assert session.vote("first").verdict == "A"
    assert store.all_votes()[0].answer_a == "A"


def test_a_turn_that_cannot_start_changes_nothing_and_an_unfinished_one_is_dropped(session, engine):
    turn(session, engine, "one")
    with pytest.raises(ValueError, match="9999 tokens"):
        session.send("too long", engine, (None, "r1"), SIDES, SETTINGS, blind=True)
    assert [t.prompt for t in session.turns] == ["one"] and session.last.finished
    next(session.send("abandoned", engine, (None, "r1"), SIDES, SETTINGS, blind=True))
    turn(session, engine, "two")  # the abandoned turn never finished: it is not part of the chat
    assert [t.prompt for t in session.turns] == ["one", "two"]
    assert [m["content"] for m in engine.sent[-1][0]] == ["one", "A says 1", "two"]


def test_regenerate_drops_the_last_turn_and_gives_its_prompt_back(session, engine):
    with pytest.raises(turns.TurnError, match="Nothing to regenerate"):
        session.regenerate()
    turn(session, engine, "one")
    turn(session, engine, "two")
    session.vote("first")
    assert session.regenerate() == "two"
    assert [t.prompt for t in session.turns] == ["one"]
    assert [m["content"] for m in session.panes()[0]] == ["one", "A says 1"]
    turn(session, engine, "two")
    assert [m["content"] for m in engine.sent[-1][1]] == ["one", "B says 1", "two"]
    assert store.count() == 1  # the vote on the dropped turn stays stored


def test_clear_starts_over(session, engine):
    turn(session, engine, "one")
    session.clear()
    assert session.panes() == ([], []) and session.history("A") == []
    with pytest.raises(turns.TurnError, match="Send a message first"):
        session.vote("first")


def test_registry_keeps_sessions_by_id_and_forgets_the_oldest(monkeypatch):
    monkeypatch.setattr(turns, "MAX_SESSIONS", 2)
    monkeypatch.setattr(turns, "_SESSIONS", type(turns._SESSIONS)())
    one, two = turns.get("one"), turns.get("two")
    assert turns.get("one") is one  # "one" is now the most recently used
    turns.get("three")
    assert turns.get("one") is one and turns.get("two") is not two  # "two" was forgotten
    turns.forget("one")
    assert turns.get("one") is not one


def test_a_turn_on_the_real_engine_with_an_adapter(tiny_model, tmp_path, monkeypatch):
    from tests.support.runfolder import make_adapter

    adapter = make_adapter(tiny_model, tmp_path / "run-1" / "adapter")
    engine, names, sides = turns.open_sides(str(tiny_model), "base", str(tmp_path / "run-1"))
    try:
        assert names[0] is None and names[1] == "run-1"
        assert sides == (turns.Side(str(tiny_model)), turns.Side(str(tiny_model), str(tmp_path / "run-1")))
        session = turns.get(turns.new_id())
        greedy = GenSettings(temperature=0, max_new_tokens=8, repetition_penalty=1.0)
        ask = [{"role": "user", "content": "What is the capital of France?"}]
        *_, (alone_a, alone_b) = engine.stream_pair(ask, ask, *names, greedy)
        deque(session.send(ask[0]["content"], engine, names, sides, greedy, blind=True), maxlen=0)
        session.finish()
        assert session.last.answers == {"A": alone_a.text, "B": alone_b.text}
        assert alone_a.text != alone_b.text  # the adapter side really is another model
        session.vote("first")
        [vote] = store.all_votes()
        assert vote.verdict == session.last.shown_first
        assert (vote.adapter_a, vote.adapter_b) == ("", str(tmp_path / "run-1"))
        assert adapter.is_dir() and isinstance(engine, ChatEngine)
    finally:
        engine.unload()
