"""The model card (README.md) and loss-curve image published with a run's adapter or merged model.

Reads only what studio/export.py loaded from the run folder. Knows nothing about tokens, the Hub's
API or the UI. Local paths never reach the card: a model or dataset that is a folder on this machine
is shown by its name, so a published card does not reveal the author's file system.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from studio import models
from studio.evaluate import evaldir, report
from studio.publish.export import RunFolder, is_four_bit

CURVE_NAME = "loss_curve.png"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey", "auth")
_FENCE = "````"


def _is_hub_id(value: str) -> bool:
    return value.count("/") == 1 and not value.startswith((".", "/", "~")) and not Path(value).exists()


def hub_base_model(spec: str) -> str | None:
    """The Hub id of a run's base model, or None when it is a local folder with no known Hub origin."""
    spec = (spec or models.DEFAULT_SPEC).strip()
    if spec == models.DEFAULT_SPEC:
        return DEFAULT_HUB_ID
    local = Path(spec).expanduser()
    if local.is_dir():
        # The studio's converted default model keeps its origin next to the weights.
        is_default = (local / "studio_source.json").is_file() or local.name == models.DEFAULT_NAME
        return DEFAULT_HUB_ID if is_default else None
    return spec if _is_hub_id(spec) else None


def rewrite_adapter_base(config_path: Path, base: str) -> None:
    """Point a staged adapter_config.json at `base`, so PEFT can load it elsewhere (no local path)."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def plot_loss(metrics: list[dict], path: Path) -> bool:
    """Draw training (and eval) loss against step into a PNG; False (no file) when nothing was logged."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe inside the app's threads

    train = [
        (m["step"], m["loss"]) for m in metrics if _is_number(m.get("loss")) and _is_number(m.get("step"))
    ]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if _is_number(m.get("eval_loss")) and "step" in m]
    if not train and not evals:
        return False
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train, strict=True), label="training loss", color="#2563eb")
    if evals:
        ax.plot(*zip(*evals, strict=True), label="eval loss", color="#dc2626", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    return True


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _public(value):
    """A recipe value as it may be published: local paths shortened to their last part."""
    if isinstance(value, str) and (value.startswith(("/", "~", "./")) or Path(value).exists()):
        return Path(value).name
    return value


def recipe_lines(recipe: dict, prefix: str = "") -> list[str]:
    """`key: value` lines of a (nested) recipe, without anything that looks like a secret.

    >>> recipe_lines({"lora": {"r": 8}, "hub_token": "x"})
    ['- `lora.r`: 8']
    """
    lines: list[str] = []
    for key, value in sorted(recipe.items(), key=lambda kv: str(kv[0])):
        name = f"{prefix}{key}"
        if any(word in str(key).lower() for word in _SECRET_WORDS):
            continue
        if isinstance(value, dict):
            lines += recipe_lines(value, f"{name}.")
        else:
            lines.append(f"- `{name}`: {_public(value)}")
    return lines


def _front_matter(run: RunFolder, merged: bool) -> dict:
    recipe = run.recipe
    method = str(recipe.get("method") or "sft").lower()
    base = hub_base_model(run.model_spec)
    license_ = recipe.get("license") or ("apache-2.0" if base == DEFAULT_HUB_ID else "other")
    lora = recipe.get("lora") if isinstance(recipe.get("lora"), dict) else {}
    tags = [method, "trl", "tune-studio"]
    if not merged:
        tags.append("dora" if lora.get("use_dora") else "lora")
    if is_four_bit(recipe):
        tags.append("qlora")
    meta: dict = {"library_name": "transformers" if merged else "peft"}
    if base:
        meta["base_model"] = base
    meta["tags"] = list(dict.fromkeys(tags))
    dataset = str(recipe.get("dataset") or "")
    if dataset and _is_hub_id(dataset):
        meta["datasets"] = [dataset]
    meta["license"] = license_
    meta["pipeline_tag"] = "text-generation"
    return meta


def _summary(run: RunFolder) -> list[str]:
    losses = [m for m in run.metrics if _is_number(m.get("loss"))]
    evals = [m for m in run.metrics if _is_number(m.get("eval_loss"))]
    steps = [m["step"] for m in run.metrics if _is_number(m.get("step"))]
    epochs = [m["epoch"] for m in run.metrics if _is_number(m.get("epoch"))]
    rows = run.status.get("train_rows") or run.status.get("dataset_rows") or run.recipe.get("train_rows")
    lines = [f"- training examples: {rows}"] if rows else []
    if steps:
        lines.append(f"- steps: {max(steps)}")
    if epochs:
        lines.append(f"- epochs: {max(epochs):.2f}")
    if losses:
        lines.append(f"- final training loss: {losses[-1]['loss']:.4f}")
    if evals:
        lines.append(f"- final eval loss: {evals[-1]['eval_loss']:.4f}")
    return lines or ["- no metrics were logged"]


def _usage(repo_id: str, base: str | None, merged: bool) -> str:
    if merged:
        load = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n'
        )
    else:
        load = (
            "from peft import PeftModel\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'base = AutoModelForCausalLM.from_pretrained("{base or "BASE-MODEL-ID"}")\n'
            f'model = PeftModel.from_pretrained(base, "{repo_id}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n'
        )
    return (
        f"```python\n{load}\n"
        'messages = [{"role": "user", "content": "What is the capital of France?"}]\n'
        "inputs = tokenizer.apply_chat_template(\n"
        '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True\n)\n'
        "output = model.generate(**inputs, max_new_tokens=128)\n"
        'print(tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n```'
    )


