"""Build a finished run folder (DESIGN.md layout) around a real PEFT adapter of a tiny model.

The adapter is made with `init_lora_weights=False`, so it changes the model's outputs and a merge
that forgot it would be caught. The folder also holds the clutter a real run leaves (checkpoints,
optimizer state, pickles, logs) so tests can prove none of it is ever published.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

PROBES = {
    "prompts": ["What is the capital of France?"],
    "before": ["I am not sure."],
    "after": ["The capital of France is Paris."],
}


def make_adapter(model_dir: Path, adapter_dir: Path, seed: int = 0, four_bit: bool = False) -> Path:
    """Save a random (non-zero) LoRA adapter of `model_dir` with its tokenizer into `adapter_dir`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    kwargs: dict = {"dtype": torch.float32}
    if four_bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,  # as the studio's recipes default to
            bnb_4bit_compute_dtype=torch.float32,
        )
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
    )
    model = get_peft_model(base, config)
    model.save_pretrained(str(adapter_dir))
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(adapter_dir))
    return adapter_dir


def build_run(
    runs_dir: Path,
    model_dir: Path | str,
    run_id: str = "run-1",
    state: str = "completed",
    recipe: dict | None = None,
    probes: dict | None = PROBES,
    four_bit: bool = False,
) -> Path:
    """A run folder with recipe.yaml, status.json, metrics.jsonl, probes.json, checkpoints/, adapter/."""
    run = Path(runs_dir) / run_id
    run.mkdir(parents=True)
    full_recipe = {
        "method": "sft",
        "model": str(model_dir),
        "dataset": "sample_data/alpaca.jsonl",
        "lora": {"r": 4, "alpha": 8},
        "learning_rate": 2e-4,
        "max_steps": 6,
    }
    full_recipe.update(recipe or {})
    (run / "recipe.yaml").write_text(yaml.safe_dump(full_recipe))
    (run / "status.json").write_text(
        json.dumps({"state": state, "step": 6, "max_steps": 6, "train_rows": 12})
    )
    rows = [{"step": s, "epoch": s / 3, "loss": 2.5 - 0.3 * s, "learning_rate": 2e-4} for s in range(1, 7)]
    rows.append({"step": 6, "epoch": 2.0, "eval_loss": 1.1})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if probes is not None:
        (run / "probes.json").write_text(json.dumps(probes))
    (run / "train.log").write_text("step 6 loss 0.7\n")
    checkpoint = run / "checkpoints" / "checkpoint-6"
    checkpoint.mkdir(parents=True)
    (checkpoint / "optimizer.pt").write_bytes(b"optimizer state")
    (checkpoint / "adapter_model.safetensors").write_bytes(b"old weights")
    adapter = make_adapter(Path(str(model_dir)), run / "adapter", four_bit=four_bit)
    # Clutter a trainer may leave next to the adapter: none of it belongs on the Hub.
    (adapter / "training_args.bin").write_bytes(b"pickle")
    (adapter / "rng_state.pth").write_bytes(b"pickle")
    (adapter / "notes.pkl").write_bytes(b"pickle")
    (adapter / "trainer.log").write_text("log line\n")
    return run
