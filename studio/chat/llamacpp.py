"""The llama.cpp path for chat on CPUs: which path serves a pane, the files it needs, its contexts.

On a CPU llama.cpp decodes faster than PyTorch eager on the same weights, so chat uses it when a
binding (`llama-cpp-python`) is installed, the model runs on the CPU, its architecture is one the
GGUF writer knows and the side's adapter is a plain LoRA; otherwise, and always for DoRA, the
PyTorch engine (studio.chat.engine) serves. `choose_path` says which, and why, in plain words.

Files, made once and kept under STUDIO_HOME/models/llama.cpp (this module owns that folder):
- the base as a 16-bit GGUF written from the same safetensors the PyTorch engine loads
  (studio.ggufwriter.export_gguf). 16-bit, not the embedded model's 4-bit GGUF: llama.cpp
  multiplies 4-bit weights with 8-bit activations, and the answers then part from the PyTorch
  engine's within a few words on 3 of 5 probe prompts; from the 16-bit file they match for the
  first 32 tokens on all 5 (bench/RESULTS.md has both speeds).
- each LoRA adapter as a GGUF LoRA (`lora_to_gguf`: `blk.N.<tensor>.weight.lora_a/.lora_b`,
  `adapter.lora.alpha`), q/k rows permuted the way the GGUF base stores them.

`LlamaCppBase` maps the base once and lends `Context`s (each its own KV cache, with one adapter
or none applied) to the engine's decode loop, which samples from their logits exactly as it does
from PyTorch's: same sampler, seeds, stop and streaming. Knows nothing about the UI or training.
The binding has no prebuilt wheel for this platform; `make install-llama-cpp` (run by
`make install-dev`) builds it for a portable AVX2 CPU in about 8 minutes.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from studio.ggufwriter import GGUF_ARCHITECTURES

TORCH = "PyTorch"
LLAMA_CPP = "llama.cpp"
# the architectures studio.ggufwriter writes as GGUF (llama.cpp's blk.N.attn_q ... names)
ARCHITECTURES = set(GGUF_ARCHITECTURES)
_TENSOR = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}


def unavailable() -> str | None:
    """Why the llama.cpp path cannot run here (None when it can)."""
    if os.environ.get("STUDIO_CHAT_PATH", "").lower() == "pytorch":
        return "STUDIO_CHAT_PATH=pytorch asks for the PyTorch engine"
    if importlib.util.find_spec("llama_cpp") is None:
        return "the fast CPU engine is not installed: `make install-llama-cpp` builds it (about 8 min, once)"
    return None


@dataclass(frozen=True)
class PathChoice:
    """Which path serves a chat pane, and the reason in plain words."""

    path: str  # TORCH or LLAMA_CPP
    reason: str

    def label(self) -> str:
        return f"{self.path} ({self.reason})"


FASTEST = PathChoice(LLAMA_CPP, "fastest on this CPU")


def base_problem(device: str, architecture: str, problem: str | None = None) -> str | None:
    """Why a base model cannot be served by llama.cpp (None when it can)."""
    if device != "cpu":
        return f"the model runs on {device}"
    if problem:
        return problem
    if architecture not in ARCHITECTURES:
        return f"llama.cpp is not wired for {architecture}"
    return None


def lora_problem(config: dict) -> str | None:
    """Why an adapter (its adapter_config.json) cannot be served by llama.cpp (None when it can)."""
    if config.get("use_dora"):
        return "DoRA adapters run on PyTorch only"
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        return f"{config.get('peft_type')} adapters run on PyTorch only"
    unknown = sorted(set(_targets(config)) - set(_TENSOR))
    if unknown:
        return f"the adapter changes {', '.join(unknown)}, which llama.cpp LoRA lacks"
    if config.get("modules_to_save") or config.get("rank_pattern") or config.get("alpha_pattern"):
        return "the adapter trains whole modules or per-layer ranks, which llama.cpp LoRA lacks"
    if config.get("bias", "none") != "none":
        return "the adapter trains biases, which llama.cpp LoRA lacks"
    return None


def choose_path(
    device: str, architecture: str, adapter_configs: list[dict], problem: str | None = None
) -> PathChoice:
    """llama.cpp on a CPU when the binding, the architecture and plain-LoRA adapters allow it."""
    why = base_problem(device, architecture, problem)
    for config in adapter_configs:
        why = why or lora_problem(config)
    return PathChoice(TORCH, why) if why else FASTEST


def _targets(config: dict) -> list[str]:
    targets = config.get("target_modules") or []
    return [targets] if isinstance(targets, str) else list(targets)


def _permute(rows, heads: int):
    """Reorder output rows of q/k as the GGUF base stores them (llama.cpp's rotary layout)."""
    shape = rows.shape
    return rows.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def lora_to_gguf(adapter: str | Path, model_config: dict, out: str | Path) -> Path:
    """Write a PEFT LoRA adapter folder as a GGUF LoRA file; returns `out`.

    `model_config` is the base's config.json (heads are needed for the q/k row order). Raises
    ValueError naming the file and the fix for DoRA, unknown target modules or a missing file.
    """
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    folder, out = Path(adapter), Path(out)
    config = json.loads((folder / "adapter_config.json").read_text())
    choice = choose_path("cpu", model_config.get("architectures", ["?"])[0], [config])
    if choice.path != LLAMA_CPP:
        raise ValueError(f"{folder}: cannot convert for llama.cpp: {choice.reason}")
    weights_file = folder / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise ValueError(f"{weights_file} is missing: save the adapter with safetensors (PEFT's default)")
    heads = int(model_config["num_attention_heads"])
    kv_heads = int(model_config.get("num_key_value_heads") or heads)
    rank = int(config.get("r", 8))
    alpha = float(config.get("lora_alpha", rank))
    if config.get("use_rslora"):  # PEFT scales by alpha/sqrt(r); llama.cpp by alpha/r
        alpha *= math.sqrt(rank)
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    count = 0
    for key, value in sorted(load_file(str(weights_file)).items()):
        # base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
        parts = key.split(".")
        if "layers" not in parts or parts[-2] not in ("lora_A", "lora_B"):
            raise ValueError(f"{weights_file}: tensor {key} is not a LoRA matrix of a decoder layer")
        layer, module = int(parts[parts.index("layers") + 1]), parts[-3]
        data = value.astype(np.float32)
        if parts[-2] == "lora_B" and module in ("q_proj", "k_proj"):
            data = _permute(data, heads if module == "q_proj" else kv_heads)
        suffix = "lora_a" if parts[-2] == "lora_A" else "lora_b"
        writer.add_tensor(f"blk.{layer}.{_TENSOR[module]}.weight.{suffix}", np.ascontiguousarray(data))
        count += 1
    if not count:
        raise ValueError(f"{weights_file}: no LoRA matrices found")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


# ---- files: made once per source and kept ---------------------------------------------------------


def _cache_dir() -> Path:
    from studio import workspace

    folder = workspace.models_dir() / "llama.cpp"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _key(files: list[Path]) -> str:
    """Changes when any source file is replaced or rewritten."""
    digest = hashlib.sha1()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def _made_once(target: Path, make: Callable[[Path], None]) -> Path:
    """`target`, written by `make(partial)` under a lock the first time (two apps make it once)."""
    if target.is_file():
        return target
    with open(target.with_name(f".{target.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():
            partial = target.with_name(f".{target.name}.partial")
            make(partial)
            partial.replace(target)
    return target


def base_gguf(model_dir: str | Path, progress: Callable[[float, str], None] | None = None) -> Path:
    """The base model folder as a 16-bit GGUF (written on first use: seconds for 135M parameters)."""
    from studio.ggufwriter import export_gguf

    folder = Path(model_dir)
    weights = sorted(folder.glob("model*.safetensors"))
    if not weights:
        raise ValueError(f"{folder}: no model*.safetensors to write as GGUF")
    target = _cache_dir() / f"{folder.name}-{_key(weights)}.f16.gguf"
    if not target.is_file() and progress:
        progress(0.9, "Preparing the fast CPU chat (llama.cpp), once for this model")
    return _made_once(target, lambda partial: export_gguf(folder, partial, f16=True))


def forget_base(model_dir: str | Path) -> int:
    """Delete the GGUF copies made of a model folder (it was deleted); returns the bytes freed."""
    freed = 0
    for path in _cache_dir().glob(f"{Path(model_dir).name}-*.f16.gguf"):
        freed += path.stat().st_size
        path.unlink(missing_ok=True)
    return freed


def _lora_sources(folder: Path) -> list[Path]:
    return [folder / "adapter_config.json", folder / "adapter_model.safetensors"]


def lora_gguf(adapter: str | Path, model_config: dict) -> Path:
    """An adapter folder as a GGUF LoRA (converted on first use, again when the adapter changes)."""
    folder = Path(adapter)
    missing = [p for p in _lora_sources(folder) if not p.is_file()]
    if missing:
        raise ValueError(f"{missing[0]} is missing: save the adapter with safetensors (PEFT's default)")
    target = _cache_dir() / f"lora-{_key(_lora_sources(folder))}.gguf"
    return _made_once(target, lambda partial: lora_to_gguf(folder, model_config, partial))


def forget_loras(run_folder: str | Path) -> int:
    """Delete the GGUF LoRAs made of a run's adapters and checkpoints (before the run is deleted)."""
    freed = 0
    for config in Path(run_folder).rglob("adapter_config.json"):
        sources = _lora_sources(config.parent)
        if all(p.is_file() for p in sources):
            target = _cache_dir() / f"lora-{_key(sources)}.gguf"
            if target.is_file():
                freed += target.stat().st_size
                target.unlink(missing_ok=True)
    return freed


# ---- the runtime ----------------------------------------------------------------------------------


class Context:
    """One llama.cpp context: a KV cache with one adapter (or none) applied; feeds ids, gives logits."""

    def __init__(self, base: LlamaCppBase, adapter: str | None) -> None:
        import llama_cpp
        from llama_cpp import _internals

        params = llama_cpp.llama_context_default_params()
        params.n_ctx = base.n_ctx
        params.n_batch = params.n_ubatch = 512
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = base.threads
        params.no_perf = True
        self.adapter, self.n_ctx = adapter, base.n_ctx
        self._ctx = _internals.LlamaContext(model=base._model, params=params, verbose=False)
        self._batch = _internals.LlamaBatch(n_tokens=512, embd=0, n_seq_max=1, verbose=False)
        self._vocab = base.vocab
        self._past = 0
        if adapter is not None:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(base._loras[adapter])
            scales = (llama_cpp.ctypes.c_float * 1)(1.0)
            if llama_cpp.llama_set_adapters_lora(self._ctx.ctx, handles, 1, scales):
                raise RuntimeError(f"llama.cpp refused the adapter {adapter!r}")

    def prefill(self, ids: list[int]):
        """Start a new answer from `ids` (the cache is cleared); the next token's logits (numpy)."""
        self._ctx.kv_cache_clear()
        self._past = 0
        for start in range(0, len(ids), 512):
            self._run(ids[start : start + 512])
        return self._logits()

    def feed(self, token: int):
        """Append one token; the next token's logits."""
        self._run([token])
        return self._logits()

    def _run(self, ids: list[int]) -> None:
        if self._past + len(ids) > self.n_ctx:
            raise ValueError(
                f"llama.cpp: {self._past + len(ids)} tokens exceed its {self.n_ctx}-token window"
            )
        self._batch.set_batch(ids, n_past=self._past, logits_all=False)
        self._ctx.decode(self._batch)
        self._past += len(ids)

    def _logits(self):
        import numpy as np

        return np.ctypeslib.as_array(self._ctx.get_logits_ith(-1), shape=(self._vocab,)).copy()

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()


class LlamaCppBase:
    """A GGUF base mapped once, its GGUF LoRA adapters, and idle contexts lent to decode loops.

    Not thread-safe on its own: the chat engine calls it under its lock.
    """

    IDLE_PER_ADAPTER = 2

    def __init__(self, gguf: str | Path, n_ctx: int = 4096, threads: int | None = None) -> None:
        import llama_cpp
        from llama_cpp import _internals

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # no load chatter on stderr
        self.path, self.n_ctx = Path(gguf), n_ctx
        self.threads = threads or os.cpu_count() or 1
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        self._model = _internals.LlamaModel(path_model=str(gguf), params=params, verbose=False)
        self.vocab = self._model.n_vocab()
        self._loras: dict[str, object] = {}
        self._idle: dict[str | None, list[Context]] = {}

    def add_lora(self, name: str, gguf_lora: str | Path) -> None:
        import llama_cpp

        if name in self._loras:
            return
        handle = llama_cpp.llama_adapter_lora_init(self._model.model, str(gguf_lora).encode())
        if handle is None:
            raise ValueError(f"{gguf_lora}: llama.cpp could not read this LoRA (does it match the base?)")
        self._loras[name] = handle

    def serves(self, adapter: str | None) -> bool:
        return adapter is None or adapter in self._loras

    def remove_lora(self, name: str) -> None:
        """Stop lending contexts with this adapter. Its few MB stay mapped until the base closes
        (llama.cpp frees adapters with their model): a stream still decoding with it stays valid."""
        for context in self._idle.pop(name, []):
            context.close()
        self._loras.pop(name, None)

    def borrow(self, adapter: str | None) -> Context:
        """An idle context for this adapter, or a new one over the same mapped weights."""
        idle = self._idle.get(adapter)
        return idle.pop() if idle else Context(self, adapter)

    def give_back(self, context: Context) -> None:
        idle = self._idle.setdefault(context.adapter, [])
        if (
            self._model.model is None
            or not self.serves(context.adapter)
            or len(idle) >= self.IDLE_PER_ADAPTER
        ):
            context.close()
        else:
            idle.append(context)

    def close(self) -> None:
        for contexts in self._idle.values():
            for context in contexts:
                context.close()
        self._idle.clear()
        self._loras.clear()
        self._model.close()  # frees the contexts still lent and the adapters with it
