"""The optional Unsloth backend: refused with a clear message where it cannot run (this CPU), and
wired correctly into the trainer where it can (checked with a stand-in FastLanguageModel)."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from studio.train import preflight, recipes

ROOT = Path(__file__).resolve().parent.parent


def test_preflight_names_why_unsloth_cannot_run_here(tiny_model):
    recipe = recipes.load(ROOT / "recipes/lora_sft.yaml", [f"model={tiny_model}", "backend=unsloth"])
    problems = [p for p in preflight.preflight(recipe) if p.field == "backend"]
    assert len(problems) == 1 and problems[0].severity == "error"
    assert "backend: transformers" in problems[0].fix
    assert "unsloth package is not installed" in problems[0].message or "NVIDIA GPU" in problems[0].message


def test_cli_refuses_unsloth_without_a_traceback(tiny_model, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "studio",
            "train",
            "recipes/lora_sft.yaml",
            "--set",
            f"model={tiny_model}",
            "--set",
            "backend=unsloth",
            "--set",
            "max_steps=1",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "backend unsloth cannot run" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        recipes.load(ROOT / "recipes/lora_sft.yaml", ["backend=vllm"])


def test_unsloth_path_attaches_lora_once_and_trains(tiny_model, tmp_path, monkeypatch):
    """Where Unsloth is available, the model and LoRA come from FastLanguageModel, and the trainer
    must not wrap a second adapter. A stand-in records the calls (no GPU here)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from studio.train import run as train

    calls: dict = {}

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(model_name, max_seq_length, dtype, load_in_4bit):
            calls["load"] = dict(
                model_name=model_name, max_seq_length=max_seq_length, load_in_4bit=load_in_4bit
            )
            return AutoModelForCausalLM.from_pretrained(model_name), None

        @staticmethod
        def get_peft_model(model, r, lora_alpha, lora_dropout, target_modules, **kwargs):
            calls["peft"] = dict(r=r, lora_alpha=lora_alpha, target_modules=target_modules, **kwargs)
            config = LoraConfig(
                r=r,
                lora_alpha=lora_alpha,
                lora_dropout=lora_dropout,
                target_modules=target_modules,
                task_type="CAUSAL_LM",
            )
            return get_peft_model(model, config)

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FastLanguageModel))
    monkeypatch.setattr(preflight, "unsloth_unavailable", lambda: None)
    recipe = recipes.load(
        ROOT / "recipes/lora_sft.yaml",
        [
            f"model={tiny_model}",
            "backend=unsloth",
            "max_steps=2",
            "lora.r=8",
            "data.eval_split=0",
            "probes.prompts=[]",
            "data.max_length=64",
        ],
    )
    trainer, _, _ = train.prepare(recipe, tmp_path / "run")
    assert calls["load"]["model_name"] == str(Path(tiny_model).resolve())
    assert calls["peft"]["r"] == 8 and calls["peft"]["lora_alpha"] == recipe.lora.alpha
    assert isinstance(trainer.model, PeftModel)
    assert len(trainer.model.peft_config) == 1  # the trainer did not wrap a second adapter
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not before[n].equal(after[n].detach()) for n in before), "the LoRA weights should train"
