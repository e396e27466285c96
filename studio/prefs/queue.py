"""The voting queue over a pair job: which pair each annotator rates next, and their votes.

Rules (tested in tests/test_pairs_queue.py):
- a pair needs `overlap` ratings from different people; once it has them nobody else gets it;
- nobody gets a pair they have rated; the pairs with the most ratings still short of the overlap
  come first (finish pairs before opening new ones), then a fixed shuffle of the job;
- a pair on someone's screen is held for them (HOLD_S seconds) and counts towards the overlap,
  so two people voting at once never get the same pair beyond it;
- blind: which answer is shown first is a coin fixed per (annotator, pair); names stay hidden;
- skip puts the pair at the end of that person's queue (released for others meanwhile);
- undo deletes the person's newest vote in this job and shows that pair again.

Votes go to the vote store with the annotator, both answers' sources and the pair id, so what
has been rated is always read from studio.db: an app killed mid-queue loses only the holds.
Queues live in a module-level registry keyed by (job, annotator); the UI keeps only those names.
Knows nothing about Gradio, models or how pairs are generated.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from studio.prefs import pairs, store
from studio.prefs.pairs import Pair

HOLD_S = 600.0
PICKS = ("first", "second", "tie", "both_bad")  # what the person clicked, in screen terms
_LOCK = threading.Lock()
_HOLDS: dict[tuple[str, str], tuple[str, float]] = {}  # (job, annotator) -> (pair_id, until)


def _coin(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big")


@dataclass(frozen=True)
class Shown:
    """A pair as one annotator sees it: `first` and `second` are the answers in screen order."""

    pair: Pair
    shown_first: str  # "A" | "B": the column whose answer is shown first

    @property
    def first(self) -> str:
        return self.pair.answer_a if self.shown_first == "A" else self.pair.answer_b

    @property
    def second(self) -> str:
        return self.pair.answer_b if self.shown_first == "A" else self.pair.answer_a

    def column(self, pick: str) -> str:
        """The verdict by column for a pick in screen terms."""
        if pick == "first":
            return self.shown_first
        if pick == "second":
            return "B" if self.shown_first == "A" else "A"
        return pick


@dataclass(frozen=True)
class Progress:
    mine: int  # pairs this person rated
    done: int  # pairs with `overlap` ratings
    total: int  # pairs generated so far
    left_for_me: int  # pairs this person could still rate

    def __str__(self) -> str:
        return f"{self.done} of {self.total} pairs done · you rated {self.mine}"


def _adapter(source: pairs.Source) -> str:
    """The adapter folder a studio-model source answered with ('' for a base model or an endpoint)."""
    return "" if source.url or not source.adapter else str(Path(source.adapter).expanduser().resolve())


class RatingQueue:
    """One annotator's queue over one job. `thumbs`: rate answer A alone (up / down)."""

    def __init__(self, job_id: str, annotator: str, overlap: int = 1, thumbs: bool = False) -> None:
        if overlap < 1:
            raise ValueError(f"overlap {overlap}: each pair needs at least 1 rating")
        pairs.load_job(job_id)  # a bad job id is reported here
        self.job_id, self.annotator, self.overlap, self.thumbs = job_id, annotator, int(overlap), thumbs
        self.skipped: list[str] = []
        self.current: Shown | None = None

    @property
    def _key(self) -> tuple[str, str]:
        return (self.job_id, self.annotator)

    def _votes(self) -> list[store.Vote]:
        votes = store.pair_votes(self.job_id + "/")
        return [v for v in votes if (v.verdict in store.THUMBS) == self.thumbs]

    def _raters(self) -> dict[str, set[str]]:
        raters: dict[str, set[str]] = {}
        for vote in self._votes():
            raters.setdefault(vote.pair_id, set()).add(vote.annotator)
        return raters

    def progress(self) -> Progress:
        generated = pairs.read_pairs(self.job_id)
        raters = self._raters()
        mine = sum(self.annotator in raters.get(p.pair_id, set()) for p in generated)
        done = sum(len(raters.get(p.pair_id, set())) >= self.overlap for p in generated)
        mine_open = sum(
            self.annotator not in raters.get(p.pair_id, set())
            and len(raters.get(p.pair_id, set())) < self.overlap
            for p in generated
        )
        return Progress(mine, done, len(generated), mine_open)

    def next(self) -> Shown | None:
        """The pair to show now (the one on screen if not yet rated); None when nothing is left."""
        with _LOCK:
            now = time.monotonic()
            for key, (_, until) in list(_HOLDS.items()):
                if until < now:
                    del _HOLDS[key]
            raters = self._raters()
            held = Counter(
                pid for key, (pid, _) in _HOLDS.items() if key[0] == self.job_id and key != self._key
            )
            mine = _HOLDS.get(self._key)
            candidates = []
            for pair in pairs.read_pairs(self.job_id):
                who = raters.get(pair.pair_id, set())
                if self.annotator in who:
                    continue
                if mine is not None and mine[0] == pair.pair_id:  # on this person's screen: keep it
                    candidates.append((-1, 0, 0, pair))
                elif len(who) + held[pair.pair_id] < self.overlap:
                    late = self.skipped.index(pair.pair_id) + 1 if pair.pair_id in self.skipped else 0
                    candidates.append((late, -len(who), _coin(self.job_id, pair.pair_id), pair))
            if not candidates:
                _HOLDS.pop(self._key, None)
                self.current = None
                return None
            pair = min(candidates, key=lambda c: c[:3])[3]
            _HOLDS[self._key] = (pair.pair_id, now + HOLD_S)
        first = "A" if self.thumbs or _coin(self.annotator, pair.pair_id) % 2 == 0 else "B"
        self.current = Shown(pair, first)
        return self.current

    def vote(self, pick: str, edited: str | None = None) -> int:
        """Rate the pair on screen. Pair mode: first|second|tie|both_bad; thumbs: up|down.

        `edited` becomes the chosen answer (pair mode: of the picked side)."""
        shown = self.current
        if shown is None:
            raise ValueError("no pair on screen: press 'Next pair' (or every pair is rated)")
        allowed = store.THUMBS if self.thumbs else PICKS
        if pick not in allowed:
            raise ValueError(f"vote {pick!r}: choose one of {', '.join(allowed)}")
        pair = shown.pair
        job = pairs.load_job(self.job_id)
        vote_id = store.record_vote(
            pair.messages,
            pair.answer_a,
            "" if self.thumbs else pair.answer_b,
            pick if self.thumbs else shown.column(pick),
            shown_first=shown.shown_first,
            model_a=pair.source_a,  # the Votes tab's model columns and wins per pair of models
            model_b="" if self.thumbs else pair.source_b,
            # the adapters, as a chat vote records them, so an evaluation of the same two models
            # counts these votes in its human win rate
            adapter_a=_adapter(job.source_a),
            adapter_b="" if self.thumbs else _adapter(job.source_b),
            edited=edited,
            settings={"a": pair.settings_a, "b": pair.settings_b},
            session_id=self.job_id,
            annotator=self.annotator,
            source_a=pair.source_a,
            source_b="" if self.thumbs else pair.source_b,
            pair_id=pair.pair_id,
        )
        with _LOCK:
            _HOLDS.pop(self._key, None)
        if pair.pair_id in self.skipped:
            self.skipped.remove(pair.pair_id)
        self.current = None
        return vote_id

    def skip(self) -> None:
        """Put the pair on screen at the end of this person's queue and free it for others."""
        if self.current is not None:
            pid = self.current.pair.pair_id
            if pid in self.skipped:
                self.skipped.remove(pid)
            self.skipped.append(pid)
        with _LOCK:
            _HOLDS.pop(self._key, None)
        self.current = None

    def undo(self) -> Shown | None:
        """Delete this person's newest vote in the job and show that pair again."""
        last = None
        for vote in reversed(self._votes()):
            if vote.annotator == self.annotator:
                last = vote
                break
        if last is None:
            raise ValueError("nothing to undo: you have not rated a pair of this job yet")
        store.delete_vote(last.id)
        pair = next(p for p in pairs.read_pairs(self.job_id) if p.pair_id == last.pair_id)
        with _LOCK:
            _HOLDS[self._key] = (pair.pair_id, time.monotonic() + HOLD_S)
        self.current = Shown(pair, last.shown_first)
        return self.current


_QUEUES: dict[tuple[str, str, bool], RatingQueue] = {}


def get(job_id: str, annotator: str, overlap: int = 1, thumbs: bool = False) -> RatingQueue:
    """The annotator's queue for a job (kept across page events; overlap follows the latest call)."""
    with _LOCK:
        queue = _QUEUES.get((job_id, annotator, thumbs))
    if queue is None:
        queue = RatingQueue(job_id, annotator, overlap, thumbs)
        with _LOCK:
            _QUEUES[(job_id, annotator, thumbs)] = queue
    queue.overlap = max(1, int(overlap))
    return queue
