"""Continuous batching on the chat engine: requests that arrive at any time share decode steps.

One background thread owns the decode loop. Between two steps it admits waiting requests (up to
`max_batch` decoding at once): it reads their prompts in one forward pass per weight group (the
prefill), then merges their KV caches into the running batch, left-padded, so that every later
step decodes all requests in ONE forward pass per weight group: the base and the LoRA adapters of
that base share one mixed batch (studio.chat.lean), as the A/B chat does. A finished or cancelled request
leaves the batch at once (its cache rows are dropped), so a client that goes away frees its slot
within a step. The waiting line is bounded: a full one raises QueueFull.

Each request samples with its own settings and its own seeded generator, so its answer does not
depend on what else is in the batch, and a greedy answer equals `ChatEngine.stream`'s.
Knows nothing about HTTP or the OpenAI protocol: messages in, text pieces out.
"""

from __future__ import annotations

import asyncio
import collections
import math
import queue
import threading
import time
from dataclasses import dataclass, field

from studio.chat.engine import ChatEngine, GenSettings


@dataclass(frozen=True)
class Piece:
    """New text of one answer. `finish`: None while it grows, then stop|length|cancelled|error."""

    text: str
    finish: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""


class QueueFull(RuntimeError):
    """Every decoding slot is taken and the waiting line is full; try again after `retry_after` s."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(
            f"the server is busy: {waiting} requests are already waiting; retry in {retry_after} s"
        )
        self.retry_after = retry_after


class ContextTooLong(ValueError):
    """The prompt (plus the tokens asked for) does not fit the model's context window."""


