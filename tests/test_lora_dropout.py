"""LoRA dropout folded into `lora_A` (studio/train/lora_dropout.py) computes what PEFT's dropout
computes, keeps a 1-byte mask instead of a copy of each projection's input, leaves the saved
adapter and DoRA layers alone, and trains along the same loss curve. Tiny model, in process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from studio.train import lora_dropout
from tests.support import curves as curves_support

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peft_model(tiny_model: Path, p: float, dora: bool = False):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=p, target_modules=TARGETS, use_dora=dora)
    model = get_peft_model(model, config)
    for name, param in model.named_parameters():  # B starts at zero: make the adapter do something
        if "lora_B" in name:
            nn.init.normal_(param, std=0.05)
    return model


def _batch(model) -> torch.Tensor:
    return torch.randint(3, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_the_folded_function_equals_dropout_then_linear_with_the_same_mask(autocast):
    x = torch.randn(3, 7, 16, requires_grad=True)
    weight = nn.Parameter(torch.randn(4, 16))
    keep = lora_dropout.keep_mask(x.shape, 0.3, x.device)
    scale = 1 / lora_dropout.kept_fraction(0.3)
    grad = torch.randn(3, 7, 4)
    results = []
    for folded in (True, False):
        x.grad = weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if folded:
                dtype = lora_dropout._compute_dtype(x, weight)
                y = lora_dropout._DroppedLinear.apply(x, weight, keep, scale, dtype)
            else:
                y = F.linear(x * keep * scale, weight)
        y.backward(grad.to(y.dtype))
        results.append((y.float(), x.grad.clone(), weight.grad.clone()))
    for ours, reference in zip(*results, strict=True):
        assert ours.dtype == reference.dtype
        if autocast:  # bf16 rounds at other points (x before the scale): compare the whole tensor
            assert (ours - reference).norm() / reference.norm() < 1e-2
        else:
            torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert (~keep).any()  # the mask drops something


def test_the_mask_drops_p_of_the_inputs_and_the_kept_ones_are_scaled_up():
    for p in (0.05, 0.1, 0.5):
        keep = lora_dropout.keep_mask(torch.Size([2_000_000]), p, torch.device("cpu"))
        assert keep.dtype == torch.bool
        assert abs((1 - keep.float().mean().item()) - p) < 0.01
    layer = lora_dropout.DroppedLoraA(nn.Linear(64, 8, bias=False), 0.5).train()
    x = torch.randn(1, 64)
    mean = torch.stack([layer(x) for _ in range(4000)]).mean(0)
    torch.testing.assert_close(mean, F.linear(x, layer.weight), atol=0.05, rtol=0.05)  # unbiased
    torch.manual_seed(3)
    first = layer(x)
    torch.manual_seed(3)
    assert torch.equal(first, layer(x))  # the seed decides the mask, as with torch's dropout


def test_folding_a_peft_model_changes_no_weight_name_and_no_eval_output(tiny_model):
    model = _peft_model(tiny_model, 0.1)
    ids = _batch(model)
    model.eval()
    with torch.no_grad():
        before = model(ids).logits
    params = dict(model.named_parameters())
    folded = lora_dropout.fold(model)
    assert folded == 2 * len(TARGETS)  # the tiny model has two blocks
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())  # the optimizer's tensors
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before)
    model.train()
    model(ids, labels=ids).loss.backward()
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    assert lora_dropout.fold(model) == 0  # folding twice does nothing


def test_dora_keeps_peft_layers(tiny_model):
    model = _peft_model(tiny_model, 0.1, dora=True)
    assert lora_dropout.fold(model) == 0
    assert not any(isinstance(m, lora_dropout.DroppedLoraA) for m in model.modules())


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-base"])
def test_without_dropout_the_folded_layers_train_as_peft_does_and_keep_x_once(tiny_model, bf16):
    """p 0: no mask to draw, the same loss and gradients as PEFT's layers; with a bf16 base, one x
    for q, k and v instead of a saved cast of x per projection."""
    ids = _batch(_peft_model(tiny_model, 0.0))
    steps = {}
    for fold in (False, True):
        model = _model(tiny_model, 0.0, bf16, fold)
        assert sum(isinstance(m, lora_dropout.DroppedLoraA) for m in model.modules()) == (
            2 * len(TARGETS) if fold else 0
        )
        saved = _saved_bytes(model, ids, bf16)  # one training step: forward and backward
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        steps[fold] = saved, grads
    (peft_saved, peft_grads), (saved, grads) = steps[False], steps[True]
    assert grads.keys() == peft_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, peft_grads[name], msg=name)
    model = _model(tiny_model, 0.0, bf16, True)
    hidden, inner = model.config.hidden_size, model.config.intermediate_size
    casts = ids.numel() * model.config.num_hidden_layers * (6 * hidden + inner)  # bytes per byte-wide input
    assert saved <= peft_saved - (casts if bf16 else 0), (saved, peft_saved, casts)


def _saved_bytes(model, ids, bf16: bool) -> int:
    """Bytes of the distinct tensors autograd saves for the backward pass of one training step."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.train()
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16),
    ):
        model(ids, labels=ids).loss.backward()
    return sum(storages.values())


