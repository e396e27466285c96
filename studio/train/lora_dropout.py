"""LoRA dropout that keeps a 1-byte mask instead of a copy of each projection's input.

PEFT computes `lora_B(lora_A(dropout(x)))`: every adapted projection draws its own dropout of x,
and `lora_A` saves that dropped copy for its weight gradient. With LoRA on the seven projections
of a block, those copies (fp32, one per projection, even where q/k/v read the same x) were about
40% of a step's saved activations, and drawing the masks with torch's per-element sampler took a
quarter of a CPU step. Here `lora_A` and the dropout are one autograd function: it saves x (shared
by the projections that read it), the 0/1 mask as bool and A, and recomputes the dropped input in
the backward pass. The mask comes from 64-bit random integers cut into eight 8-bit lanes (one
sixth of the time of torch's per-element sampler here), so the drop rate is p rounded to 1/256
(0.05 -> 0.0508) and the kept values are scaled by 1/(1 - that rate). Without dropout (p 0) the
layer keeps one x for q, k and v where PEFT, with a bf16 base, saved a cast of x per projection.

Same model, same loss, same saved adapter (the weights stay the same Parameters under the same
names). Only plain LoRA layers are changed: DoRA and other variants apply their dropout in their
own code, so they keep PEFT's. Knows nothing about trainers, recipes or the UI.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

_LEVELS = 256


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A bool tensor of `shape`, True with probability 1 - p (p rounded to 1/256)."""
    n = shape.numel()
    lanes = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64, device=device)
    return lanes.view(torch.int8)[:n].view(shape) >= round(p * _LEVELS) - _LEVELS // 2


def kept_fraction(p: float) -> float:
    return 1.0 - round(p * _LEVELS) / _LEVELS


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """What autocast would run the matmul in, or the weight's dtype without autocast."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return weight.dtype


class _DroppedLinear(torch.autograd.Function):
    """y = (x * keep) @ Wᵀ * scale, saving x, keep and W rather than the dropped copy of x.

    The 1/(1 - p) scale is applied to the rank-sized tensors (y and its gradient), not to x."""

    @staticmethod
    def forward(ctx, x, weight, keep, scale: float, dtype: torch.dtype):
        with torch.autocast(x.device.type, enabled=False):
            out = F.linear(torch.where(keep, x.to(dtype), 0.0), weight.to(dtype)).mul_(scale)
        ctx.save_for_backward(x, weight, keep)
        ctx.scale, ctx.dtype = scale, dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, keep = ctx.saved_tensors
        grad = grad.to(ctx.dtype) * ctx.scale
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.where(keep, grad @ weight.to(ctx.dtype), 0.0).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dropped = torch.where(keep, x.to(ctx.dtype), 0.0).reshape(-1, x.shape[-1])
            grad_w = (grad.reshape(-1, grad.shape[-1]).T @ dropped).to(weight.dtype)
        return grad_x, grad_w, None, None, None


class DroppedLoraA(nn.Module):
    """PEFT's `lora_A` linear with the dropout in front of it folded in (training only).

    Holds the same weight Parameter, so the optimizer, checkpoints and the saved adapter see the
    same tensor under the same name (`lora_A.<adapter>.weight`)."""

    def __init__(self, linear: nn.Linear, p: float) -> None:
        super().__init__()
        self.weight = linear.weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.p > 0:
            keep = keep_mask(x.shape, self.p, x.device)
            return _DroppedLinear.apply(
                x, self.weight, keep, 1.0 / kept_fraction(self.p), _compute_dtype(x, self.weight)
            )
        if torch.is_autocast_enabled(x.device.type):
            return F.linear(x, self.weight)  # autocast casts the weight; x, shared, is what is saved
        return F.linear(x.to(self.weight.dtype), self.weight)  # the cast PEFT's layer would make

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, p={self.p}"


def fold(model: nn.Module) -> int:
    """Fold every plain LoRA layer's dropout (none where p is 0) into its `lora_A`; returns how
    many were folded.

    A layer whose adapters are all folded also stops casting x to the adapter's dtype before
    `lora_A` (PEFT's `cast_input_dtype_enabled`): with a bf16 base that cast made an fp32 copy of x
    per projection, which the folded function would save; it casts inside instead, to what the
    matmul runs in, and saves the x that q, k and v share."""
    folded = 0
    for module in model.modules():
        drops, a_layers = getattr(module, "lora_dropout", None), getattr(module, "lora_A", None)
        if not isinstance(drops, nn.ModuleDict) or not isinstance(a_layers, nn.ModuleDict):
            continue
        variants = getattr(module, "lora_variant", {}) or {}
        linears = dict(a_layers.items())
        for name, drop in list(drops.items()):
            linear = linears.get(name)
            plain = type(linear) is nn.Linear and linear.bias is None and name not in variants
            if isinstance(drop, nn.Dropout | nn.Identity) and plain:
                p = drop.p if isinstance(drop, nn.Dropout) else 0.0
                a_layers[name] = DroppedLoraA(linear, p).train(linear.training)
                drops[name] = nn.Identity()
                folded += 1
        if a_layers and all(isinstance(a, DroppedLoraA) for a in a_layers.values()):
            module.cast_input_dtype_enabled = False
    return folded
