"""Chat inference: one base model in memory, any number of PEFT adapters, streamed answers.

The base answers with every adapter switched off (PEFT's "__base__"), so base and tuned model
share one copy of the weights. A/B answers that run on the same weights go through ONE batched
forward pass per step (PEFT mixed-adapter batches, left padding), each side stopping at its own
EOS. The decode loop is ours, not `generate`: it runs in the caller's thread, one step per
`next()`, so stopping (an Event, or simply closing the iterator when the page goes away) never
leaves a generation thread behind, and each side samples from its own seeded generator, so a
side's answer does not depend on what the other side is doing.

Trade-offs chosen here (see the tests):
- dtype: fp32 on CPU. bf16 decodes ~2x faster on this CPU but its greedy text drifts from fp32
  after a few dozen tokens (1 of 4 prompts on SmolLM2-135M), so it is opt-in (`dtype="bfloat16"`).
  On CUDA "auto" means bf16 where supported.
- DoRA: PEFT refuses DoRA in mixed batches and unmerged DoRA decodes ~7x slower, so a DoRA adapter
  is merged into a private copy of only the weights it touches (everything else is shared with the
  base). When memory is short, it is served unmerged instead: correct, but slow.

Streams yield `Reply` objects (text so far, tokens, elapsed seconds, tokens_per_s, finish);
`stream_pair` yields one per side. A DoRA copy or an unmerged DoRA adapter runs as its own
forward pass next to the shared batch. Knows nothing about the UI, training or the preference store.
"""

from __future__ import annotations

import gc
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from studio import models, workspace

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
_HEADROOM_MB = 512  # memory left free after making a merged DoRA copy


@dataclass
class GenSettings:
    """Sampling settings, shared by both sides of an A/B chat. temperature 0 means greedy."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    repetition_penalty: float = 1.1
    seed: int = 0
    system_prompt: str = ""

    def check(self) -> GenSettings:
        problems = []
        if not 0 <= self.temperature <= 5:
            problems.append(f"temperature {self.temperature} must be between 0 (greedy) and 5")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p {self.top_p} must be above 0 and at most 1")
        if not 1 <= self.max_new_tokens <= 8192:
            problems.append(f"max_new_tokens {self.max_new_tokens} must be between 1 and 8192")
        if not 0.5 <= self.repetition_penalty <= 3:
            problems.append(
                f"repetition_penalty {self.repetition_penalty} must be between 0.5 and 3 (1 = off)"
            )
        if problems:
            raise ValueError("chat settings: " + "; ".join(problems))
        return self


@dataclass
class Reply:
    """One side's answer so far. `finish` is None while it grows, then eos|length|stopped|unloaded."""

    text: str = ""
    tokens: int = 0
    elapsed: float = 0.0  # seconds since the request started, prompt reading included
    finish: str | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed if self.elapsed > 0 else 0.0

    def __str__(self) -> str:
        return self.text


def memory() -> dict:
    """Resident memory of this process and accelerator memory in use, in MB (None: no accelerator)."""
    import psutil
    import torch

    rss = psutil.Process().memory_info().rss / 2**20
    accel = torch.cuda.memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"rss_mb": round(rss, 1), "accelerator_mb": None if accel is None else round(accel, 1)}


def adapter_folder(path: str | Path) -> Path:
    """The adapter folder behind a run folder, its `adapter/`, or a `checkpoints/checkpoint-N`."""
    folder = Path(path).expanduser()
    if (folder / "adapter_config.json").is_file():
        return folder.resolve()
    if (folder / "adapter" / "adapter_config.json").is_file():
        return (folder / "adapter").resolve()
    checkpoints = [str(c) for c in _checkpoints(folder)]
    if checkpoints:
        raise ValueError(
            f"{folder} has no final adapter yet (training has not finished): "
            f"pick one of its checkpoints instead: {', '.join(checkpoints)}"
        )
    raise ValueError(
        f"{folder} holds no adapter: expected adapter_config.json there, in {folder / 'adapter'}, "
        "or in a checkpoints/checkpoint-N folder; pick a run that has finished or saved a checkpoint"
    )