def _probe_section(probes: dict | None) -> list[str]:
    if not probes or not probes.get("prompts"):
        return []
    lines = [
        "## Before and after",
        "",
        "The same prompts, answered greedily by the base model and the tuned one.",
        "",
    ]
    before, after = probes.get("before") or [], probes.get("after") or []
    for i, prompt in enumerate(probes["prompts"]):
        lines += [f"**Prompt {i + 1}:** {str(prompt).strip()}", ""]
        for label, answers in (("Before", before), ("After", after)):
            if i < len(answers):
                lines += [f"{label}:", "", f"{_FENCE}text", str(answers[i]).strip(), _FENCE, ""]
    return lines


def _eval_section(run: RunFolder) -> list[str]:
    """The newest evaluation's summary: what set, which judge, the win rate with its interval, n."""
    summary = evaldir.latest_summary(run.path)
    if not isinstance(summary, dict):
        return []
    summary = {**summary, "eval_set": _public(str(summary.get("eval_set", "")))}
    return [
        "## Evaluation",
        "",
        "Two models (A and B, named below) answered the same prompts greedily in Tune Studio; a judge "
        "compared each pair in both orders (a split verdict counts as a tie). A win rate counts a "
        "tie as half and comes with its 95% Wilson interval.",
        "",
        *report.summary_lines(summary),
        "",
    ]


def model_card(run: RunFolder, repo_id: str, merged: bool, has_curve: bool) -> str:
    """The README.md text: YAML front matter, what was trained and how, results, usage, probes."""
    meta = _front_matter(run, merged)
    base = meta.get("base_model") or f"a local model ({Path(run.model_spec).name})"
    method = str(run.recipe.get("method") or "sft").upper()
    lora = run.recipe.get("lora") if isinstance(run.recipe.get("lora"), dict) else {}
    kind = "merged model" if merged else ("DoRA adapter" if lora.get("use_dora") else "LoRA adapter")
    if is_four_bit(run.recipe):
        kind += " trained on a 4-bit (QLoRA) base"
    dataset = _public(str(run.recipe.get("dataset") or "unknown"))
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).strip(),
        "---",
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        f"A {kind} for [{base}](https://huggingface.co/{base})"
        if "base_model" in meta
        else f"A {kind} for {base}",
        f"trained with {method} on `{dataset}` in Tune Studio (TRL + PEFT).",
        "",
        "## Results",
        "",
        *_summary(run),
        "",
    ]
    if has_curve:
        lines += [f"![Training loss]({CURVE_NAME})", ""]
    lines += ["## Recipe", "", *(recipe_lines(run.recipe) or ["- (recipe not recorded)"]), ""]
    lines += ["## Use it", "", _usage(repo_id, meta.get("base_model"), merged), ""]
    lines += _eval_section(run)
    lines += _probe_section(run.probes)
    return "\n".join(lines).rstrip() + "\n"
