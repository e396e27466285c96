"""`python -m studio train` for real: every method on the tiny model, the run folder it writes,
stop / kill / resume, divergence, and the token ids the SFT trainer sees.

Each method test runs the CLI in a subprocess (as the UI does) for 2 steps and proves the trainable
weights moved. Slow tests (real default model, two processes) are marked `slow`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import curves as curves_support

ROOT = Path(__file__).resolve().parent.parent
QUICK = [
    "--set",
    "max_steps=2",
    "--set",
    "data.max_length=64",
    "--set",
    "probes.prompts=[]",
    "--set",
    "data.eval_split=0",
]
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "capital", "france", "paris", "sea"]


def _sentence(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Small SFT (Alpaca), DPO and KTO files, written the way users bring them."""
    folder = tmp_path_factory.mktemp("data")
    with open(folder / "sft.jsonl", "w") as fh:
        for i in range(24):
            fh.write(json.dumps({"instruction": _sentence(i, 6), "output": _sentence(i + 1, 8)}) + "\n")
    with open(folder / "dpo.jsonl", "w") as fh:
        for i in range(16):
            fh.write(
                json.dumps(
                    {
                        "prompt": _sentence(i, 6),
                        "chosen": "Paris is the capital.",
                        "rejected": _sentence(i + 2, 5),
                    }
                )
                + "\n"
            )
    with open(folder / "kto.jsonl", "w") as fh:
        for i in range(16):
            fh.write(
                json.dumps(
                    {"prompt": _sentence(i, 6), "completion": _sentence(i + 3, 5), "label": i % 2 == 0}
                )
                + "\n"
            )
    return folder


@pytest.fixture(scope="module")
def tiny_model_64(tmp_path_factory) -> Path:
    """bitsandbytes' CPU NF4 kernel needs layers at least 64 wide (one quantization block)."""
    from tests.support.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny64") / "tiny-llama-64", hidden=64)


