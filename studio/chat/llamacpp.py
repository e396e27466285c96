"""The llama.cpp path for chat on CPUs: which path serves a pane, and LoRA adapters as GGUF LoRA.

On a CPU llama.cpp decodes several times faster than PyTorch eager on the same model file, so
chat uses it when a binding (`llama-cpp-python`) is installed, the model runs on the CPU, the base
has a GGUF file (the embedded default model ships as one) and every adapter is a plain LoRA on an
architecture llama.cpp knows; otherwise the PyTorch engine (studio.chat.engine) serves, and always
for DoRA. `choose_path` says which, and why, in plain words for the Chat tab.

`lora_to_gguf` writes a PEFT LoRA adapter as a GGUF LoRA adapter (the layout of llama.cpp's own
converter: `blk.N.<tensor>.weight.lora_a/.lora_b`, `adapter.lora.alpha`), with q/k rows permuted
the way the GGUF base stores them. `LlamaCppEngine` streams the same `Reply` objects as the
PyTorch engine (prompt built and text decoded by the same tokenizer code), one context per side
over one memory-mapped base. Knows nothing about the UI, training or the preference store.

No prebuilt wheel of a llama.cpp binding installs on this platform today (llama-cpp-python ships
sources only; other bindings need a newer glibc/libstdc++), so the binding is optional: build it
with `python -m bench --install-llama-cpp` (portable AVX2 flags, ~8 min on 2 cores). Measured on
the embedded model with that build: 2.6x the PyTorch engine's fp32 tokens/s (whole answers, first
token included: indicative, see bench/RESULTS.md); the greedy text equals
the engine's for 32 tokens on 2 of 5 held-out prompts (llama.cpp multiplies the Q4_1 weights with
8-bit activations, the engine with fp32 ones, so near-ties can flip early).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

TORCH = "PyTorch"
LLAMA_CPP = "llama.cpp"
# Hugging Face architectures whose GGUF tensors llama.cpp names as below (blk.N.attn_q ...)
ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}
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
        return (
            "no llama.cpp binding is installed (`python -m bench --install-llama-cpp` builds "
            "llama-cpp-python for this CPU)"
        )
    return None


@dataclass(frozen=True)
class PathChoice:
    """Which path serves a chat pane, and the reason in plain words."""

    path: str  # TORCH or LLAMA_CPP
    reason: str

    def label(self) -> str:
        return f"{self.path} ({self.reason})"


def choose_path(
    device: str,
    architecture: str,
    has_gguf: bool,
    adapter_configs: list[dict],
    problem: str | None = None,
) -> PathChoice:
    """llama.cpp on a CPU when the binding, a GGUF base and plain-LoRA adapters allow it."""
    if device != "cpu":
        return PathChoice(TORCH, f"the model runs on {device}")
    if problem:
        return PathChoice(TORCH, problem)
    if architecture not in ARCHITECTURES:
        return PathChoice(TORCH, f"llama.cpp adapters are not wired for {architecture}")
    if not has_gguf:
        return PathChoice(TORCH, "this base has no GGUF file yet (export it from the Publish tab)")
    for config in adapter_configs:
        if config.get("use_dora"):
            return PathChoice(TORCH, "DoRA adapters run on PyTorch only")
        unknown = sorted(set(_targets(config)) - set(_TENSOR))
        if unknown:
            return PathChoice(TORCH, f"the adapter changes {', '.join(unknown)}, which llama.cpp LoRA lacks")
    return PathChoice(LLAMA_CPP, "fastest on this CPU")


def path_for(engine, adapters: list[str | None]) -> PathChoice:
    """Which path would serve a pane of a loaded ChatEngine answering with these adapters."""
    from studio import models

    model = engine._model
    if model is None:
        return PathChoice(TORCH, "no model is loaded")
    configs = []
    for name in adapters:
        if name is not None:
            folder = engine.adapters[name]
            configs.append(json.loads((Path(folder) / "adapter_config.json").read_text()))
    architecture = (getattr(model.config, "architectures", None) or ["?"])[0]
    has_gguf = engine.spec == "default" and models.gguf_path().is_file()
    device = next(model.parameters()).device.type
    return choose_path(device, architecture, has_gguf, configs, unavailable())


def _targets(config: dict) -> list[str]:
    targets = config.get("target_modules") or []
    return [targets] if isinstance(targets, str) else list(targets)


def _permute(rows, heads: int):
    """Reorder output rows of q/k as the GGUF base stores them (llama.cpp's rotary layout)."""
    shape = rows.shape
    return rows.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def lora_to_gguf(adapter: str | Path, model_config: dict, out: str | Path) -> Path:
    """Write a PEFT LoRA adapter folder as a GGUF LoRA file next to nothing else; returns `out`.

    `model_config` is the base's config.json (heads are needed for the q/k row order). Raises
    ValueError naming the file and the fix for DoRA, unknown target modules or a missing file.
    """
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    folder, out = Path(adapter), Path(out)
    config = json.loads((folder / "adapter_config.json").read_text())
    choice = choose_path("cpu", model_config.get("architectures", ["?"])[0], True, [config])
    if choice.path != LLAMA_CPP:
        raise ValueError(f"{folder}: cannot convert for llama.cpp: {choice.reason}")
    weights_file = folder / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise ValueError(f"{weights_file} is missing: save the adapter with safetensors (PEFT's default)")
    heads = int(model_config["num_attention_heads"])
    kv_heads = int(model_config.get("num_key_value_heads") or heads)
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(config.get("lora_alpha", config.get("r", 8))))
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


