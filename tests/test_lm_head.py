"""The studio's LM head for CPU runs (studio/train/lm_head.py) returns what TRL's fused head
returns (each label's log-probability, the entropy and top-1 flags for the metrics), with the same
gradients, only for the models it supports, and a studio SFT run trains with it along the same
loss curve as with TRL's head. Tiny model, in process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from studio.train import lm_head, memory
from tests.support import curves as curves_support

ROOT = Path(__file__).resolve().parent.parent
SFT_OUTPUTS = ("log_probs", "entropy", "is_top1")  # what TRL's SFT trainer asks its head for
KTO_OUTPUTS = ("log_probs", "entropy", "mean_logits")


def _reference(hidden, weight, labels):
    logits = (hidden @ weight.t()).float()
    logp = torch.log_softmax(logits, -1)
    top1 = logp.argmax(-1) == labels
    return logp.gather(1, labels[:, None]).squeeze(1), -(logp.exp() * logp).sum(-1), top1, logits.mean(-1)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_label_log_probs_equal_a_log_softmax_over_the_whole_vocabulary(autocast, monkeypatch):
    monkeypatch.setattr(
        memory, "LM_HEAD_CHUNK_VALUES", 16 * 300
    )  # 16 tokens a chunk: 50 rows take four chunks
    torch.manual_seed(0)
    hidden = torch.randn(50, 24, requires_grad=True)
    weight = torch.randn(300, 24, requires_grad=True)
    labels = torch.randint(0, 300, (50,))
    labels[:10] = (hidden[:10] @ weight.t()).argmax(-1)  # some labels are the top token
    grad = torch.randn(50)
    results = []
    for ours in (True, False):
        hidden.grad = weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            h, w = (hidden, weight) if ours or not autocast else (hidden.bfloat16(), weight.bfloat16())
            out = lm_head.label_log_probs(h, w, labels, True) if ours else _reference(h, w, labels)
        (out[0] * grad).sum().backward()
        results.append((out[0], out[1], out[3], hidden.grad.clone(), weight.grad.clone(), out[2]))
    ours, reference = results
    assert ours[5].dtype == torch.bool and ours[5][:10].all() and ours[5].equal(reference[5])
    tolerance = {"atol": 2e-2, "rtol": 2e-2} if autocast else {"atol": 1e-5, "rtol": 1e-5}
    for name, a, b in zip(
        ("log-prob", "entropy", "mean logit", "grad hidden", "grad weight"),
        ours[:5],
        reference[:5],
        strict=True,
    ):
        torch.testing.assert_close(a.float(), b.float(), **tolerance, msg=name)
    assert not ours[1].requires_grad and not ours[2].requires_grad  # metrics here
    assert lm_head.label_log_probs(hidden, weight, labels)[3] is None  # the mean only when asked


def _model(tiny_model: Path, outputs=SFT_OUTPUTS):
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    add_fused_lm_head(model, outputs=outputs)  # what TRL's SFT (KTO) trainer does to the model it trains
    return model


def _inputs(model):
    ids = torch.randint(3, model.config.vocab_size, (3, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[2, 14:] = 0  # a padded row
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :6] = -100  # the prompt is not scored
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _run(model, inputs, autocast=False, **extra):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(**inputs, fused_lm_head=True, **extra)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("case", ["labels", "shift_labels", "num_items_in_batch", "bf16-autocast", "kto"])
def test_the_studio_head_returns_what_trls_head_returns(tiny_model, case):
    from trl.trainer.utils import FusedCausalLMOutput

    kto = case == "kto"
    model = _model(tiny_model, KTO_OUTPUTS if kto else SFT_OUTPUTS)
    inputs = _inputs(model)
    extra, autocast = {}, case == "bf16-autocast"
    if case == "shift_labels":
        labels = inputs.pop("labels")
        extra["shift_labels"] = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)
    if case == "num_items_in_batch":
        extra["num_items_in_batch"] = torch.tensor(100)
    trl_out, trl_grads = _run(model, inputs, autocast, **extra)
    logits_before = model(input_ids=inputs["input_ids"]).logits
    assert lm_head.install(model, FusedCausalLMOutput, mean_logits=kto)
    ours, grads = _run(model, inputs, autocast, **extra)

    assert ours.label_mask.equal(trl_out.label_mask) and ours.label_mask.sum() > 20
    if kto:  # KTO logs the mean logit; TRL's head leaves the top-1 flags out there
        assert trl_out.is_top1 is None and trl_out.mean_logits is not None
    else:
        assert ours.is_top1.equal(trl_out.is_top1) and ours.mean_logits is None
    tolerance = {"atol": 2e-2, "rtol": 2e-2} if autocast else {"atol": 1e-5, "rtol": 1e-4}
    for name in ("loss", "log_probs", "entropy", *(["mean_logits"] if kto else [])):
        torch.testing.assert_close(getattr(ours, name), getattr(trl_out, name), **tolerance, msg=name)
    assert ours.log_probs[~ours.label_mask].eq(0).all()
    assert (
        grads.keys() == trl_grads.keys() and "model.embed_tokens.weight" in grads
    )  # the tied head learns too
    for name, grad in trl_grads.items():
        torch.testing.assert_close(grads[name], grad, **tolerance, msg=name)
    # a plain call (generation, the probes) still returns the model's logits
    torch.testing.assert_close(model(input_ids=inputs["input_ids"]).logits, logits_before)


def test_a_batch_without_labels_gives_a_zero_loss_that_still_backpropagates(tiny_model):
    from trl.trainer.utils import FusedCausalLMOutput

    model = _model(tiny_model)
    assert lm_head.install(model, FusedCausalLMOutput, mean_logits=True)
    inputs = _inputs(model)
    inputs["labels"][:] = -100  # every answer cut off: nothing to score
    out, grads = _run(model, inputs)
    assert out.loss.item() == 0 and not out.label_mask.any() and out.mean_logits.eq(0).all()
    assert grads and all(g.abs().sum() == 0 for g in grads.values())


def test_models_whose_logits_trl_scales_keep_trls_head(tiny_model):
    from trl.trainer.utils import FusedCausalLMOutput

    model = _model(tiny_model)
    forward = model.forward
    model.config.final_logit_softcapping = 30.0
    assert not lm_head.supported(model) and not lm_head.install(model, FusedCausalLMOutput)
    assert model.forward == forward
    model.config.final_logit_softcapping = None
    assert lm_head.supported(model)
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size))
    assert not lm_head.supported(model)


def test_a_studio_sft_run_trains_with_this_head_along_trls_curve(tiny_model, tmp_path, monkeypatch):
    """A studio run on a CPU scores its labels with this head (and logs TRL's entropy and token
    accuracy from it); its first 20 losses stay within noise of the same run with TRL's head."""
    from studio.train import recipes
    from studio.train import run as train

    data = curves_support.write_rows(tmp_path / "sft.jsonl")
    calls = []
    real = lm_head.label_log_probs
    monkeypatch.setattr(lm_head, "label_log_probs", lambda *a: calls.append(1) or real(*a))
    curves, metrics = {}, {}
    for mode in ("studio", "trl"):
        if mode == "trl":
            monkeypatch.setattr(lm_head, "install", lambda *args: False)
        calls.clear()
        recipe = recipes.load(ROOT / "recipes/lora_sft.yaml", curves_support.twenty_steps(tiny_model, data))
        trainer, _, _ = train.prepare(recipe, tmp_path / f"run-{mode}")
        trainer.train()
        assert bool(calls) is (mode == "studio")
        curves[mode] = curves_support.losses(trainer)
        metrics[mode] = [e for e in trainer.state.log_history if "loss" in e][-1]
    curves_support.assert_within_noise(curves["studio"], curves["trl"])
    for name in ("entropy", "mean_token_accuracy"):
        assert metrics["studio"][name] == pytest.approx(metrics["trl"][name], rel=0.25, abs=0.05), name
    assert 0 < metrics["studio"]["mean_token_accuracy"] <= 1 and metrics["studio"]["entropy"] > 0


