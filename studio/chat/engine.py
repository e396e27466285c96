"""Chat inference: one base model in memory, any number of PEFT adapters, streamed answers.

The base and the tuned models share one copy of the weights. A/B answers that run on the same
weights go through ONE batched forward pass per step (each row's LoRA added in one hook per
layer, studio.chat.lean; left padding), each side stopping at its own EOS; a side alone runs the
base without adapter layers, or its one adapter. The decode loop is ours, not `generate`: it runs in the caller's thread, one
step per `next()`, so stopping (an Event, or simply closing the iterator when the page goes away)
never leaves a generation thread behind, and each side samples from its own seeded generator, so
a side's answer does not depend on what the other side is doing. On a CPU with the llama.cpp
binding installed, one or two chat panes decode on llama.cpp contexts instead (studio.chat.llamacpp).

dtype: fp32 on CPU. bf16 decodes at 0.75-0.8x fp32 on this CPU (bench/RESULTS.md) and its greedy
text drifts from fp32 after a few dozen tokens, so it is opt-in (`dtype="bfloat16"`).
On CUDA "auto" means bf16 where supported.

Which adapters are loaded and which module runs a batch of rows (a merged DoRA copy runs as its
own forward pass next to the shared batch) is studio.chat.adapters' business; this module turns
routes into rows, batches and tokens. Streams yield `Reply` objects (text so far, tokens, elapsed
seconds, tokens_per_s, finish); `stream_pair` yields one per side. Knows nothing about the UI,
training, the A/B turn (studio.chat.session) or the preference store.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from studio import models
from studio.chat import llamacpp
from studio.chat.adapters import (
    BASE,
    LoadedAdapters,
    Route,
    adapter_folder,
    adapter_label,
    list_adapters,
    read_config,
)
from studio.chat.decoding import GenSettings, Reply, _advance, _device_and_dtype, _pick, _prompt_ids, _Row

# adapter helpers stay importable from here: code written against the one-module engine uses them
__all__ = ["BASE", "ChatEngine", "GenSettings", "Reply", "adapter_folder", "adapter_label"]
__all__ += ["get_engine", "list_adapters", "memory"]


def memory() -> dict:
    """Resident memory of this process and accelerator memory in use, in MB (None: no accelerator)."""
    import psutil

    rss = psutil.Process().memory_info().rss / 2**20
    torch = sys.modules.get("torch")  # not imported yet: this process holds no accelerator memory
    on_accel = torch is not None and torch.cuda.is_available()
    accel = torch.cuda.memory_allocated() / 2**20 if on_accel else None
    return {"rss_mb": round(rss, 1), "accelerator_mb": None if accel is None else round(accel, 1)}


@dataclass
class _Group:
    """Rows that go through one forward pass together, with their own KV cache."""

    route: Route
    rows: list[int]
    names: list[str]
    room: int = 0  # new tokens the mask has space for
    cache: object = None
    mask: object = None  # None while no row is padded: the model then needs neither mask nor positions
    length: int = 0  # columns of `mask` in use (prompt + tokens fed so far)
    positions: object = None
    next_ids: object = None
    on_llama: bool = False  # one row whose steps run on a llama.cpp context (then `cache`)


class ChatEngine:
    """One base model plus PEFT adapters, answering one conversation or an A/B pair at a time.

    Thread-safe: every forward step holds the engine lock, so two browser tabs interleave step by
    step, and `load`/`unload` wait for the step in flight, after which open streams end ("unloaded").
    """

    memory = staticmethod(memory)

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._epoch = 0
        self._reset()

    def _reset(self) -> None:
        self.spec: str | None = None
        self.dtype: str | None = None
        self._adapters: LoadedAdapters | None = None  # the base model and what is injected into it
        self._tokenizer = None
        self._device = None
        self._eos: set[int] = set()
        self._llama: llamacpp.LlamaCppBase | None = None  # the llama.cpp path, when it serves this base
        self._llama_why = "no model is loaded"  # why it does not (shown per pane)
        self._llama_skip: dict[str, str] = {}  # adapters it cannot serve, and why

    @property
    def loaded(self) -> bool:
        return self._adapters is not None

    @property
    def _model(self):
        """The base transformers model (None when nothing is loaded)."""
        return None if self._adapters is None else self._adapters.model

    @property
    def adapters(self) -> dict[str, Path]:
        """Loaded adapters: name -> folder."""
        return {} if self._adapters is None else dict(self._adapters.folders)

    def serving(self, adapter: str) -> str:
        """How an adapter is served: 'LoRA', 'DoRA merged' or 'DoRA unmerged (slow)'."""
        self._require_loaded()
        return self._adapters.serving(adapter)

    def load(
        self,
        base_spec: str,
        progress: Callable[[float, str], None] | None = None,
        dtype: str = "auto",
        llama_cpp: bool = False,
    ) -> None:
        """Load the base model (a no-op when it is already the one loaded), dropping any other.

        `llama_cpp`: also map the base in llama.cpp where it can serve it (a CPU with the binding,
        studio.chat.llamacpp); one- and two-pane streams then decode there, evaluations stay here.
        """
        progress = progress or models._noop
        with self._lock:
            if self.loaded and (base_spec, dtype, llama_cpp) == (self.spec, self.dtype, self._wants_llama):
                return
            self.unload()
            device, torch_dtype = _device_and_dtype(dtype)
            tokenizer = models.load_tokenizer(base_spec, progress)
            model = models.load_model(base_spec, progress, dtype=torch_dtype).to(device).eval()
            model.requires_grad_(False)
            eos = model.generation_config.eos_token_id
            self._eos = {tokenizer.eos_token_id} | set(eos if isinstance(eos, list) else [eos])
            self._eos.discard(None)
            self._adapters = LoadedAdapters(model, base_spec, models.resolve(base_spec), device)
            self._tokenizer, self._device = tokenizer, device
            self.spec, self.dtype, self._wants_llama = base_spec, dtype, llama_cpp
            if llama_cpp:
                self._start_llama(model, progress)
        progress(1.0, f"{base_spec} ready for chat")

    def _start_llama(self, model, progress) -> None:
        import torch

        architecture = (getattr(model.config, "architectures", None) or ["?"])[0]
        why = llamacpp.base_problem(self._device.type, architecture, llamacpp.unavailable())
        if why is None:
            try:
                gguf = llamacpp.base_gguf(self._adapters.path, progress)
                window = min(self._window(), 4096)
                self._llama = llamacpp.LlamaCppBase(gguf, n_ctx=window, threads=torch.get_num_threads())
            except (ValueError, OSError, RuntimeError) as exc:
                why = f"llama.cpp cannot load this model: {str(exc).split(' — ')[0]}"
        self._llama_why = why or ""

    def path(self, adapter: str | None) -> llamacpp.PathChoice:
        """Which path answers for this adapter (None: the base) in a chat pane, and why."""
        with self._lock:
            if self._llama is None:
                return llamacpp.PathChoice(llamacpp.TORCH, self._llama_why)
            if adapter in (None, BASE) or self._llama.serves(adapter):
                return llamacpp.FASTEST
            return llamacpp.PathChoice(llamacpp.TORCH, self._llama_skip.get(adapter, "not loaded"))

    def _require_loaded(self) -> None:
        if not self.loaded:
            raise ValueError("chat: no base model is loaded; load one first (e.g. 'default')")

    def add_adapter(self, path: str | Path) -> str:
        """Load a run's adapter or a checkpoint; returns its name (the same name when added twice)."""
        folder = adapter_folder(path)  # a bad folder is reported even before a model is loaded
        with self._lock:
            self._require_loaded()
            name = self._adapters.add(folder)
            if self._llama is not None and not self._llama.serves(name):
                self._llama_skip[name] = self._add_llama_lora(name, folder) or ""
            return name

    def _add_llama_lora(self, name: str, folder: Path) -> str | None:
        """Serve the adapter on llama.cpp too; why not, when it cannot."""
        why = llamacpp.lora_problem(read_config(folder))
        if why is None:
            try:
                self._llama.add_lora(name, llamacpp.lora_gguf(folder, self._model.config.to_dict()))
            except (ValueError, OSError) as exc:
                why = f"llama.cpp cannot read this adapter: {exc}"
        return why

    def remove_adapter(self, name: str) -> None:
        """Forget one adapter and free what only it used."""
        with self._lock:
            if self._adapters is not None:
                self._adapters.remove(name)
            if self._llama is not None:
                self._llama.remove_lora(name)
        _free()

    def unload(self) -> None:
        """Drop the base model and every adapter; open streams end with finish 'unloaded'."""
        with self._lock:
            self._epoch += 1
            if self._llama is not None:
                self._llama.close()
            self._reset()
        _free()

    # --- for decode loops outside this module (the API server admits requests between steps) ---
    pick = staticmethod(_pick)  # next token for one row, as `stream` picks it

    def parts(self) -> tuple:
        """(tokenizer, EOS ids, context window, epoch) of the loaded base; the epoch changes on load."""
        with self._lock:
            self._require_loaded()
            return self._tokenizer, frozenset(self._eos), self._window(), self._epoch

    def _window(self) -> int:
        return int(getattr(self._model.config, "max_position_embeddings", 0) or 1 << 20)

    def prompt_ids(self, messages: list[dict], system_prompt: str = "") -> list[int]:
        """The prompt's token ids exactly as `stream` reads them (ValueError on a bad message)."""
        with self._lock:
            self._require_loaded()
            return _prompt_ids(self._tokenizer, messages, system_prompt)

    def group_key(self, adapter: str | None) -> tuple:
        """Rows with equal keys may share one `forward` (the same base weights, any LoRA per row)."""
        with self._lock:
            self._require_loaded()
            route = self._adapters.route(adapter)
            return (id(route.model), route.mixed or route.name)

    def forward(self, adapters: list[str | None], **inputs):
        """One forward pass for rows of equal `group_key`, one adapter (None: base) per row."""
        import torch

        with self._lock, torch.inference_mode():
            self._require_loaded()
            routes = [self._adapters.route(adapter) for adapter in adapters]
            model, mixed = self._adapters.runner(routes[0], [r.name for r in routes])
            inputs = {k: v.to(self._device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            with self._adapters.mixed(mixed):
                return model(**inputs)

    def stream(
        self,
        messages: list[dict],
        adapter: str | None,
        settings: GenSettings,
        stop: threading.Event | None = None,
    ) -> Iterator[Reply]:
        """Answer `messages` with an adapter (None: the base): an iterator of the growing `Reply`.

        Bad input raises ValueError here, before the first token; the iterator then decodes one
        token per `next()` in the caller's thread, so closing it stops decoding at once.
        """
        return (replies[0] for replies in self._decode([(messages, adapter)], settings, stop))

    def stream_pair(
        self,
        messages_a: list[dict],
        messages_b: list[dict],
        adapter_a: str | None,
        adapter_b: str | None,
        settings: GenSettings,
        stop: threading.Event | None = None,
    ) -> Iterator[tuple[Reply, Reply]]:
        """A and B together: one batched forward per step when both run on the shared weights."""
        return self._decode([(messages_a, adapter_a), (messages_b, adapter_b)], settings, stop)

    def stream_batch(
        self,
        requests: list[tuple[list[dict], str | None]],
        settings: GenSettings,
        stop: threading.Event | None = None,
    ) -> Iterator[tuple[Reply, ...]]:
        """Many (messages, adapter) rows decoded together (an evaluation): one Reply per row a step."""
        return self._decode(list(requests), settings, stop)

    def _decode(self, sides: list, settings: GenSettings, stop: threading.Event | None):
        import torch

        settings = (settings or GenSettings()).check()
        with self._lock:
            self._require_loaded()
            routes = [self._adapters.route(adapter) for _, adapter in sides]
            seed = settings.seed
            prompts = [
                _prompt_ids(self._tokenizer, messages, settings.system_prompt) for messages, _ in sides
            ]
            rows = [_Row(p, torch.Generator().manual_seed(seed), seen=set(p)) for p in prompts]
            limit = self._room(rows, settings.max_new_tokens)
            groups: dict[tuple, _Group] = {}
            for i, route in enumerate(routes):
                if self._on_llama(route, len(sides), len(rows[i].prompt) + limit):
                    groups[("llama.cpp", i)] = _Group(route, [i], [route.name], on_llama=True)
                    continue
                key = (id(route.model), route.mixed or route.name)  # id(None): the shared weights
                groups.setdefault(key, _Group(route, [], [], room=limit + 1)).rows.append(i)
                groups[key].names.append(route.name)
            context = (self._epoch, self._tokenizer, frozenset(self._eos), limit)  # a later load changes them
            return self._loop(rows, list(groups.values()), settings, stop, context)

    def _on_llama(self, route: Route, sides: int, tokens: int) -> bool:
        """Chat panes (one or two sides) that llama.cpp serves and whose answer fits its window."""
        adapter = None if route.name == BASE else route.name
        llama = self._llama
        return sides <= 2 and llama is not None and llama.serves(adapter) and tokens <= llama.n_ctx

    def _loop(self, rows: list[_Row], groups: list[_Group], settings: GenSettings, stop, context: tuple):
        try:
            yield from self._steps(rows, groups, settings, stop, context)
        finally:  # done, stopped or abandoned: llama.cpp contexts go back for the next answer
            with self._lock:
                for group in groups:
                    if group.on_llama and group.cache is not None:
                        if self._llama is not None and self._epoch == context[0]:
                            self._llama.give_back(group.cache)
                        else:
                            group.cache.close()
                        group.cache = None

    def _steps(self, rows: list[_Row], groups: list[_Group], settings: GenSettings, stop, context: tuple):
        epoch, tokenizer, eos, limit = context
        start = time.perf_counter()
        while any(row.reply.finish is None for row in rows):
            with self._lock:
                if stop is not None and stop.is_set():
                    finish = "stopped"
                elif self._epoch != epoch:
                    finish = "unloaded"
                else:
                    finish = None
                    for group in groups:
                        if any(rows[i].reply.finish is None for i in group.rows):
                            self._step(group, rows, settings)
            now = time.perf_counter() - start
            for row in rows:
                _advance(row, tokenizer, eos, finish, limit, now)
            yield tuple(Reply(r.reply.text, r.reply.tokens, r.reply.elapsed, r.reply.finish) for r in rows)

    def _room(self, rows: list[_Row], max_new_tokens: int) -> int:
        """New tokens that fit the model's context after the longest prompt."""
        window = int(getattr(self._model.config, "max_position_embeddings", 0) or 1 << 20)
        longest = max(len(row.prompt) for row in rows)
        if longest >= window:
            raise ValueError(
                f"chat: the conversation is {longest} tokens and {self.spec!r} reads at most {window}; "
                "start a new chat or shorten the system prompt"
            )
        return min(max_new_tokens, window - longest)

    def _step(self, group: _Group, rows: list[_Row], settings: GenSettings) -> None:
        """One forward pass for a group (the prompt first, then one token per row) and its picks."""
        import torch

        if group.on_llama:
            return self._step_llama(group, rows[group.rows[0]], settings)
        route = group.route
        # the shared weights are looked up per step: removing the last adapter unwraps the PeftModel
        model, mixed = self._adapters.runner(route, group.names)
        with torch.inference_mode(), self._adapters.mixed(mixed):
            ids = self._next_input(group, rows)
            kwargs = {}
            if group.mask is not None:  # padded rows: the mask and positions skip the padding
                kwargs["attention_mask"] = group.mask[:, : group.length]
                kwargs["position_ids"] = group.positions
            out = model(
                input_ids=ids,
                past_key_values=group.cache,
                use_cache=True,
                logits_to_keep=1,
                **kwargs,
            )
            group.cache = out.past_key_values
            logits = out.logits[:, -1, :]  # the model's own buffer: _pick may edit it in place
            if logits.device.type != "cpu" or logits.dtype != torch.float32:
                logits = logits.to("cpu", torch.float32)
            picks = []
            for j, i in enumerate(group.rows):
                row = rows[i]
                token = (
                    _pick(logits[j], row.seen, settings, row.generator) if row.reply.finish is None else None
                )
                if token is not None:
                    row.tokens.append(token)
                    row.seen.add(token)
                picks.append(ids[j, -1].item() if token is None else token)
            group.next_ids = torch.tensor(picks, device=self._device).unsqueeze(1)

    def _step_llama(self, group: _Group, row: _Row, settings: GenSettings) -> None:
        """One token on a llama.cpp context, picked by the same sampler as the PyTorch rows."""
        import torch

        if group.cache is None:
            group.cache = self._llama.borrow(None if group.route.name == BASE else group.route.name)
            logits = group.cache.prefill(row.prompt)
        else:
            logits = group.cache.feed(row.tokens[-1])
        token = _pick(torch.from_numpy(logits), row.seen, settings, row.generator)
        row.tokens.append(token)
        row.seen.add(token)

    def _next_input(self, group: _Group, rows: list[_Row]):
        """The ids to feed next: the left-padded prompts first, then each row's last pick."""
        import torch

        if group.cache is None:
            prompts = [rows[i].prompt for i in group.rows]
            width = max(len(p) for p in prompts)
            group.length = width
            if all(len(p) == width for p in prompts):  # nothing padded: causal attention as it is
                group.mask = group.positions = None
                return torch.tensor(prompts, device=self._device)
            pad = self._tokenizer.pad_token_id
            pad = min(self._eos, default=0) if pad is None else pad  # masked out: any id will do
            # one mask for the whole answer, filled a column per step (no tensor grows per token)
            mask = torch.ones(len(prompts), width + group.room, dtype=torch.long, device=self._device)
            for j, p in enumerate(prompts):
                mask[j, : width - len(p)] = 0
            group.mask = mask
            group.positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
            return torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self._device)
        group.length += 1
        if group.mask is not None:
            group.positions = group.positions[:, -1:] + 1
        return group.next_ids


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_ENGINE: ChatEngine | None = None
_ENGINE_LOCK = threading.Lock()


def get_engine(
    base_spec: str | None = None, progress: Callable[[float, str], None] | None = None
) -> ChatEngine:
    """The process-wide engine; with `base_spec`, loaded with that base (replacing another one)."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = ChatEngine()
    if base_spec is not None:
        _ENGINE.load(base_spec, progress, llama_cpp=True)
    return _ENGINE