class LlamaCppEngine:
    """Streams `Reply` objects from llama.cpp: one context per side over one memory-mapped GGUF."""

    def __init__(self) -> None:
        self._contexts: dict[str | None, object] = {}
        self._tokenizer = None
        self.spec: str | None = None

    def load(self, base_spec: str = "default") -> None:
        from llama_cpp import Llama

        from studio import models

        if base_spec != "default":
            raise ValueError(f"{base_spec!r}: the llama.cpp path serves the embedded default model only")
        self._tokenizer = models.load_tokenizer(base_spec)
        self._path = str(models.gguf_path())
        self._contexts = {None: Llama(self._path, n_ctx=2048, n_threads=os.cpu_count(), verbose=False)}
        self.spec = base_spec

    def add_lora(self, name: str, gguf_lora: str | Path) -> str:
        """A second context over the same mapped base, with the GGUF LoRA applied."""
        from llama_cpp import Llama

        self._contexts[name] = Llama(
            self._path, n_ctx=2048, n_threads=os.cpu_count(), lora_path=str(gguf_lora), verbose=False
        )
        return name

    def stream(self, messages: list[dict], adapter: str | None, settings):
        """Same stream as ChatEngine.stream: a growing `Reply`, finish eos|length."""
        import time

        from studio.chat.engine import Reply, _new_text, _prompt_ids, _Row

        settings = settings.check()
        llm = self._contexts[adapter]
        prompt = _prompt_ids(self._tokenizer, messages, settings.system_prompt)
        llm.set_seed(settings.seed)
        eos = {self._tokenizer.eos_token_id, llm.token_eos()}
        row, start = _Row(prompt=prompt, generator=None), time.perf_counter()
        for token in llm.generate(
            prompt,
            temp=settings.temperature,
            top_p=settings.top_p,
            top_k=0,
            repeat_penalty=settings.repetition_penalty,
            reset=True,
        ):
            done = token in eos
            if not done:
                row.tokens.append(token)
                row.reply.tokens = len(row.tokens)
                row.reply.text += _new_text(row, self._tokenizer)
            length = row.reply.tokens >= settings.max_new_tokens
            row.reply.elapsed = time.perf_counter() - start
            if done or length:
                row.reply.text = self._tokenizer.decode(row.tokens, skip_special_tokens=True)
                row.reply.finish = "eos" if done else "length"
            yield Reply(row.reply.text, row.reply.tokens, row.reply.elapsed, row.reply.finish)
            if row.reply.finish:
                return