def test_a_studio_kto_run_logs_what_trls_head_gives(tiny_model, tmp_path, monkeypatch):
    """KTO (thumbs up / down) on a CPU goes through this head too, its reference pass included:
    the first step's loss and logged metrics (log-probabilities, mean logits) equal TRL's head's."""
    import json

    from studio.train import recipes
    from studio.train import run as train

    data = tmp_path / "kto.jsonl"
    words = curves_support.WORDS * 2
    rows = [
        {
            "prompt": " ".join(words[i : i + 5]),
            "completion": " ".join(words[i + 3 : i + 9]),
            "label": i % 2 == 0,
        }
        for i in range(16)
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    calls = []
    real = lm_head.label_log_probs
    monkeypatch.setattr(lm_head, "label_log_probs", lambda *a: calls.append(a[3]) or real(*a))
    first = {}
    for mode in ("studio", "trl"):
        if mode == "trl":
            monkeypatch.setattr(lm_head, "install", lambda *args: False)
        calls.clear()
        sets = [f"model={tiny_model}", f"dataset={data}", "data.eval_split=0", "probes.prompts=[]"]
        recipe = recipes.load(ROOT / "recipes/kto.yaml", [*sets, "max_steps=2", "save_steps=1000"])
        trainer, _, _ = train.prepare(recipe, tmp_path / f"run-{mode}")
        trainer.train()
        assert bool(calls) is (mode == "studio") and all(calls)  # the mean logits asked for, every call
        first[mode] = next(e for e in trainer.state.log_history if "loss" in e)
    shared = [k for k in first["trl"] if k.startswith(("loss", "logps/", "logits/", "kl"))]
    assert {"loss", "logps/chosen", "logits/chosen"} <= set(shared), first["trl"]
    for key in shared:
        assert first["studio"][key] == pytest.approx(first["trl"][key], rel=1e-3, abs=1e-4), key
