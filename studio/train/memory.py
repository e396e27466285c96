"""Memory estimate of a training run from the model's config and the recipe alone (no weights).

Counts weights (16-bit, 8-bit or NF4), trainable parameters with their gradients and AdamW state,
activations (with or without gradient checkpointing) and the logits, and compares the total with
the device's memory. Each term's assumptions are listed in the result, so a person can see why.
Knows nothing about TRL, data or the UI.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

GB = 1024**3
# The most fp32 logits the studio's CPU loss head (train/lm_head.py) holds at once: 64 MB
LM_HEAD_CHUNK_VALUES = 1 << 24
NF4_BYTES = 0.5  # 4 bits per weight
NF4_CONSTANTS = {True: 0.127 / 8, False: 32 / 64 / 8}  # absmax per 64-weight block, double-quantized or fp32
INT8_BYTES = 1.0 + 4 / 4096  # int8 weights + one fp32 scale per row (rows ~4k wide)
# What the framework holds beyond the tensors counted below. CUDA: context and caching-allocator
# slack. CPU: the C allocator keeps freed blocks per thread arena, and the 4-bit kernels dequantize
# to fp32 temporaries; calibrated on 3-step runs of the default model on a 2-core machine (measured
# peaks LoRA 1.08 GB, QLoRA 1.11-1.17 GB; the estimate then reads 1.31 and 1.14 GB).
FRAMEWORK_GB = {"cpu": 0.4, "cuda": 0.6}


@dataclass(frozen=True)
class Shape:
    """The numbers of a decoder-only transformer that memory depends on."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def linear_params(self) -> int:
        attn = 2 * self.hidden * self.heads * self.head_dim + 2 * self.hidden * self.kv_heads * self.head_dim
        return self.layers * (attn + 3 * self.hidden * self.intermediate)

    @property
    def n_params(self) -> int:
        return self.linear_params + self.embed_params + self.layers * 2 * self.hidden + self.hidden

    def projection(self, name: str) -> tuple[int, int]:
        """(in, out) features of one projection of a layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        dims = {
            "q_proj": (self.hidden, q),
            "k_proj": (self.hidden, kv),
            "v_proj": (self.hidden, kv),
            "o_proj": (q, self.hidden),
            "gate_proj": (self.hidden, self.intermediate),
            "up_proj": (self.hidden, self.intermediate),
            "down_proj": (self.intermediate, self.hidden),
        }
        return dims.get(name, (self.hidden, self.hidden))


@dataclass
class MemoryEstimate:
    """Bytes per part, the total, and the verdict against the device's memory."""

    weights: float
    trainable: float  # adapter (or full) weights' gradients and optimizer state, plus adapter weights
    activations: float
    logits: float
    overhead: float
    total: float
    device_memory: float | None
    verdict: str  # "fits" | "tight" | "will not fit" | "unknown"
    assumptions: list[str] = field(default_factory=list)

    @property
    def total_gb(self) -> float:
        return self.total / GB

    def summary(self) -> str:
        parts = ", ".join(
            f"{name} {getattr(self, name) / GB:.2f} GB"
            for name in ("weights", "trainable", "activations", "logits", "overhead")
        )
        device = f" of {self.device_memory / GB:.1f} GB" if self.device_memory else ""
        return f"~{self.total_gb:.1f} GB{device}: {self.verdict} ({parts})"


def shape_of(config) -> Shape:
    """A Shape from a transformers config, a dict of one, or a models.ModelInfo (its config is read)."""
    if hasattr(config, "spec") and hasattr(config, "n_params"):  # a ModelInfo: read its config file
        from studio import models

        config = models.load_config(config.spec)
    if isinstance(config, dict):
        config = _Attrs(config)
    text = getattr(config, "text_config", None) or config
    hidden = int(text.hidden_size)
    heads = int(text.num_attention_heads)
    return Shape(
        hidden=hidden,
        layers=int(text.num_hidden_layers),
        heads=heads,
        kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(text, "head_dim", None) or hidden // heads),
        intermediate=int(getattr(text, "intermediate_size", None) or 4 * hidden),
        vocab=int(text.vocab_size),
        tied=bool(getattr(text, "tie_word_embeddings", False)),
    )


