"""Plain LoRA adapters served without PEFT's layers: one hook per patched linear layer of a copy
of the base adds each row's x·Aᵀ·Bᵀ·scale.

PEFT's LoRA layer does per call what a chat step does not need (checks, dropout, the active
adapters' lookups, casts); with a rank-16 LoRA on every projection of the default model that was
~15 ms of a ~65 ms decode step. Here each linear layer the adapters patch gets one forward hook,
registered once; a batch of rows names its adapters in `rows(names)`, and each adapter present is
added to the rows that use it (a 0/1 row mask when the batch mixes adapters, as an A/B pair does).

Only adapters whose every layer PEFT itself computes that way are taken (`add` says which): no DoRA
or other LoRA variant, no bias on B, no fan-in/fan-out layout, no fully trained module. Knows
nothing about decoding, routes or the UI; `LoadedAdapters` decides which rows come here.
"""

from __future__ import annotations

from contextlib import contextmanager


class LeanLora:
    """A copy of the base (sharing its tensors) whose linear layers add the running rows' LoRA."""

    def __init__(self, model) -> None:
        self.model = model
        self.weights: dict[str, dict[str, tuple]] = {}  # adapter -> layer name -> (A, B, scale)
        self._hooked: set[str] = set()
        self._running: list[tuple[dict, object]] = []  # (an adapter's weights, row mask or None)

    def add(self, name: str, peft_model) -> bool:
        """Take adapter `name` from the PeftModel if every layer it patches is plain LoRA."""
        import torch
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer
        from peft.utils import AuxiliaryTrainingWrapper

        weights = {}
        for key, module in peft_model.base_model.model.named_modules():
            if isinstance(module, AuxiliaryTrainingWrapper) and name in module._adapters:
                return False  # a fully trained module (embeddings, head) or trained tokens
            if not isinstance(module, LoraLayer) or name not in module.lora_A:
                continue
            base = module.get_base_layer()
            if (
                type(module) is not LoraLinear
                or type(base) is not torch.nn.Linear
                or module.fan_in_fan_out
                or name in module.lora_variant
                or module.lora_bias.get(name)
            ):
                return False
            a, b = (m[name].weight.detach().to(base.weight.dtype) for m in (module.lora_A, module.lora_B))
            weights[key] = (a, b, module.scaling[name])
        for key in weights.keys() - self._hooked:
            self.model.get_submodule(key).register_forward_hook(self._hook(key))
            self._hooked.add(key)
        self.weights[name] = weights
        return True

    def remove(self, name: str) -> None:
        self.weights.pop(name, None)  # its hooks stay: they skip layers no running adapter patches

    def serves(self, name: str) -> bool:
        return name in self.weights

    @contextmanager
    def rows(self, names: list[str]):
        """While inside, a forward of `model` gives row i the adapter `names[i]` (others: none)."""
        self._running = self._plan(names)
        try:
            yield
        finally:
            self._running = []

    def _plan(self, names: list[str]) -> list[tuple[dict, object]]:
        """Each adapter among the rows, with a 0/1 mask over the rows (None: every row uses it)."""
        import torch

        plan = []
        for name in dict.fromkeys(names):
            weights = self.weights.get(name)
            if weights is None:
                continue
            if all(n == name for n in names):
                plan.append((weights, None))
                continue
            first = next(iter(weights.values()))[0]
            mask = torch.tensor([float(n == name) for n in names], dtype=first.dtype, device=first.device)
            plan.append((weights, mask.view(-1, 1, 1)))
        return plan

    def _hook(self, key: str):
        import torch.nn.functional as F

        def add_lora(module, args, out):
            for weights, mask in self._running:
                found = weights.get(key)
                if found is None:
                    continue
                a, b, scale = found
                delta = F.linear(F.linear(args[0], a), b).mul_(scale)  # PEFT's order of operations
                out = out.add_(delta if mask is None else delta.mul_(mask))
            return out

        return add_lora