def _model(tiny_model: Path, p: float, bf16: bool, fold: bool):
    """As the trainer has it: with `bf16` the frozen base in bf16 and the adapter in fp32."""
    model = _peft_model(tiny_model, p)
    if bf16:
        for name, param in model.named_parameters():
            if "lora_" not in name:
                param.data = param.data.to(torch.bfloat16)
    if fold:
        lora_dropout.fold(model)
    return model


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-base"])
def test_a_folded_step_saves_masks_not_copies(tiny_model, bf16):
    ids = _batch(_peft_model(tiny_model, 0.0))
    none = _saved_bytes(_model(tiny_model, 0.0, bf16, False), ids, bf16)
    peft = _saved_bytes(_model(tiny_model, 0.1, bf16, False), ids, bf16)
    model = _model(tiny_model, 0.1, bf16, True)
    folded = _saved_bytes(model, ids, bf16)
    hidden, inner = model.config.hidden_size, model.config.intermediate_size
    masks = ids.numel() * model.config.num_hidden_layers * (6 * hidden + inner)  # one byte per input
    # PEFT keeps a copy (4 or 2 bytes) and a mask per projection; the folded layers the mask alone,
    # and with a bf16 base one x for q, k and v instead of an fp32 cast of x each
    assert peft - none > (2 if bf16 else 4) * masks
    assert folded - none <= masks * 1.1, (none, peft, folded, masks)
    model.eval()  # the probes ask the folded model without autocast
    reference = _model(tiny_model, 0.1, bf16, False).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)


def test_gradient_checkpointing_recomputes_the_same_mask(tiny_model):
    grads = []
    for checkpointing in (False, True):
        model = _peft_model(tiny_model, 0.2)
        lora_dropout.fold(model)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        torch.manual_seed(7)
        model(_batch(model), labels=_batch(model)).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_training_with_the_folded_dropout_follows_peft_dropout_for_20_steps(
    tiny_model, tmp_path, monkeypatch
):
    """A studio run folds the dropout; its first 20 losses stay within noise of the same run with
    PEFT's own dropout layers (different masks, same rate)."""
    from studio.train import recipes
    from studio.train import run as train

    data = curves_support.write_rows(tmp_path / "sft.jsonl")
    curves = {}
    for mode in ("folded", "peft"):
        if mode == "peft":
            monkeypatch.setattr(lora_dropout, "fold", lambda model: 0)
        recipe = recipes.load(
            ROOT / "recipes/lora_sft.yaml", curves_support.twenty_steps(tiny_model, data, "lora.dropout=0.1")
        )
        trainer, _, _ = train.prepare(recipe, tmp_path / f"run-{mode}")
        layers = [m for m in trainer.model.modules() if isinstance(m, lora_dropout.DroppedLoraA)]
        assert bool(layers) is (mode == "folded")
        trainer.train()
        curves[mode] = curves_support.losses(trainer)
    curves_support.assert_within_noise(curves["folded"], curves["peft"])