class _Attrs:
    def __init__(self, data: dict) -> None:
        self.__dict__.update(data)


@functools.cache
def bf16_supported() -> bool:
    """Does this machine compute in bfloat16 natively (CUDA Ampere+, or a CPU with AVX512-BF16/AMX)?"""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def device_memory_bytes() -> tuple[float, str]:
    """(memory of the training device in bytes, "cuda" | "cpu")."""
    import psutil
    import torch

    if torch.cuda.is_available():
        return float(torch.cuda.get_device_properties(0).total_memory), "cuda"
    return float(psutil.virtual_memory().available), "cpu"


def _lora_params(shape: Shape, recipe) -> int:
    lo = recipe.lora
    per_layer = 0
    for name in lo.targets:
        fan_in, fan_out = shape.projection(name)
        per_layer += lo.r * (fan_in + fan_out) + (fan_out if lo.use_dora else 0)
    return shape.layers * per_layer


def _weights(shape: Shape, recipe, bf16: bool, notes: list[str]) -> float:
    q = recipe.quantization
    half = 2 if bf16 else 4
    if q.load_in_4bit:
        per = NF4_BYTES + NF4_CONSTANTS[q.double_quant]
        notes.append(f"linear layers in NF4 ({per * 8:.2f} bits each); embeddings in {8 * half}-bit")
        return shape.linear_params * per + (shape.n_params - shape.linear_params) * half
    if q.load_in_8bit:
        notes.append(f"linear layers in int8; embeddings in {8 * half}-bit")
        return shape.linear_params * INT8_BYTES + (shape.n_params - shape.linear_params) * half
    notes.append(f"weights in {'bf16' if bf16 else 'fp32'}")
    return shape.n_params * float(half)


def _trainable(shape: Shape, recipe, bf16: bool, notes: list[str]) -> float:
    if not recipe.lora.enabled:
        if bf16:
            notes.append(
                "full fine-tune in pure bf16: gradients and both AdamW moments in bf16 (6 bytes/param)"
            )
            return shape.n_params * 6.0
        notes.append("full fine-tune in fp32: gradients + AdamW moments (12 bytes/param)")
        return shape.n_params * 12.0
    n = _lora_params(shape, recipe)
    quantized = recipe.quantization.load_in_4bit or recipe.quantization.load_in_8bit
    weight = 2 if quantized else 4  # TRL keeps a quantized model's adapter in bf16
    notes.append(f"{n / 1e6:.1f}M adapter parameters: weights + gradients ({weight} bytes each) + fp32 AdamW")
    return n * (2 * weight + 8.0)


def _tokens(recipe, seq_length: int | None = None) -> int:
    pairs = 2 if recipe.method in ("dpo", "simpo", "orpo", "kto") else 1  # chosen+rejected, or KL batch
    return recipe.training.batch_size * (seq_length or recipe.data.max_length) * pairs