def _checkpoints(run: Path) -> list[Path]:
    found = [c for c in (run / "checkpoints").glob("checkpoint-*") if (c / "adapter_config.json").is_file()]
    return sorted(
        found, key=lambda c: int(c.name.rsplit("-", 1)[1]) if c.name.rsplit("-", 1)[1].isdigit() else 0
    )


def list_adapters(runs_root: Path | None = None) -> list[Path]:
    """Every adapter the chat can load: each run's final adapter, then its checkpoints by step."""
    root = Path(runs_root) if runs_root else workspace.runs_dir()
    if not root.is_dir():
        return []
    found: list[Path] = []
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        if (run / "adapter" / "adapter_config.json").is_file():
            found.append(run / "adapter")
        found.extend(_checkpoints(run))
    return found


def adapter_label(folder: Path) -> str:
    """A short, PEFT-safe name: `<run>` for a final adapter, `<run>-checkpoint-N` for a checkpoint.

    >>> adapter_label(Path("/w/runs/sft.v2/checkpoints/checkpoint-40"))
    'sft_v2-checkpoint-40'
    """
    folder = Path(folder)
    if folder.parent.name == "checkpoints":
        label = f"{folder.parent.parent.name}-{folder.name}"
    elif folder.name == "adapter":
        label = folder.parent.name
    else:
        label = folder.name
    return re.sub(r"[^A-Za-z0-9_-]", "_", label) or "adapter"


def _same_base(declared: str, spec: str, path: str) -> bool:
    """Whether an adapter's recorded base names the loaded base (folders move between machines)."""
    if not declared or declared in (spec, path):
        return True
    if Path(declared).expanduser().exists() and Path(declared).expanduser().resolve() == Path(path).resolve():
        return True
    # "HuggingFaceTB/SmolLM2-135M-Instruct" and ".../models/SmolLM2-135M-Instruct" are the same model
    return Path(declared.rstrip("/")).name == Path(path.rstrip("/")).name


