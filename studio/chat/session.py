"""The A/B chat turn, as plain Python: what the Chat tab does, without Gradio.

Two columns, A and B, are the two models the user picked; each keeps its own conversation and
answers every prompt. Blind mode flips a coin each turn for which column's answer the screen shows
first (on the left) and the tab hides the names until the vote. The user's pick is in screen
terms ("first", "second", "tie", "both_bad"); the session turns it into the column it meant and
stores the vote (studio.prefs.store). An edited answer becomes the chosen one and shows in the
conversation; an edit after a vote updates that vote in place. After a vote both columns continue
from the chosen answer, so the next pair answers one shared conversation. Regenerate drops the last turn and gives its prompt back;
clear starts over.

Sessions live in a module-level registry keyed by an id: the tab keeps only that id. Knows nothing
about Gradio or widgets; decoding is the engine's, storage the vote store's.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from studio.chat.engine import ChatEngine, GenSettings, Reply, get_engine
from studio.prefs import store

COLUMNS = ("A", "B")
PICKS = ("first", "second", "tie", "both_bad")  # what the user clicked, in screen terms
BASE_SIDE = "base"  # a side with no adapter: the base model itself
MAX_SESSIONS = 256  # browser tabs remembered at once; the least recently used is forgotten


class TurnError(ValueError):
    """The turn is not in a state for this action (nothing sent yet, still answering, voted)."""


@dataclass(frozen=True)
class Side:
    """What answers in one column: a base model spec and an adapter folder ("" for none)."""

    model: str
    adapter: str = ""


@dataclass
class Turn:
    """One prompt and the two answers to it."""

    prompts: dict[str, list[dict]]  # column -> the conversation it answered, ending with the prompt
    sides: dict[str, Side]
    settings: dict
    shown_first: str = "A"  # the column whose answer the screen shows first
    answers: dict[str, str] = field(default_factory=lambda: {"A": "", "B": ""})
    finished: bool = False  # both answers are complete (or stopped): it can be voted on
    vote_id: int | None = None
    verdict: str | None = None  # "A" | "B" | "tie" | "both_bad", once voted
    chosen: str | None = None  # the answer both columns continue from, once there is one
    edited: str | None = None  # the user's own answer, once saved

    @property
    def prompt(self) -> str:
        return self.prompts["A"][-1]["content"]

    @property
    def pick(self) -> str | None:
        """The verdict in screen terms ("first", "second", "tie", "both_bad"); None before a vote."""
        if self.verdict in COLUMNS:
            return "first" if self.verdict == self.shown_first else "second"
        return self.verdict

    @property
    def order(self) -> tuple[str, str]:
        """(the column shown first, the column shown second)."""
        return ("A", "B") if self.shown_first == "A" else ("B", "A")


def _other(column: str) -> str:
    return "B" if column == "A" else "A"


def require_prompt(prompt: str | None) -> str:
    """The prompt, or TurnError when there is nothing to send."""
    if not (prompt or "").strip():
        raise TurnError("Type a message first.")
    return prompt


class ChatSession:
    """The turns of one A/B conversation. Thread-safe: a tab's events may overlap."""

    def __init__(self, session_id: str) -> None:
        self.id = session_id
        self.turns: list[Turn] = []
        self._lock = threading.RLock()

    # ---- reading --------------------------------------------------------------------------------

    @property
    def last(self) -> Turn | None:
        return self.turns[-1] if self.turns else None

    def history(self, column: str) -> list[dict]:
        """Column A's or B's conversation so far: its own answers, or the chosen one after a vote."""
        messages: list[dict] = []
        for turn in self.turns:
            if turn.finished:
                answer = turn.chosen if turn.chosen is not None else turn.answers[column]
                messages += [turn.prompts[column][-1], {"role": "assistant", "content": answer}]
        return messages

    def panes(self) -> tuple[list[dict], list[dict]]:
        """What the screen shows: (the answers shown first, the answers shown second), turn by turn."""
        first: list[dict] = []
        second: list[dict] = []
        for turn in self.turns:
            user = turn.prompts["A"][-1]
            for pane, column in zip((first, second), turn.order, strict=True):
                pane += [user, {"role": "assistant", "content": turn.answers[column]}]
                if turn.edited:  # what both sides continue from, marked as the user's
                    pane.append({"role": "assistant", "content": turn.edited, "edited": True})
        return first, second

    # ---- a turn ---------------------------------------------------------------------------------

    def send(
        self,
        prompt: str,
        engine: ChatEngine,
        adapters: tuple[str | None, str | None],
        sides: tuple[Side, Side],
        settings: GenSettings,
        blind: bool,
        stop: threading.Event | None = None,
        coin: Callable[[], float] = random.random,
    ) -> Iterator[tuple[Reply, Reply]]:
        """Start a turn and stream both answers into it: an iterator of (reply A, reply B).

        Bad input raises ValueError here, before the turn exists; an unfinished previous turn
        (never finished or stopped) is dropped. `adapters` are the engine's names for A and B.
        """
        user = {"role": "user", "content": require_prompt(prompt)}
        with self._lock:
            prompts = {column: [*self.history(column), user] for column in COLUMNS}
        replies = engine.stream_pair(prompts["A"], prompts["B"], *adapters, settings, stop)
        turn = Turn(prompts, dict(zip(COLUMNS, sides, strict=True)), asdict(settings))
        turn.shown_first = "B" if blind and coin() < 0.5 else "A"
        with self._lock:
            if self.turns and not self.turns[-1].finished:
                self.turns.pop()
            self.turns.append(turn)
        return self._fill(turn, replies)

    @staticmethod
    def _fill(turn: Turn, replies: Iterator[tuple[Reply, Reply]]) -> Iterator[tuple[Reply, Reply]]:
        try:
            for reply_a, reply_b in replies:
                turn.answers = {"A": reply_a.text, "B": reply_b.text}
                yield reply_a, reply_b
        finally:
            replies.close()  # closing this iterator stops decoding at once

    def finish(self) -> bool:
        """Mark the last turn's answers complete (done or stopped); False when there was nothing to do."""
        with self._lock:
            turn = self.last
            if turn is None or turn.finished:
                return False
            turn.finished = True
            return True

    def vote(self, pick: str, edited: str | None = None) -> Turn:
        """Store the user's pick (screen terms) or edit for the last turn; returns the turn.

        An edit after a vote updates that vote in place (same number, same verdict): it polishes
        the answer already picked.
        """
        if pick not in PICKS:
            raise ValueError(f"vote: pick {pick!r} must be one of {', '.join(PICKS)}")
        edited = (edited or "").strip() or None
        with self._lock:
            turn = self._votable(edited)
            if turn.vote_id is not None:  # _votable let it through: this is an edit
                store.set_edited(turn.vote_id, edited)
            else:
                if pick in ("first", "second"):
                    verdict = turn.shown_first if pick == "first" else _other(turn.shown_first)
                else:
                    verdict = pick
                turn.vote_id, turn.verdict = self._record(turn, verdict, edited), verdict
            turn.edited = edited or turn.edited
            if edited or turn.verdict in COLUMNS:
                turn.chosen = edited or turn.answers[turn.verdict]
            return turn

    def save_edit(self, edited: str) -> Turn:
        """The user's own answer becomes the chosen one (a 'both bad' vote unless already voted)."""
        if not (edited or "").strip():
            raise TurnError("Write your answer first.")
        return self.vote("both_bad", edited)

    def _votable(self, edited: str | None) -> Turn:
        turn = self.last
        if turn is None:
            raise TurnError("Send a message first: there is nothing to vote on yet.")
        if not turn.finished:
            raise TurnError("Wait for both answers to finish (or press Stop) before voting.")
        if turn.vote_id is not None and not edited:
            raise TurnError("This turn already has a vote. Send the next message, or write a better answer.")
        return turn

    def _record(self, turn: Turn, verdict: str, edited: str | None) -> int:
        system = turn.settings.get("system_prompt") or ""
        messages = ([{"role": "system", "content": system}] if system else []) + turn.prompts["A"]
        a, b = turn.sides["A"], turn.sides["B"]
        return store.record_vote(
            messages,
            turn.answers["A"],
            turn.answers["B"],
            verdict,
            model_a=a.model,
            adapter_a=a.adapter,
            model_b=b.model,
            adapter_b=b.adapter,
            shown_first=turn.shown_first,
            edited=edited,
            settings=turn.settings,
            session_id=self.id,
        )

    def regenerate(self) -> str:
        """Drop the last turn from both conversations; returns its prompt to send again."""
        with self._lock:
            turn = self.last
            if turn is None or not turn.finished:
                raise TurnError("Nothing to regenerate yet: send a message and let it finish first.")
            self.turns.pop()
            return turn.prompt

    def clear(self) -> None:
        with self._lock:
            self.turns.clear()


