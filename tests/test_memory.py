"""Memory estimate: the published rules of thumb for Llama-3 8B / 70B (synthetic configs, no
weights) within ±35%, and the peak memory measured on this CPU for the default model's QLoRA run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio.train import memory, recipes

ROOT = Path(__file__).resolve().parent.parent
GB = 1e9
LLAMA3_8B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}
LLAMA3_70B = {
    **LLAMA3_8B,
    "hidden_size": 8192,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "intermediate_size": 28672,
}
ON_GPU = ["batch_size=1", "data.max_length=512", "bf16=true", "gradient_checkpointing=true"]


def _estimate(config: dict, *sets: str, device: float = 80 * GB) -> memory.MemoryEstimate:
    recipe = recipes.load(ROOT / "recipes/lora_sft.yaml", [*ON_GPU, *sets])
    return memory.estimate_memory(config, recipe, device_memory=device)


@pytest.mark.parametrize(
    ("config", "sets", "expected_gb"),
    [
        (LLAMA3_8B, ["lora.enabled=false"], 64),
        (LLAMA3_8B, [], 16),
        (LLAMA3_8B, ["load_in_4bit=true"], 6),
        (LLAMA3_70B, [], 140),
        (LLAMA3_70B, ["load_in_4bit=true"], 50),
    ],
    ids=["8b-full", "8b-lora", "8b-qlora", "70b-lora", "70b-qlora"],
)
def test_rules_of_thumb_within_35_percent(config, sets, expected_gb):
    estimate = _estimate(config, *sets)
    assert expected_gb * 0.65 <= estimate.total / GB <= expected_gb * 1.35, estimate.summary()
    assert estimate.assumptions and all(isinstance(a, str) for a in estimate.assumptions)
    parts = estimate.weights + estimate.trainable + estimate.activations + estimate.logits + estimate.overhead
    assert parts == pytest.approx(estimate.total)


def test_verdict_against_the_device():
    assert _estimate(LLAMA3_8B, "load_in_4bit=true", device=24 * GB).verdict == "fits"
    assert _estimate(LLAMA3_8B, device=20 * GB).verdict == "tight"
    assert _estimate(LLAMA3_70B, device=80 * GB).verdict == "will not fit"
    assert _estimate(LLAMA3_70B, "load_in_4bit=true", device=80 * GB).verdict == "fits"


def test_what_changes_memory_moves_the_estimate():
    plain = _estimate(LLAMA3_8B)
    assert _estimate(LLAMA3_8B, "gradient_checkpointing=false").activations > 10 * plain.activations
    assert _estimate(LLAMA3_8B, "load_in_8bit=true").weights < 0.6 * plain.weights
    assert _estimate(LLAMA3_8B, "lora.r=64").trainable == pytest.approx(4 * plain.trainable, rel=0.01)
    dpo = memory.estimate_memory(
        LLAMA3_8B, recipes.load(ROOT / "recipes/dpo.yaml", ON_GPU), device_memory=80 * GB
    )
    longer = memory.estimate_memory(
        LLAMA3_8B, recipes.load(ROOT / "recipes/dpo.yaml", [*ON_GPU, "data.max_length=2048"]), 80 * GB
    )
    assert longer.logits == pytest.approx(4 * dpo.logits)  # every position's logits, upcast
    # SFT scores through a fused head: one tile of at most 4096 tokens, however long the rows
    tile = _estimate(LLAMA3_8B, "data.max_length=4096").logits
    assert _estimate(LLAMA3_8B, "data.max_length=8192").logits == tile < longer.logits / 4


def test_a_cpu_sft_run_counts_one_chunk_of_the_studio_head():
    """On a CPU the studio's head (train/lm_head.py) holds one chunk of tokens over the whole vocabulary."""
    shape = memory.shape_of(LLAMA3_8B)
    sft = recipes.load(ROOT / "recipes/lora_sft.yaml", ["data.max_length=2048"])
    tokens = memory._tokens(sft)
    cpu = memory._logits(shape, sft, tokens, "cpu", [])
    assert (
        cpu == memory.lm_head_chunk_tokens(shape.vocab) * shape.vocab * 10
    )  # bf16 logits, fp32 log-probs, their exp
    assert cpu < 0.2 * GB < memory._logits(shape, sft, tokens, "cuda", []) < tokens * shape.vocab * 8 / 10


def test_estimate_from_a_model_spec(tiny_model):
    from studio import models

    recipe = recipes.load(ROOT / "recipes/qlora_sft.yaml", [f"model={tiny_model}"])
    estimate = memory.estimate_memory(models.info(str(tiny_model)), recipe, device_memory=8 * GB)
    assert estimate.verdict == "fits" and estimate.total > 0


@pytest.mark.slow
def test_estimate_matches_the_measured_cpu_qlora_run(default_model, tmp_path):
    """The trainer records its measured peak next to the estimate; they agree within ±35%."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "studio",
        "train",
        "recipes/qlora_sft.yaml",
        "--set",
        f"model={default_model}",
        "--set",
        "max_steps=3",
        "--set",
        "probes.prompts=[]",
        "--set",
        "data.eval_split=0",
        "--set",
        "gradient_checkpointing=false",
        "--run-dir",
        str(run_dir),
    ]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads((run_dir / "status.json").read_text())
    measured, estimated = status["peak_memory_gb"], status["memory_estimate_gb"]
    assert 0.65 * measured <= estimated <= 1.35 * measured, (measured, estimated)