class Ticket:
    """One request's handle: iterate it (or `async for`) for its pieces; `cancel()` frees its slot."""

    def __init__(self, prompt: list[int], adapter: str | None, settings: GenSettings, stop, limit: int):
        self.prompt, self.adapter, self.settings = prompt, adapter, settings
        self.stop = [s for s in stop if s]
        self.limit = limit
        self.cancelled = threading.Event()
        self.started = time.perf_counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: queue.Queue | asyncio.Queue = queue.Queue()

    def bind(self, loop: asyncio.AbstractEventLoop) -> Ticket:
        """Deliver pieces to an asyncio loop instead of a thread (call before submitting)."""
        self._loop, self._queue = loop, asyncio.Queue()
        return self

    def cancel(self) -> None:
        self.cancelled.set()

    def _put(self, piece: Piece) -> None:
        if self._loop is None:
            self._queue.put(piece)
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, piece)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel()

    def __iter__(self):
        while True:
            piece = self._queue.get()
            yield piece
            if piece.finish is not None:
                return

    async def get(self, timeout: float) -> Piece | None:
        """The next piece for an asyncio caller (see `bind`); None when none came within `timeout` s."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def __aiter__(self):
        while True:
            piece = await self._queue.get()
            yield piece
            if piece.finish is not None:
                return


@dataclass
class _Slot:
    """A request in the batch: what it has said and how it samples."""

    ticket: Ticket
    generator: object
    seen: set[int]
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of text already handed out
    done: bool = False  # answered or cancelled: its row leaves the batch at the end of this step

    @property
    def live(self) -> bool:
        return not self.done and not self.ticket.cancelled.is_set()


@dataclass
class _Group:
    """Requests decoded by one forward pass per step, with one left-padded KV cache."""

    slots: list[_Slot]
    cache: object = None
    mask: object = None  # [rows, width] 1 for real tokens, 0 for left padding
    positions: object = None  # [rows, 1] position of the last token fed
    next_ids: object = None  # [rows, 1] the tokens picked last step


class Batcher:
    """The decode loop of a server: `submit` from any thread, pieces come back on the ticket."""

    def __init__(self, engine: ChatEngine, max_batch: int = 8, max_waiting: int = 16):
        if max_batch < 1 or max_waiting < 0:
            raise ValueError("batcher: max_batch must be at least 1 and max_waiting at least 0")
        self.engine, self.max_batch, self.max_waiting = engine, max_batch, max_waiting
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._groups: dict[tuple, _Group] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._durations: collections.deque[float] = collections.deque(maxlen=32)
        self.steps = 0  # decode steps taken
        self.widest = 0  # most requests decoded in one forward pass
        self._thread = threading.Thread(target=self._run, name="studio-serve-batcher", daemon=True)
        self._thread.start()

    # --- the caller's side ------------------------------------------------------------------------
    def submit(
        self,
        messages: list[dict],
        adapter: str | None,
        settings: GenSettings,
        stop: list[str] | tuple = (),
        fit_to_context: bool = True,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Ticket:
        """Queue a request. ValueError for bad input (before queueing), QueueFull when busy.

        `fit_to_context`: shorten `max_new_tokens` to what the context window has room for; else a
        request asking for more raises ContextTooLong.
        """
        settings = settings.check()
        prompt = self.engine.prompt_ids(messages, settings.system_prompt)
        self.engine.group_key(adapter)  # an unknown adapter raises here
        _, _, window, _ = self.engine.parts()
        room = window - len(prompt)
        if room <= 0:
            raise ContextTooLong(
                f"the conversation is {len(prompt)} tokens but the model reads at most {window}: "
                "shorten the messages (or the system prompt)"
            )
        if not fit_to_context and settings.max_new_tokens > room:
            raise ContextTooLong(
                f"the conversation is {len(prompt)} tokens and {settings.max_new_tokens} more were asked "
                f"for, but the model reads at most {window}: ask for at most {room} tokens (max_tokens)"
            )
        ticket = Ticket(prompt, adapter, settings, stop, min(settings.max_new_tokens, room))
        if loop is not None:
            ticket.bind(loop)
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._waiting = collections.deque(t for t in self._waiting if not t.cancelled.is_set())
            if self._free_slots() <= 0 and len(self._waiting) >= self.max_waiting:
                raise QueueFull(len(self._waiting), self._retry_after())
            self._waiting.append(ticket)
            self._cond.notify()
        return ticket

    def load(self) -> dict:
        """What the loop is doing: requests decoding and waiting, steps so far, the widest batch."""
        with self._cond:
            return {
                "decoding": self._decoding(),
                "waiting": len(self._waiting),
                "max_batch": self.max_batch,
                "steps": self.steps,
                "widest": self.widest,
            }

    def close(self) -> None:
        """Stop the loop; requests still open end with an error piece."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def _decoding(self) -> int:
        """Requests still being answered (a finished or cancelled one no longer holds a slot)."""
        return sum(slot.live for g in self._groups.values() for slot in g.slots)

    def _free_slots(self) -> int:
        return self.max_batch - self._decoding() - len(self._waiting)

    def _retry_after(self) -> int:
        """Seconds until a slot is likely free: a typical request's time per batch ahead of it."""
        typical = sorted(self._durations)[len(self._durations) // 2] if self._durations else 2.0
        batches_ahead = math.ceil((len(self._waiting) + 1) / self.max_batch)
        return max(1, min(120, math.ceil(typical * batches_ahead)))

    # --- the loop's side --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._groups:
                    self._cond.wait()
                if self._closed:
                    break
                room = self.max_batch - self._decoding()
                admitted = []
                while self._waiting and len(admitted) < room:
                    ticket = self._waiting.popleft()
                    if not ticket.cancelled.is_set():
                        admitted.append(ticket)
            try:
                self._admit(admitted)
                self._step()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive one bad step
                self._end_all(f"decoding failed ({type(exc).__name__}: {exc})", admitted, waiting=False)
        self._end_all("the server is shutting down", [], waiting=True)

    def _end_all(self, message: str, admitted: list[Ticket], waiting: bool) -> None:
        """End the requests in the batch (and the waiting ones, when closing) with an error piece."""
        with self._cond:
            tickets = admitted + [s.ticket for g in self._groups.values() for s in g.slots]
            if waiting:
                tickets += list(self._waiting)
                self._waiting.clear()
            self._groups.clear()
        for ticket in dict.fromkeys(tickets):
            ticket._put(Piece("", "error", len(ticket.prompt), 0, message))

    def _admit(self, tickets: list[Ticket]) -> None:
        """Read the new prompts (one prefill per weight group) and merge them into the batch."""
        import torch

        by_key: dict[tuple, list[Ticket]] = {}
        for ticket in tickets:
            by_key.setdefault(self.engine.group_key(ticket.adapter), []).append(ticket)
        for key, group_tickets in by_key.items():
            slots = [
                _Slot(t, torch.Generator().manual_seed(t.settings.seed), set(t.prompt)) for t in group_tickets
            ]
            prompts = [t.prompt for t in group_tickets]
            width = max(len(p) for p in prompts)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])  # padding is masked out
            new = _Group(slots, mask=mask, positions=(mask.cumsum(-1) - 1).clamp(min=0))
            self._forward(new, ids)
            new.positions = new.positions[:, -1:]
            if new.slots:
                with self._cond:
                    old = self._groups.get(key)
                    self._groups[key] = new if old is None else _merge(old, new)

    def _step(self) -> None:
        """One decode step: one forward pass per weight group, every request one token further."""
        import torch

        for key, group in list(self._groups.items()):
            gone = [s for s in group.slots if s.ticket.cancelled.is_set()]
            if gone:
                _keep(group, [i for i, s in enumerate(group.slots) if not s.ticket.cancelled.is_set()])
                for slot in gone:
                    slot.ticket._put(Piece("", "cancelled", len(slot.ticket.prompt), len(slot.tokens)))
            if group.slots:
                group.mask = torch.cat([group.mask, torch.ones_like(group.next_ids)], dim=1)
                group.positions = group.positions + 1
                self.widest = max(self.widest, len(group.slots))
                self._forward(group, group.next_ids)
            if not group.slots:
                with self._cond:
                    del self._groups[key]
        self.steps += 1

    def _forward(self, group: _Group, ids) -> None:
        """Run one forward pass, pick each row's token, hand out text, drop the rows that ended."""
        import torch

        try:
            out = self.engine.forward(
                [s.ticket.adapter for s in group.slots],
                input_ids=ids,
                attention_mask=group.mask,
                position_ids=group.positions,
                past_key_values=group.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        except Exception as exc:  # noqa: BLE001 - a failed step ends its requests with the reason
            for slot in group.slots:
                slot.ticket._put(Piece("", "error", len(slot.ticket.prompt), len(slot.tokens), str(exc)))
            group.slots, group.cache = [], None
            return
        group.cache = out.past_key_values
        logits = out.logits[:, -1, :].to("cpu", torch.float32, copy=True)
        picks, keep = [], []
        tokenizer, eos, _, _ = self.engine.parts()
        for i, slot in enumerate(group.slots):
            token = self.engine.pick(logits[i], slot.seen, slot.ticket.settings, slot.generator)
            picks.append(token)
            if self._take(slot, token, tokenizer, eos):
                keep.append(i)
        group.next_ids = torch.tensor(picks).unsqueeze(1)
        if len(keep) < len(group.slots):
            _keep(group, keep)

    def _take(self, slot: _Slot, token: int, tokenizer, eos: frozenset) -> bool:
        """Add a token to a request and hand out its new text; False once the request has ended."""
        ticket = slot.ticket
        finish = None
        if token in eos:
            finish = "stop"
        else:
            slot.tokens.append(token)
            slot.seen.add(token)
        text = tokenizer.decode(slot.tokens, skip_special_tokens=True)
        cut = min((text.find(s) for s in ticket.stop if s in text), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        elif finish is None and len(slot.tokens) >= ticket.limit:
            finish = "length"
        if finish is None:
            if text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                return True
            text = text[: len(text) - _held_back(text, ticket.stop)]
        slot.done = finish is not None  # before the last piece: its client may ask again at once
        if len(text) > slot.sent or finish is not None:
            ticket._put(Piece(text[slot.sent :], finish, len(ticket.prompt), len(slot.tokens)))
            slot.sent = max(slot.sent, len(text))
        if finish is not None:
            self._durations.append(time.perf_counter() - ticket.started)
        return finish is None


def _held_back(text: str, stops: list[str]) -> int:
    """How many final characters could be the start of a stop string (not handed out yet).

    >>> _held_back("Hello, Wor", ["World"])
    3
    """
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def _left_pad(tensor, width: int, dim: int):
    import torch.nn.functional as F

    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - dim % tensor.dim()) + [missing, 0]
    return F.pad(tensor, pad)


def _merge(old: _Group, new: _Group) -> _Group:
    """One group holding both: caches and masks left-padded to the wider one, rows stacked."""
    import torch

    width = max(old.mask.shape[1], new.mask.shape[1])
    for mine, theirs in zip(old.cache.layers, new.cache.layers, strict=True):
        mine.keys = torch.cat([_left_pad(mine.keys, width, -2), _left_pad(theirs.keys, width, -2)])
        mine.values = torch.cat([_left_pad(mine.values, width, -2), _left_pad(theirs.values, width, -2)])
    old.mask = torch.cat([_left_pad(old.mask, width, 1), _left_pad(new.mask, width, 1)])
    old.positions = torch.cat([old.positions[:, -1:], new.positions[:, -1:]])
    old.next_ids = torch.cat([old.next_ids, new.next_ids])
    old.slots = old.slots + new.slots
    return old


def _keep(group: _Group, rows: list[int]) -> None:
    """Drop every other row from a group, and the padding columns no remaining row needs."""
    import torch

    index = torch.tensor(rows, dtype=torch.long)
    group.slots = [group.slots[i] for i in rows]
    if not rows:
        group.cache = None
        return
    group.cache.batch_select_indices(index.to(group.cache.layers[0].keys.device))
    group.mask, group.next_ids = group.mask[index], group.next_ids[index]
    group.positions = group.positions[index]
    first = int(group.mask.any(0).float().argmax())
    if first > 0:
        group.mask = group.mask[:, first:]
        for layer in group.cache.layers:
            layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