def open_sides(
    base: str, model_a: str, model_b: str, progress: Callable[[float, str], None] | None = None
) -> tuple[ChatEngine, tuple[str | None, str | None], tuple[Side, Side]]:
    """Load the base and the two sides' adapters (BASE_SIDE: none) into the shared engine.

    Returns the engine, its names for A and B (None: the base), and the sides as votes record them.
    """
    base = base or "default"
    engine = get_engine(base, progress)
    folders = ["" if m in (None, "", BASE_SIDE) else str(m) for m in (model_a, model_b)]
    names = tuple(engine.add_adapter(f) if f else None for f in folders)
    return engine, names, (Side(base, folders[0]), Side(base, folders[1]))


# ---- the registry -------------------------------------------------------------------------------

_SESSIONS: OrderedDict[str, ChatSession] = OrderedDict()
_SESSIONS_LOCK = threading.Lock()


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def get(session_id: str) -> ChatSession:
    """The session with this id, made empty on first use (or after an app restart)."""
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(session_id)
        if session is None:
            session = _SESSIONS[session_id] = ChatSession(session_id)
            while len(_SESSIONS) > MAX_SESSIONS:
                _SESSIONS.popitem(last=False)
        _SESSIONS.move_to_end(session_id)
        return session


def forget(session_id: str) -> None:
    """Drop a session (its page is gone); its stored votes stay."""
    with _SESSIONS_LOCK:
        _SESSIONS.pop(session_id, None)