def train_cli(recipe: str, model, dataset, run_dir: Path, *extra: str, wait: bool = True, timeout: int = 300):
    argv = [
        sys.executable,
        "-m",
        "studio",
        "train",
        f"recipes/{recipe}",
        "--set",
        f"model={model}",
        "--set",
        f"dataset={dataset}",
        "--run-dir",
        str(run_dir),
        *QUICK,
        *extra,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def assert_completed(proc, run_dir: Path) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    st = status(run_dir)
    assert st["state"] == "completed" and st["exit_code"] == 0 and st["error"] is None
    losses = [row["loss"] for row in metrics(run_dir) if "loss" in row]
    assert len(losses) == 2 and all(isinstance(v, float) and v == v for v in losses)
    assert (run_dir / "recipe.yaml").is_file() and (run_dir / "train.log").stat().st_size > 0
    assert (run_dir / "checkpoints" / "checkpoint-2" / "optimizer.pt").is_file()
    adapter = run_dir / "adapter"
    assert (adapter / "tokenizer.json").is_file() and (adapter / "chat_template.jinja").is_file()
    assert not (run_dir / ".adapter.partial").exists()


def assert_lora_learned(run_dir: Path, dora: bool = False) -> None:
    from safetensors.torch import load_file

    adapter = run_dir / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["use_dora"] is dora
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    b_mats = {k: v for k, v in tensors.items() if "lora_B" in k}
    assert b_mats, list(tensors)
    # LoRA B starts at zero: any non-zero B means the adapter trained
    assert sum(int(v.float().abs().sum() > 0) for v in b_mats.values()) == len(b_mats)


@pytest.mark.parametrize(
    ("recipe", "data"),
    [
        ("lora_sft.yaml", "sft"),
        ("dora_sft.yaml", "sft"),
        ("neftune_sft.yaml", "sft"),
        ("dpo.yaml", "dpo"),
        ("simpo.yaml", "dpo"),
        ("orpo.yaml", "dpo"),
        ("kto.yaml", "kto"),
    ],
)
def test_each_lora_method_trains_through_the_cli(recipe, data, tiny_model, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = train_cli(recipe, tiny_model, data_dir / f"{data}.jsonl", run_dir)
    assert_completed(proc, run_dir)
    assert_lora_learned(run_dir, dora=recipe.startswith("dora"))
    if data != "sft":
        assert any("rewards/chosen" in row for row in metrics(run_dir))
    assert any("tokens_per_second" in row for row in metrics(run_dir))


def test_qlora_trains_a_4bit_base(tiny_model_64, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = train_cli("qlora_sft.yaml", tiny_model_64, data_dir / "sft.jsonl", run_dir)
    assert_completed(proc, run_dir)
    assert_lora_learned(run_dir)
    assert "load_in_4bit: true" in (run_dir / "recipe.yaml").read_text()
    # what the user reads first is the studio's own lines, not library chatter
    shown = proc.stdout + proc.stderr + (run_dir / "train.log").read_text()
    for noise in ("UserWarning", "gemm_4bit_forward", "pip install kernels"):
        assert noise not in shown, shown[:2000]


def test_full_fine_tune_changes_the_weights(tiny_model, data_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    proc = train_cli(
        "full_sft.yaml", tiny_model, data_dir / "sft.jsonl", run_dir, "--set", "learning_rate=1e-3"
    )
    assert_completed(proc, run_dir)
    base = load_file(str(Path(tiny_model) / "model.safetensors"))
    tuned = load_file(str(run_dir / "adapter" / "model.safetensors"))
    changed = [k for k, v in tuned.items() if not torch.equal(v, base[k].to(v.dtype))]
    assert len(changed) >= len(tuned) // 2, changed


def test_kto_unpairs_preference_pairs(tiny_model, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = train_cli("kto.yaml", tiny_model, data_dir / "dpo.jsonl", run_dir)
    assert_completed(proc, run_dir)
    assert_lora_learned(run_dir)


def test_probes_and_terminal_log(tiny_model, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = train_cli(
        "lora_sft.yaml",
        tiny_model,
        data_dir / "sft.jsonl",
        run_dir,
        "--set",
        'probes.prompts=["What is the capital of France?", "Name a sea."]',
        "--set",
        "probes.max_new_tokens=4",
        "--set",
        "data.eval_split=0.2",
        "--set",
        "eval_steps=1",
    )
    assert_completed(proc, run_dir)
    probes = json.loads((run_dir / "probes.json").read_text())
    assert probes["prompts"] == ["What is the capital of France?", "Name a sea."]
    assert len(probes["before"]) == len(probes["after"]) == 2
    assert any("eval_loss" in row for row in metrics(run_dir))
    # run from a terminal (stdout is not train.log): the log is teed into the run folder
    assert "[studio] completed" in (run_dir / "train.log").read_text()


def test_nan_loss_fails_the_run_with_a_fix(tiny_model, data_dir, tmp_path):
    """A model whose numbers blow up (here: one weight poisoned with NaN, since preflight already
    refuses absurd learning rates) fails the run as `failed` with a fix, never a hidden NaN."""
    import shutil

    from safetensors.torch import load_file, save_file

    poisoned = tmp_path / "poisoned-model"
    shutil.copytree(tiny_model, poisoned)
    weights = load_file(poisoned / "model.safetensors")
    name = next(k for k in weights if k.endswith("mlp.down_proj.weight"))
    weights[name].fill_(float("nan"))
    save_file(weights, poisoned / "model.safetensors", metadata={"format": "pt"})
    run_dir = tmp_path / "run"
    proc = train_cli(
        "lora_sft.yaml",
        poisoned,
        data_dir / "sft.jsonl",
        run_dir,
        "--set",
        "max_steps=4",
        "--set",
        "warmup_ratio=0",
    )
    assert proc.returncode == 1, proc.stdout[-2000:]
    st = status(run_dir)
    assert st["state"] == "failed" and "diverged" in st["error"] and "learning_rate" in st["error"]
    assert not (run_dir / "adapter").exists()


def test_preflight_errors_refuse_before_loading(tiny_model, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()  # the UI creates the folder and queues the run first
    (run_dir / "status.json").write_text(json.dumps({"state": "queued"}))
    proc = train_cli(
        "dpo.yaml",
        tiny_model,
        data_dir / "sft.jsonl",
        run_dir,
        "--set",
        "quantization.load_in_4bit=true",
        "--set",
        "quantization.load_in_8bit=true",
    )
    assert proc.returncode == 2
    st = status(run_dir)
    assert st["state"] == "failed"
    assert "load_in_8bit" in st["error"] and "does not fit DPO" in st["error"]
    assert not (run_dir / "checkpoints").exists()


def test_a_finished_run_is_not_overwritten(tiny_model, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    assert_completed(train_cli("lora_sft.yaml", tiny_model, data_dir / "sft.jsonl", run_dir), run_dir)
    again = train_cli("lora_sft.yaml", tiny_model, data_dir / "sft.jsonl", run_dir)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert status(run_dir)["state"] == "failed"


def test_a_token_in_the_recipe_is_refused(tiny_model, data_dir, tmp_path):
    proc = train_cli(
        "lora_sft.yaml",
        tiny_model,
        data_dir / "sft.jsonl",
        tmp_path / "run",
        "--set",
        "dataset=hf_abcdefghijklmnopqrstuvwxyz0123",
    )
    assert proc.returncode == 2 and "HF_TOKEN" in proc.stderr
    assert not (tmp_path / "run").exists()


def _wait_for_step(proc, run_dir: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(row.get("step", 0) >= step for row in metrics(run_dir)):
            return
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached")


def _loss_steps(run_dir: Path) -> list[int]:
    return [row["step"] for row in metrics(run_dir) if "loss" in row]


LONG = ["--set", "max_steps=30", "--set", "save_steps=5", "--set", "batch_size=2"]


def test_sigterm_checkpoints_and_resume_finishes_like_an_uninterrupted_run(tiny_model, data_dir, tmp_path):
    straight = tmp_path / "straight"
    assert train_cli("lora_sft.yaml", tiny_model, data_dir / "sft.jsonl", straight, *LONG).returncode == 0
    run_dir = tmp_path / "stopped"
    proc = train_cli("lora_sft.yaml", tiny_model, data_dir / "sft.jsonl", run_dir, *LONG, wait=False)
    _wait_for_step(proc, run_dir, 7)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    st = status(run_dir)
    assert st["state"] == "stopped" and st["step"] < 30
    assert (run_dir / "checkpoints" / f"checkpoint-{st['step']}" / "optimizer.pt").is_file()
    assert not (run_dir / "adapter").exists()

    resumed = train_cli("lora_sft.yaml", tiny_model, data_dir / "sft.jsonl", run_dir, *LONG, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert status(run_dir)["state"] == "completed" and status(run_dir)["step"] == 30
    assert _loss_steps(run_dir) == list(range(1, 31)) == _loss_steps(straight)
    final = [row["loss"] for row in metrics(run_dir) if "loss" in row][-1]
    assert final == pytest.approx([row["loss"] for row in metrics(straight) if "loss" in row][-1], rel=1e-3)


def test_the_sft_trainer_sees_exactly_tokenize_sft_output(tiny_model, data_dir, tmp_path):
    """What you preview is what you train: every batch equals the data layer's tokenize_sft."""
    from studio.data import check, templates
    from studio.train import recipes
    from studio.train import run as train

    recipe = recipes.load(
        ROOT / "recipes/lora_sft.yaml",
        [
            f"model={tiny_model}",
            f"dataset={data_dir / 'sft.jsonl'}",
            "data.max_length=128",
            "data.eval_split=0",
            "batch_size=3",
        ],
    )
    trainer, tokenizer, _ = train.prepare(recipe, tmp_path / "run")
    seen = []
    for batch in trainer.get_train_dataloader():
        for ids, labels, mask in zip(
            batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True
        ):
            n = int(mask.sum())
            assert (ids[n:] == tokenizer.pad_token_id).all() and (labels[n:] == -100).all()
            seen.append((ids[:n].tolist(), labels[:n].tolist()))
    records = check.load(data_dir / "sft.jsonl", method="sft").records
    expected = []
    for rec in records:
        tok = templates.tokenize_sft(rec, tokenizer, max_length=128, template=None, train_on="assistant")
        expected.append((tok.input_ids, tok.labels))
    assert sorted(seen) == sorted(expected)
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id != eos
    assert all(eos in labels for _, labels in seen), (
        "the end-of-turn token must be trained so the model stops"
    )


def test_pad_token_is_never_eos(tiny_model):
    from transformers import AutoTokenizer

    from studio.train import setup

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.pad_token = tok.eos_token
    assert setup.pick_pad_token(tok) == ("<|endoftext|>", False)
    tok.pad_token = None
    assert setup.pick_pad_token(tok) == ("<|endoftext|>", False)
    tok.chat_template = "{{ '<|endoftext|>' }}" + tok.chat_template  # now in use by the template
    tok.pad_token = tok.eos_token
    assert setup.pick_pad_token(tok) == ("<|pad|>", True)


# ---------------------------------------------------------------- slow: the real default model, two processes


@pytest.mark.slow
def test_the_quick_plan_on_the_default_model_makes_the_sample_style_likelier(
    default_model, default_tuned_run
):
    """Every sample answer opens with "Short answer:". After the guided quick plan (~2 min), the adapter
    (loaded on its own from adapter/) makes that opening far likelier on held-out questions than
    the base does, its greedy answers differ from the base's, and the loss falls."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = [
        p for p in (ROOT / "sample_data" / "heldout_prompts.txt").read_text().splitlines() if p.strip()
    ]
    run_dir = default_tuned_run  # the quick plan on sample:alpaca.jsonl (tests/conftest.py)
    probes = json.loads((run_dir / "probes.json").read_text())
    assert probes["after"] != probes["before"]
    losses = [row["loss"] for row in metrics(run_dir) if "loss" in row]
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6

    tok = AutoTokenizer.from_pretrained(run_dir / "adapter")
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(default_model), run_dir / "adapter"
    )
    model.eval()

    def style_logprob(prompt: str) -> float:
        context = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        ids = tok(context + "Short answer:", return_tensors="pt", add_special_tokens=False).input_ids
        start = len(tok(context, add_special_tokens=False).input_ids)
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].log_softmax(-1)
        return sum(logp[i - 1, ids[0, i]].item() for i in range(start, ids.shape[1]))

    for prompt in prompts:
        tuned = style_logprob(prompt)
        with model.disable_adapter():
            base = style_logprob(prompt)
        assert tuned > base + 2.0, (prompt, base, tuned)  # > 7x likelier


@pytest.mark.slow
def test_dpo_on_the_default_model_raises_the_reward_margin(default_model, tmp_path):
    run_dir = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "studio",
        "train",
        "recipes/dpo.yaml",
        "--set",
        f"model={default_model}",
        "--set",
        "max_steps=12",
        "--set",
        "probes.prompts=[]",
        "--set",
        "learning_rate=2e-4",
        "--run-dir",
        str(run_dir),
    ]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    margins = [row["rewards/margins"] for row in metrics(run_dir) if "rewards/margins" in row]
    assert len(margins) == 12
    assert sum(margins[-4:]) / 4 > max(sum(margins[:4]) / 4, 0.0), margins


@pytest.mark.slow
def test_two_processes_under_accelerate_launch(tiny_model, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "-m",
        "studio",
        "train",
        "recipes/lora_sft.yaml",
        "--set",
        f"model={tiny_model}",
        "--set",
        f"dataset={data_dir / 'sft.jsonl'}",
        "--run-dir",
        str(run_dir),
        *QUICK,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert_completed(proc, run_dir)
    assert status(run_dir)["processes"] == 2
    assert _loss_steps(run_dir) == [1, 2]  # rank 0 alone writes: no line twice
    assert_lora_learned(run_dir)


def test_a_16_bit_base_follows_the_fp32_loss_curve_for_20_steps(tiny_model, data_dir, tmp_path):
    """`training.bf16`: the frozen base in bf16 while the LoRA weights and their optimizer state stay
    fp32; the first 20 losses stay within noise of an all-fp32 run on the same rows and seed."""
    import torch

    from studio.train import recipes
    from studio.train import run as train

    curves = {}
    for bf16 in ("true", "false"):
        recipe = recipes.load(
            ROOT / "recipes/lora_sft.yaml",
            curves_support.twenty_steps(tiny_model, data_dir / "sft.jsonl", f"bf16={bf16}"),
        )
        trainer, _, plan = train.prepare(recipe, tmp_path / f"run-{bf16}")
        assert plan.bf16 is (bf16 == "true")
        weights = dict(trainer.model.named_parameters())
        base = [p for n, p in weights.items() if n.endswith("q_proj.base_layer.weight")]
        assert base and all(p.dtype == (torch.bfloat16 if bf16 == "true" else torch.float32) for p in base)
        assert all(p.dtype == torch.float32 for p in weights.values() if p.requires_grad)
        trainer.train()
        curves[bf16] = curves_support.losses(trainer)
    curves_support.assert_within_noise(curves["true"], curves["false"])