def lm_head_chunk_tokens(vocab: int) -> int:
    """Tokens per chunk of the studio's CPU loss head: about 340 with a 49k vocabulary."""
    return max(16, LM_HEAD_CHUNK_VALUES // vocab)


def _logits(shape: Shape, recipe, tokens: int, kind: str, notes: list[str]) -> float:
    """The loss's logits. SFT and KTO score labels through a fused LM head that holds one tile of
    logits at a time: on a CPU the studio's (train/lm_head.py: a chunk of tokens over the whole
    vocabulary, bf16 logits, fp32 log-probabilities and their exp), elsewhere TRL's (up to 4096
    tokens x 32768 entries in 16 bits). DPO, SimPO and ORPO hold every position's logits, upcast
    to fp32, and their gradient."""
    if recipe.method in ("sft", "kto") and kind == "cpu":
        rows = min(tokens, lm_head_chunk_tokens(shape.vocab))
        notes.append(f"logits: the loss scores {rows} tokens at a time (10 bytes per vocabulary entry)")
        return rows * shape.vocab * 10.0
    if recipe.method in ("sft", "kto"):
        rows, width = min(tokens, 4096), min(shape.vocab, 32768)
        notes.append(
            f"logits: the loss scores a tile of {rows} tokens x {width} vocabulary entries at a time"
        )
        return rows * width * 2.0
    notes.append("logits upcast to fp32 for the loss, and their gradient (8 bytes per vocabulary entry)")
    return tokens * shape.vocab * 8.0


def _activations(
    shape: Shape, recipe, bf16: bool, checkpointing: bool, tokens: int, notes: list[str]
) -> float:
    act = 2 if bf16 else 4
    lo = recipe.lora
    # each adapted projection's dropped input (q, k, v, o, gate, up read hidden-wide rows, down
    # reads intermediate-wide ones): a full copy under PEFT's dropout (DoRA, Unsloth), a 1-byte
    # mask where the studio folds the dropout into lora_A (train/lora_dropout.py), none without one
    dropout = lo.enabled and lo.dropout > 0
    folded = dropout and not lo.use_dora and recipe.backend != "unsloth"
    copy = 1 if folded else act if dropout else 0
    per_layer = act * (10 * shape.hidden + 4 * shape.intermediate) + copy * (
        6 * shape.hidden + shape.intermediate
    )
    if checkpointing:
        notes.append("gradient checkpointing: one block's activations plus each block's input")
        return tokens * (act * shape.layers * shape.hidden + per_layer)
    notes.append("no gradient checkpointing: every block's activations kept for the backward pass")
    return tokens * shape.layers * per_layer


def estimate_memory(
    model_info_or_config,
    recipe,
    device_memory: float | None = None,
    gradient_checkpointing: bool | None = None,
    bf16: bool | None = None,
    seq_length: int | None = None,
) -> MemoryEstimate:
    """Estimate peak training memory; `device_memory` in bytes (default: this machine's).

    `seq_length` is the longest batch's length when the data is known (padding goes to the longest
    example of a batch); by default the recipe's max_length, the worst case.
    """
    shape = shape_of(model_info_or_config)
    if bf16 is None:
        from studio.train.recipes import decide

        bf16 = decide(recipe.training.bf16, bf16_supported)
    if gradient_checkpointing is None:
        gradient_checkpointing = recipe.training.gradient_checkpointing is True
    kind = "cuda"
    if device_memory is None:
        device_memory, kind = device_memory_bytes()
    tokens = _tokens(recipe, seq_length)
    length = seq_length or recipe.data.max_length
    notes = [
        f"{shape.n_params / 1e9:.2f}B parameters; {tokens} tokens per step "
        f"({recipe.training.batch_size} x {length}{' x 2: chosen and rejected' if tokens > recipe.training.batch_size * length else ''})"
    ]
    weights = _weights(shape, recipe, bf16, notes)
    trainable = _trainable(shape, recipe, bf16, notes)
    activations = _activations(shape, recipe, bf16, gradient_checkpointing, tokens, notes)
    logits = _logits(shape, recipe, tokens, kind, notes)
    overhead = FRAMEWORK_GB[kind] * GB
    notes.append(f"{FRAMEWORK_GB[kind]} GB for the framework ({kind} allocator and kernels)")
    total = weights + trainable + activations + logits + overhead
    return MemoryEstimate(
        weights,
        trainable,
        activations,
        logits,
        overhead,
        total,
        device_memory,
        _verdict(total, device_memory),
        notes,
    )


def _verdict(total: float, device: float | None) -> str:
    if not device:
        return "unknown"
    if total <= 0.8 * device:
        return "fits"
    return "tight" if total <= device else "will not fit"