def _text(content) -> str:
    """Message content as plain text; Gradio 6 may send a list of blocks instead of a string."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, list):
        return "".join(_text(block) for block in content if not isinstance(block, dict) or "text" in block)
    return "" if content is None else str(content)


def _prompt_ids(tokenizer, messages: list[dict], system_prompt: str) -> list[int]:
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise ValueError(
                f"chat message {i + 1}: needs a 'role' of system, user or assistant and a 'content'; got {message!r}"
            )
        turns.append({"role": message["role"], "content": _text(message.get("content"))})
    if system_prompt.strip() and not (turns and turns[0]["role"] == "system"):
        turns.insert(0, {"role": "system", "content": system_prompt.strip()})
    if not turns or turns[-1]["role"] != "user":
        raise ValueError("chat: the conversation must end with a user message for the model to answer")
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    else:  # a base model without a template: a plain transcript is the best it can follow
        text = "".join(f"{t['role'].capitalize()}: {t['content']}\n" for t in turns) + "Assistant:"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class _Route:
    """Where one side runs: a merged DoRA copy, or None for the shared base weights."""

    model: object
    name: str  # BASE, a LoRA adapter, or a DoRA adapter
    mixed: bool  # True: may share a batch with other mixed routes on the same model


@dataclass
class _Group:
    """Rows that go through one forward pass together, with their own KV cache."""

    route: _Route
    rows: list[int]
    names: list[str]
    cache: object = None
    mask: object = None
    positions: object = None
    next_ids: object = None


@dataclass
class _Row:
    prompt: list[int]
    generator: object
    tokens: list[int] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)  # prompt + answer tokens, for the repetition penalty
    reply: Reply = field(default_factory=Reply)


def _device_and_dtype(dtype: str):
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        auto = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        auto = torch.float32  # bf16 greedy text drifts from fp32 here: see the module docstring
    choices = {"auto": auto, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in choices:
        raise ValueError(f"chat dtype {dtype!r} is unknown: use one of {', '.join(choices)}")
    if (
        choices[dtype] == torch.bfloat16
        and device.type == "cpu"
        and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    ):
        raise ValueError("this CPU has no native bfloat16: use dtype 'float32' (or 'auto')")
    return device, choices[dtype]


def _can_afford(nbytes: int, device) -> bool:
    """Whether `nbytes` more still leaves _HEADROOM_MB free on the device that would hold them."""
    import psutil
    import torch

    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else psutil.virtual_memory().available
    return free - nbytes > _HEADROOM_MB * 2**20


def _put(root, dotted: str, tensor, buffer: bool) -> None:
    owner_name, _, leaf = dotted.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    (owner._buffers if buffer else owner._parameters)[leaf] = tensor


def _adapter_config(folder: Path) -> dict:
    path = folder / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable ({exc}); save the adapter again with save_pretrained") from exc
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ValueError(
            f"{path}: peft_type is {config.get('peft_type')!r}; the chat serves LoRA and DoRA adapters only"
        )
    return config


def _pick(logits, seen: set[int], settings: GenSettings, generator) -> int:
    """Next token for one row: repetition penalty, then greedy or temperature + top-p sampling."""
    import torch

    if settings.repetition_penalty != 1.0 and seen:
        index = torch.tensor(sorted(seen))
        picked = logits[index]
        penalty = settings.repetition_penalty
        logits[index] = torch.where(picked > 0, picked / penalty, picked * penalty)
    if settings.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / settings.temperature, dim=-1)
    if settings.top_p < 1:
        ordered, order = probs.sort(descending=True)
        ordered = ordered * ((ordered.cumsum(0) - ordered) < settings.top_p)  # the head that reaches top_p
        return int(order[torch.multinomial(ordered, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


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
        self._model = None  # the transformers model; PEFT injects adapter layers into it in place
        self._peft = None  # PeftModel around _model once an adapter is added
        self._tokenizer = None
        self._device = None
        self._path = ""
        self._params: dict = {}  # base parameters by their plain name, shared with DoRA copies
        self._buffers: dict = {}
        self._folders: dict[str, Path] = {}
        self._routes: dict[str, _Route] = {}
        self._eos: set[int] = set()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def adapters(self) -> dict[str, Path]:
        """Loaded adapters: name -> folder."""
        return dict(self._folders)

    def serving(self, adapter: str) -> str:
        """How an adapter is served: 'LoRA', 'DoRA merged' or 'DoRA unmerged (slow)'."""
        route = self._routes[adapter]
        return "LoRA" if route.mixed else "DoRA unmerged (slow)" if route.model is None else "DoRA merged"

    def load(
        self, base_spec: str, progress: Callable[[float, str], None] | None = None, dtype: str = "auto"
    ) -> None:
        """Load the base model (a no-op when it is already the one loaded), dropping any other."""
        progress = progress or models._noop
        with self._lock:
            if self.loaded and base_spec == self.spec and dtype == self.dtype:
                return
            self.unload()
            device, torch_dtype = _device_and_dtype(dtype)
            tokenizer = models.load_tokenizer(base_spec, progress)
            model = models.load_model(base_spec, progress, dtype=torch_dtype).to(device).eval()
            model.requires_grad_(False)
            eos = model.generation_config.eos_token_id
            self._eos = {tokenizer.eos_token_id} | set(eos if isinstance(eos, list) else [eos])
            self._eos.discard(None)
            self._params = dict(model.named_parameters(remove_duplicate=False))
            self._buffers = dict(model.named_buffers(remove_duplicate=False))
            self._model, self._tokenizer, self._device = model, tokenizer, device
            self.spec, self.dtype, self._path = base_spec, dtype, models.resolve(base_spec)
        progress(1.0, f"{base_spec} ready for chat")

    def _require_loaded(self) -> None:
        if not self.loaded:
            raise ValueError("chat: no base model is loaded; load one first (e.g. 'default')")

    def add_adapter(self, path: str | Path) -> str:
        """Load a run's adapter or a checkpoint; returns its name (the same name when added twice)."""
        folder = adapter_folder(path)
        config = _adapter_config(folder)
        with self._lock:
            self._require_loaded()
            for name, known in self._folders.items():
                if known == folder:
                    return name
            declared = str(config.get("base_model_name_or_path") or "")
            if not _same_base(declared, self.spec, self._path):
                raise ValueError(
                    f"{folder}: this adapter was trained on {declared!r} but the chat has {self.spec!r} loaded; "
                    f"load {declared!r} as the base model to chat with it"
                )
            self._check_shapes(folder)
            name = label = adapter_label(folder)
            suffix = 2
            while name in self._folders or name == BASE:
                name, suffix = f"{label}-{suffix}", suffix + 1
            self._inject(folder, name)
            try:
                route = self._dora_route(name) if config.get("use_dora") else _Route(None, name, True)
            except BaseException:
                self._forget(name)
                raise
            self._folders[name], self._routes[name] = folder, route
            return name

    def _check_shapes(self, folder: Path) -> None:
        """Refuse an adapter made for another architecture before PEFT half-injects it."""
        from safetensors import safe_open

        file = folder / "adapter_model.safetensors"
        if not file.is_file():
            return  # a .bin adapter: PEFT's own load reports mismatches
        with safe_open(str(file), "pt") as weights:
            for key in weights.keys():  # noqa: SIM118 (safe_open is not iterable)
                found = re.match(r"base_model\.model\.(.+)\.lora_([AB])\.weight$", key)
                if not found:
                    continue
                base = self._params.get(f"{found[1]}.weight")
                shape = weights.get_slice(key).get_shape()
                axis = 1 if found[2] == "A" else 0
                want, got = (None if base is None else base.shape[axis]), shape[axis]
                if want != got:
                    raise ValueError(
                        f"{file}: layer {found[1]} does not match {self.spec!r} (adapter {got} vs model {want} "
                        "features): it was trained on another base model; load that model to chat with it"
                    )

    def _inject(self, folder: Path, name: str) -> None:
        from peft import PeftModel

        if self._peft is None:
            self._peft = PeftModel.from_pretrained(
                self._model, str(folder), adapter_name=name, is_trainable=False
            )
            self._peft.eval()
        else:
            self._peft.load_adapter(str(folder), adapter_name=name, is_trainable=False)

    def _dora_route(self, name: str) -> _Route:
        """Merge a DoRA adapter into a copy of the weights it touches; unmerged when memory is short."""
        import torch
        from peft.tuners.lora import LoraLayer
        from transformers import AutoModelForCausalLM

        layers = [
            (f"{module_name}.weight", module)
            for module_name, module in self._peft.base_model.model.named_modules()
            if isinstance(module, LoraLayer) and name in module.lora_magnitude_vector
        ]
        weights = [module.get_base_layer().weight for _, module in layers]
        if not _can_afford(sum(w.numel() * w.element_size() for w in weights), self._device):
            return _Route(None, name, mixed=False)
        with torch.no_grad():
            merged = {
                key: m.lora_variant[name].merge_safe(m, name, m.get_base_layer().weight.data)
                for key, m in layers
            }
        with torch.device("meta"):
            clone = AutoModelForCausalLM.from_config(self._model.config)
        for key, param in self._params.items():
            new = merged.get(key)
            _put(
                clone,
                key,
                param if new is None else torch.nn.Parameter(new, requires_grad=False),
                buffer=False,
            )
        for key, buffer in self._buffers.items():
            _put(clone, key, buffer, buffer=True)
        clone.generation_config = self._model.generation_config
        self._forget(name)
        return _Route(clone.eval(), name, mixed=False)

    def remove_adapter(self, name: str) -> None:
        """Forget one adapter and free what only it used."""
        with self._lock:
            route = self._routes.pop(name, None)
            self._folders.pop(name, None)
            if route is not None and route.model is None:
                self._forget(name)
        _free()

    def _forget(self, name: str) -> None:
        """Delete an adapter from the PEFT model; with none left, take the adapter layers out again."""
        self._peft.delete_adapter(name)
        left = list(self._peft.peft_config)
        if not left:
            self._model, self._peft = self._peft.unload(), None
        elif self._peft.active_adapter not in left:
            self._peft.set_adapter(left[0])  # PEFT keeps pointing at the deleted one otherwise

    def unload(self) -> None:
        """Drop the base model and every adapter; open streams end with finish 'unloaded'."""
        with self._lock:
            self._epoch += 1
            self._reset()
        _free()

    def _route(self, adapter: str | None) -> _Route:
        if adapter is None or adapter == BASE:
            return _Route(None, BASE, True)
        if adapter not in self._routes:
            loaded = ", ".join(self._routes) or "none"
            raise ValueError(f"chat: adapter {adapter!r} is not loaded (loaded: {loaded}); add it first")
        return self._routes[adapter]

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

    def _decode(self, sides: list, settings: GenSettings, stop: threading.Event | None):
        import torch

        settings = (settings or GenSettings()).check()
        with self._lock:
            self._require_loaded()
            routes = [self._route(adapter) for _, adapter in sides]
            seed = settings.seed
            prompts = [
                _prompt_ids(self._tokenizer, messages, settings.system_prompt) for messages, _ in sides
            ]
            rows = [_Row(p, torch.Generator().manual_seed(seed), seen=set(p)) for p in prompts]
            limit = self._room(rows, settings.max_new_tokens)
            groups: dict[tuple, _Group] = {}
            for i, route in enumerate(routes):
                key = (id(route.model), route.mixed or route.name)  # id(None): the shared weights
                groups.setdefault(key, _Group(route, [], [])).rows.append(i)
                groups[key].names.append(route.name)
            context = (self._epoch, self._tokenizer, frozenset(self._eos), limit)  # a later load changes them
            return self._loop(rows, list(groups.values()), settings, stop, context)

    def _loop(self, rows: list[_Row], groups: list[_Group], settings: GenSettings, stop, context: tuple):
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

        route = group.route
        # the shared weights are looked up per step: removing the last adapter unwraps the PeftModel
        model = (
            route.model if route.model is not None else self._peft if self._peft is not None else self._model
        )
        with torch.inference_mode():
            if group.cache is None:
                prompts = [rows[i].prompt for i in group.rows]
                width = max(len(p) for p in prompts)
                pad = self._tokenizer.pad_token_id
                pad = min(self._eos, default=0) if pad is None else pad  # masked out: any id will do
                ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
                group.mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
                group.positions = (group.mask.cumsum(-1) - 1).clamp(min=0)
            else:
                ids = group.next_ids
                group.mask = torch.cat([group.mask, torch.ones_like(ids)], dim=1)
                group.positions = group.positions[:, -1:] + 1
            kwargs = {
                "attention_mask": group.mask.to(self._device),
                "position_ids": group.positions.to(self._device),
            }
            if model is self._peft and route.mixed:
                kwargs["adapter_names"] = group.names
            elif model is self._peft:
                self._peft.set_adapter(route.name)  # unmerged DoRA cannot join a mixed batch
            out = model(
                input_ids=ids.to(self._device),
                past_key_values=group.cache,
                use_cache=True,
                logits_to_keep=1,
                **kwargs,
            )
            group.cache = out.past_key_values
            logits = out.logits[:, -1, :].to("cpu", torch.float32, copy=True)
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
            group.next_ids = torch.tensor(picks).unsqueeze(1)


def _advance(row: _Row, tokenizer, eos: frozenset, finish: str | None, limit: int, now: float) -> None:
    """Take in the token `_step` just picked for a row: EOS, length limit, or more text."""
    reply = row.reply
    if reply.finish is not None:
        return
    if finish is None and reply.tokens < len(row.tokens):  # _step appended a token
        token = row.tokens[-1]
        if token in eos:
            row.tokens.pop()
            finish = "eos"
        else:
            reply.tokens = len(row.tokens)
            text = tokenizer.decode(row.tokens, skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                reply.text = text
            if reply.tokens >= limit:
                finish = "length"
    if finish is not None:
        reply.text = tokenizer.decode(row.tokens, skip_special_tokens=True)
    reply.elapsed, reply.finish = now, finish


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
        _ENGINE.load(base_spec, progress)
    return _ENGINE
