"""The llama.cpp chat path: which path serves a pane, and PEFT LoRA adapters converted to GGUF LoRA.

The binding itself is optional (no prebuilt wheel installs here): these tests prove the choice
and the conversion, which do not need it; the engine path serves whenever the binding is absent.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from studio.chat import llamacpp

LORA = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def test_llama_cpp_is_chosen_on_cpu_only_when_everything_allows_it():
    choose = llamacpp.choose_path
    assert choose("cpu", "LlamaForCausalLM", [LORA]).path == llamacpp.LLAMA_CPP
    assert choose("cpu", "LlamaForCausalLM", []).label() == "llama.cpp (fastest on this CPU)"
    cases = {
        "runs on cuda": choose("cuda", "LlamaForCausalLM", [LORA]),
        "no llama.cpp binding": choose("cpu", "LlamaForCausalLM", [LORA], "no llama.cpp binding"),
        "DoRA adapters run on PyTorch only": choose("cpu", "LlamaForCausalLM", [{**LORA, "use_dora": True}]),
        "not wired for GPT2LMHeadModel": choose("cpu", "GPT2LMHeadModel", []),
        "changes lm_head": choose("cpu", "LlamaForCausalLM", [{**LORA, "target_modules": ["lm_head"]}]),
        "whole modules": choose("cpu", "LlamaForCausalLM", [{**LORA, "modules_to_save": ["lm_head"]}]),
        "trains biases": choose("cpu", "LlamaForCausalLM", [{**LORA, "bias": "lora_only"}]),
    }
    for reason, choice in cases.items():
        assert choice.path == llamacpp.TORCH and reason in choice.reason, (reason, choice)


def test_without_a_binding_the_reason_says_how_to_get_one(monkeypatch):
    monkeypatch.setattr(llamacpp.importlib.util, "find_spec", lambda name: None)
    assert "make install-llama-cpp" in llamacpp.unavailable()
    monkeypatch.setenv("STUDIO_CHAT_PATH", "pytorch")
    assert "PyTorch" in llamacpp.unavailable()


def _random_lora(spec: str, folder, **extra):
    import torch
    from peft import LoraConfig, get_peft_model

    from studio import models

    torch.manual_seed(3)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=4, lora_alpha=16, target_modules=targets, init_lora_weights=False, **extra)
    get_peft_model(models.load_model(spec), config).save_pretrained(folder)
    return folder


def test_lora_converts_to_gguf_lora_with_q_k_rows_in_gguf_order(tiny_model, tmp_path):
    import gguf
    from safetensors.numpy import load_file

    adapter = _random_lora(str(tiny_model), tmp_path / "lora")
    config = json.loads((tiny_model / "config.json").read_text())
    out = llamacpp.lora_to_gguf(adapter, config, tmp_path / "lora.gguf")
    reader = gguf.GGUFReader(str(out))
    fields = {name: reader.fields[name] for name in ("general.type", "adapter.type", "adapter.lora.alpha")}
    assert bytes(fields["adapter.type"].parts[-1]).decode() == "lora"
    assert float(fields["adapter.lora.alpha"].parts[-1][0]) == 16.0
    tensors = {t.name: np.array(t.data).reshape(list(reversed(t.shape.tolist()))) for t in reader.tensors}
    source = load_file(str(adapter / "adapter_model.safetensors"))
    layers = config["num_hidden_layers"]
    assert len(tensors) == len(source) == layers * 7 * 2
    heads = config["num_attention_heads"]
    for layer in range(layers):
        prefix = f"base_model.model.model.layers.{layer}.self_attn"
        q_b = source[f"{prefix}.q_proj.lora_B.weight"]
        got = tensors[f"blk.{layer}.attn_q.weight.lora_b"]
        assert np.allclose(got, llamacpp._permute(q_b, heads)) and not np.allclose(got, q_b)
        assert np.allclose(
            tensors[f"blk.{layer}.attn_v.weight.lora_b"], source[f"{prefix}.v_proj.lora_B.weight"]
        )
        assert np.allclose(
            tensors[f"blk.{layer}.attn_q.weight.lora_a"], source[f"{prefix}.q_proj.lora_A.weight"]
        )


def test_dora_and_broken_adapters_are_refused_by_name(tiny_model, tmp_path):
    config = json.loads((tiny_model / "config.json").read_text())
    dora = _random_lora(str(tiny_model), tmp_path / "dora", use_dora=True)
    with pytest.raises(ValueError, match="dora.*DoRA adapters run on PyTorch only"):
        llamacpp.lora_to_gguf(dora, config, tmp_path / "x.gguf")
    (dora / "adapter_config.json").write_text(json.dumps(LORA))
    (dora / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match="adapter_model.safetensors is missing"):
        llamacpp.lora_to_gguf(dora, config, tmp_path / "x.gguf")


@pytest.mark.slow
def test_q_row_order_matches_the_embedded_gguf_base(default_model):
    """The permutation is the one the shipped GGUF applied to q: converted weights line up with it."""
    from pathlib import Path

    import gguf
    from gguf.quants import dequantize
    from safetensors.numpy import load_file

    from studio import models

    config = json.loads((Path(default_model) / "config.json").read_text())
    hf_q = load_file(str(Path(default_model) / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    reader = gguf.GGUFReader(str(models.gguf_path()))
    tensor = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    gguf_q = dequantize(tensor.data, tensor.tensor_type).reshape(hf_q.shape)
    permuted = llamacpp._permute(hf_q.astype(np.float32), config["num_attention_heads"])
    assert np.abs(permuted - gguf_q).mean() < 0.2 * np.abs(hf_q - gguf_q).mean()


def test_the_base_gguf_is_made_once_and_deleted_with_its_model(tiny_model, studio_home):
    first = llamacpp.base_gguf(tiny_model)
    assert first.parent == studio_home / "models" / "llama.cpp" and first.name.endswith(".f16.gguf")
    made = first.stat().st_mtime_ns
    assert llamacpp.base_gguf(tiny_model) == first and first.stat().st_mtime_ns == made  # not rewritten
    size = first.stat().st_size
    assert llamacpp.forget_base(tiny_model) == size > 0 and not first.exists()


def test_a_runs_gguf_loras_are_deleted_with_it(tiny_model, tmp_path):
    config = json.loads((tiny_model / "config.json").read_text())
    run = tmp_path / "run"
    adapter = _random_lora(str(tiny_model), run / "adapter")
    kept = _random_lora(str(tiny_model), tmp_path / "other-run" / "adapter")
    made, other = llamacpp.lora_gguf(adapter, config), llamacpp.lora_gguf(kept, config)
    assert llamacpp.lora_gguf(adapter, config) == made != other  # made once, one per adapter
    size = made.stat().st_size
    assert llamacpp.forget_loras(run) == size > 0
    assert not made.exists() and other.exists()
