"""Merging an adapter into its base (full precision and 4-bit), zips, GGUF files transformers reads back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from studio.publish import export
from tests.support.runfolder import build_run
from tests.support.tinymodel import build_tiny_model

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def _inputs(tokenizer):
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt").input_ids


def _greedy(model, ids) -> list[int]:
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=12, do_sample=False)[0].tolist()


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory) -> Path:
    """A tiny model whose Linear layers bitsandbytes can hold in NF4 (in_features a multiple of 64)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny64") / "tiny-64", hidden=64)


def test_merged_model_matches_base_plus_adapter(studio_home, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = export.load_run(build_run(studio_home / "runs", tiny_model))
    merged_dir = export.merged_dir(run)

    assert merged_dir.parent == studio_home / "exports"
    assert {p.name for p in export.shareable_files(merged_dir, merged=True)} >= {
        "config.json",
        "model.safetensors",
    }
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    ids = _inputs(AutoTokenizer.from_pretrained(str(merged_dir)))
    base_logits = _logits(base, ids)
    tuned = PeftModel.from_pretrained(base, str(run.adapter_dir))
    assert torch.allclose(_logits(merged, ids), _logits(tuned, ids), atol=1e-5)
    assert not torch.allclose(_logits(merged, ids), base_logits, atol=1e-3)  # the adapter did something
    assert _greedy(merged, ids) == _greedy(tuned, ids)
    assert export.merged_dir(run) == merged_dir  # reused, not merged again


def test_four_bit_run_merges_into_the_dequantized_weights_it_trained_on(studio_home, tiny64):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    path = build_run(
        studio_home / "runs",
        tiny64,
        recipe={"quantization": {"load_in_4bit": True, "quant_type": "nf4"}},
        four_bit=True,
    )
    run = export.load_run(path)
    assert export.is_four_bit(run.recipe)
    merged_dir = export.merge_adapter(run, studio_home / "exports" / "merged-4bit")

    config = json.loads((merged_dir / "config.json").read_text())
    assert "quantization_config" not in config  # a plain model, loadable without bitsandbytes
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    qbase = AutoModelForCausalLM.from_pretrained(str(tiny64), quantization_config=quant, dtype=torch.float32)
    trained = PeftModel.from_pretrained(qbase, str(run.adapter_dir))
    ids = _inputs(AutoTokenizer.from_pretrained(str(merged_dir)))
    reference = _logits(trained, ids)
    dequant_error = (_logits(merged, ids) - reference).abs().max()

    naive_dir = export.merge_adapter(run, studio_home / "exports" / "merged-naive", four_bit=False)
    naive = AutoModelForCausalLM.from_pretrained(str(naive_dir))
    naive_error = (_logits(naive, ids) - reference).abs().max()
    assert dequant_error < 5e-3
    assert dequant_error < naive_error / 5  # merging into the original weights would drift
    assert _greedy(merged, ids) == _greedy(trained, ids)


def test_gguf_round_trip_through_transformers(studio_home, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = export.load_run(build_run(studio_home / "runs", tiny_model))
    merged_dir = export.merged_dir(run)
    out = export.gguf_for_run(run)
    assert out == studio_home / "exports" / "run-1.gguf"

    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    loaded = AutoModelForCausalLM.from_pretrained(str(out.parent), gguf_file=out.name)
    loaded_tokenizer = AutoTokenizer.from_pretrained(str(out.parent), gguf_file=out.name)
    ids = _inputs(tokenizer)
    assert _inputs(loaded_tokenizer).tolist() == ids.tolist()
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert loaded_tokenizer.eos_token == tokenizer.eos_token
    assert torch.allclose(_logits(loaded, ids), _logits(merged, ids), atol=1e-6)
    answer, loaded_answer = _greedy(merged, ids), _greedy(loaded, ids)
    assert tokenizer.decode(answer) == loaded_tokenizer.decode(loaded_answer)

    half = export.export_gguf(merged_dir, tmp_path / "half.gguf", f16=True)
    assert half.stat().st_size < out.stat().st_size
    half_model = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="half.gguf")
    assert torch.allclose(_logits(half_model, ids), _logits(merged, ids), atol=5e-2)


def test_gguf_refuses_other_architectures(tiny_model, tmp_path):
    folder = tmp_path / "not-llama"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["Qwen2ForCausalLM"]
    config["model_type"] = "qwen2"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="GGUF export supports LlamaForCausalLM") as info:
        export.export_gguf(folder, tmp_path / "x.gguf")
    assert "Qwen2ForCausalLM" in str(info.value)
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.slow
def test_default_model_gguf_answers_the_same(default_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export.export_gguf(Path(default_model), tmp_path / "smollm2.gguf")
    original = AutoModelForCausalLM.from_pretrained(default_model)
    tokenizer = AutoTokenizer.from_pretrained(default_model)
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name)
    loaded_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=out.name)
    ids = _inputs(tokenizer)
    assert _inputs(loaded_tokenizer).tolist() == ids.tolist()
    answer = tokenizer.decode(_greedy(original, ids)[ids.shape[1] :], skip_special_tokens=True)
    loaded_answer = loaded_tokenizer.decode(_greedy(loaded, ids)[ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
    assert loaded_answer == answer


def test_load_run_tolerates_a_torn_metrics_line_and_missing_probes(studio_home, tiny_model):
    path = build_run(studio_home / "runs", tiny_model, probes=None)
    with open(path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 7, "lo')  # a run killed mid-write
    run = export.load_run("run-1")  # a run id resolves under STUDIO_HOME/runs
    assert run.path == path and run.probes is None
    assert [m["step"] for m in run.metrics][-1] == 6
    assert run.recipe["lora"]["r"] == 4


def test_only_shareable_files_are_selected(studio_home, tiny_model):
    run = export.load_run(build_run(studio_home / "runs", tiny_model))
    names = {p.name for p in export.shareable_files(run.adapter_dir, merged=False)}
    assert names == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    }


def test_incomplete_runs_are_named(studio_home, tiny_model):
    path = build_run(studio_home / "runs", tiny_model)
    (path / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"adapter: missing adapter_model\.safetensors"):
        export.require_completed(export.load_run(path))
    (path / "status.json").write_text('{"state": "failed"')
    with pytest.raises(ValueError, match=r"status\.json line 1: not valid JSON"):
        export.load_run(path)
    with pytest.raises(ValueError, match="run 'nope' not found"):
        export.load_run("nope")
