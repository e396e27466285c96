"""Recipes: every shipped file validates with the documented defaults; bad keys, values and
combinations are refused with the field, the line and the fix; preflight finds problems before any
weights load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from studio.train import preflight, recipes

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
NAMES = {p.name for p in RECIPES}


def test_every_required_recipe_ships():
    wanted = {
        "qlora_sft.yaml",
        "lora_sft.yaml",
        "dora_sft.yaml",
        "neftune_sft.yaml",
        "full_sft.yaml",
        "dpo.yaml",
        "simpo.yaml",
        "orpo.yaml",
        "kto.yaml",
    }
    assert wanted <= NAMES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_is_a_document_with_its_command(path):
    text = path.read_text()
    head = text.split("\n\n")[0].splitlines()
    assert all(line.startswith("#") for line in head[:3]), "starts with a comment"
    assert "Fits:" in text and f"python -m studio train recipes/{path.name}" in text


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shortcuts_work_for_every_recipe(path, tmp_path):
    recipe = recipes.load(path, ["model=some/model", f"dataset={tmp_path}/d.jsonl", "max_steps=7"])
    assert (recipe.model, recipe.dataset, recipe.training.max_steps) == (
        "some/model",
        f"{tmp_path}/d.jsonl",
        7,
    )
    assert not preflight.config_problems(recipe), preflight.config_problems(recipe)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_defaults_to_the_default_model_a_sample_and_a_short_run(path):
    recipe = recipes.load(path)
    assert recipe.model == "default" and recipe.dataset.startswith("sample:")
    assert 0 < recipe.training.max_steps <= 100  # minutes on a 2-core CPU, not hours


def test_documented_defaults():
    lora = recipes.load(ROOT / "recipes/lora_sft.yaml").lora
    assert (lora.r, lora.alpha, lora.dropout) == (16, 32, 0.05)
    assert lora.targets == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert recipes.Recipe().lora.targets == lora.targets
    q = recipes.load(ROOT / "recipes/qlora_sft.yaml")
    assert q.quantization.load_in_4bit and q.quantization.quant_type == "nf4" and q.quantization.double_quant
    assert q.training.bf16 == "auto"
    assert recipes.load(ROOT / "recipes/neftune_sft.yaml").training.neftune_alpha == 5.0
    assert recipes.load(ROOT / "recipes/dpo.yaml").preference.beta == 0.1
    simpo = recipes.load(ROOT / "recipes/simpo.yaml").preference
    assert (simpo.beta, simpo.simpo_gamma_beta_ratio) == (2.0, 0.5)
    assert recipes.load(ROOT / "recipes/full_sft.yaml").lora.enabled is False
    assert recipes.load(ROOT / "recipes/kto.yaml").method == "kto"
    # beta follows the method when a recipe does not set it
    assert recipes.load(ROOT / "recipes/lora_sft.yaml", ["method=simpo"]).preference.beta == 2.0


def test_every_field_has_help_text():
    docs = recipes.field_docs()
    assert len(docs) > 40
    for doc in docs:
        assert len(doc.help) > 15, doc.key
    assert recipes.field_help("lora.r").startswith("LoRA rank")
    assert "lora.use_rslora" in recipes.fields_help()


def test_unknown_key_names_the_key_the_line_and_the_closest(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("method: sft\nlora:\n  rank: 8\n")
    with pytest.raises(ValueError, match=r"r.yaml line 3: lora.rank is not a recipe field.*'r'"):
        recipes.load(path)
    path.write_text("method: sft\ntrainig:\n  max_steps: 3\n")
    with pytest.raises(ValueError, match="did you mean 'training'"):
        recipes.load(path)
    with pytest.raises(ValueError, match="did you mean 'lora.alpha'"):
        recipes.load(ROOT / "recipes/lora_sft.yaml", ["lora.alpah=3"])


def test_set_values_are_yaml_scalars_checked_against_the_field():
    r = recipes.load(
        ROOT / "recipes/lora_sft.yaml",
        [
            "lora.r=8",
            "learning_rate=1e-4",
            "bf16=false",
            "gradient_checkpointing=auto",
            "lora.targets=q_proj,v_proj",
            "data.chat_template=chatml",
            "epochs=2",
        ],
    )
    assert (r.lora.r, r.training.learning_rate, r.training.bf16) == (8, 1e-4, False)
    assert r.lora.targets == ["q_proj", "v_proj"] and r.data.chat_template == "chatml"
    assert r.training.epochs == 2.0 and isinstance(r.training.epochs, float)
    for bad, message in [
        ("lora.r=eight", "expected int"),
        ("lora.r=2.5", "expected int"),
        ("bf16=maybe", "true, false or auto"),
        ("method=ppo", "not one of"),
        ("lora.use_dora=3", "expected true or false"),
        ("noequals", "KEY=VALUE"),
    ]:
        with pytest.raises(ValueError, match=message):
            recipes.load(ROOT / "recipes/lora_sft.yaml", [bad])
    with pytest.raises(ValueError, match=r"--set lora.r=eight"):
        recipes.load(ROOT / "recipes/lora_sft.yaml", ["lora.r=eight"])


def test_yaml_cannot_name_code(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("method: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        recipes.load(path)
    assert not (tmp_path / "pwned").exists()


def test_hf_token_never_enters_a_recipe():
    with pytest.raises(ValueError, match="HF_TOKEN"):
        recipes.load(ROOT / "recipes/lora_sft.yaml", ["model=hf_abcdefghijklmnopqrstuvwxyz012345"])


def test_resolved_recipe_round_trips():
    recipe = recipes.load(ROOT / "recipes/dpo.yaml", ["lora.r=4"])
    again = recipes.from_dict(yaml.safe_load(recipes.to_yaml(recipe)))
    assert again == recipe
    assert yaml.safe_load(recipes.to_yaml(recipe))["method"] == "dpo"  # runs.py reads these top-level keys


# ---------------------------------------------------------------- preflight


@pytest.fixture
def sft_file(tmp_path) -> Path:
    path = tmp_path / "sft.jsonl"
    rows = [
        {"instruction": f"Say the number {i} in words.", "output": f"The number is {i}."} for i in range(12)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _preflight(recipe_file: str, sets: list[str], **kw):
    return preflight.preflight(recipes.load(ROOT / "recipes" / recipe_file, sets), **kw)


def _fields(problems, severity="error"):
    return {p.field for p in problems if p.severity == severity}


def test_preflight_passes_a_good_recipe(tiny_model, sft_file, tmp_path):
    problems = _preflight(
        "lora_sft.yaml", [f"model={tiny_model}", f"dataset={sft_file}"], run_dir=tmp_path / "new"
    )
    assert not _fields(problems), problems


def test_preflight_finds_config_problems(tiny_model, sft_file):
    problems = _preflight(
        "lora_sft.yaml",
        [
            f"model={tiny_model}",
            f"dataset={sft_file}",
            "quantization.load_in_4bit=true",
            "quantization.load_in_8bit=true",
            "lora.alpha=4",
            "lora.r=8",
        ],
    )
    assert "quantization.load_in_8bit" in _fields(problems)
    assert "lora.alpha" in _fields(problems, "warning")
    full = _preflight("full_sft.yaml", [f"model={tiny_model}", f"dataset={sft_file}", "load_in_4bit=true"])
    assert "lora.enabled" in _fields(full)


def test_preflight_explains_pad_equal_to_eos(tiny_model, sft_file, tmp_path):
    model = tmp_path / "pad-eos"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["pad_token"] = "<|im_end|>"
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    problems = _preflight("lora_sft.yaml", [f"model={model}", f"dataset={sft_file}"])
    info = [p for p in problems if p.severity == "info" and p.field == "model"]
    assert info and "end-of-sequence" in info[0].message and "learns to stop" in info[0].fix


def test_preflight_wants_a_chat_template(tiny_model_no_template, sft_file):
    problems = _preflight("lora_sft.yaml", [f"model={tiny_model_no_template}", f"dataset={sft_file}"])
    assert "data.chat_template" in _fields(problems)
    fixed = _preflight(
        "lora_sft.yaml",
        [f"model={tiny_model_no_template}", f"dataset={sft_file}", "data.chat_template=chatml"],
    )
    assert "data.chat_template" not in _fields(fixed)


def test_preflight_bf16_on_hardware_without_it(tiny_model, sft_file, monkeypatch):
    from studio.train import memory

    monkeypatch.setattr(memory, "bf16_supported", lambda: False)
    problems = _preflight("lora_sft.yaml", [f"model={tiny_model}", f"dataset={sft_file}", "bf16=true"])
    assert "training.bf16" in _fields(problems)
    auto = _preflight("lora_sft.yaml", [f"model={tiny_model}", f"dataset={sft_file}", "bf16=auto"])
    assert "training.bf16" not in _fields(auto)


def test_preflight_dataset_must_fit_the_method(tiny_model, sft_file):
    problems = _preflight("dpo.yaml", [f"model={tiny_model}", f"dataset={sft_file}"])
    bad = [p for p in problems if p.field == "dataset"]
    assert bad and "does not fit DPO" in bad[0].message and "sample:dpo.jsonl" in bad[0].fix
    missing = _preflight("lora_sft.yaml", [f"model={tiny_model}", "dataset=no-such-data"])
    assert "dataset" in _fields(missing)


def test_preflight_max_length_shorter_than_most_examples(tiny_model, sft_file):
    problems = _preflight(
        "lora_sft.yaml", [f"model={tiny_model}", f"dataset={sft_file}", "data.max_length=16"]
    )
    bad = [p for p in problems if p.field == "data.max_length" and p.severity == "error"]
    assert bad and "shorter than most examples" in bad[0].message and "data.max_length=" in bad[0].fix


def test_preflight_refuses_to_overwrite_a_run(tiny_model, sft_file, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "status.json").write_text('{"state": "queued"}')  # queued by the UI: fine
    sets = [f"model={tiny_model}", f"dataset={sft_file}"]
    assert "run_dir" not in _fields(_preflight("lora_sft.yaml", sets, run_dir=run))
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    assert "run_dir" in _fields(_preflight("lora_sft.yaml", sets, run_dir=run))
    resume = [p for p in _preflight("lora_sft.yaml", sets, run_dir=run, resume=True) if p.field == "run_dir"]
    # stopped before its first checkpoint: resume starts it again from step 0, in the same folder
    assert [(p.severity, p.message) for p in resume] == [
        ("info", "stopped before the first checkpoint — nothing to resume")
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = [
        p for p in _preflight("lora_sft.yaml", sets, run_dir=empty, resume=True) if p.field == "run_dir"
    ]
    assert refused and refused[0].severity == "error" and "holds no run to resume" in refused[0].message


def test_preflight_unknown_model(sft_file):
    problems = _preflight("lora_sft.yaml", ["model=./no/such/folder/x", f"dataset={sft_file}"])
    assert "model" in _fields(problems)


def test_train_tab_has_one_widget_per_recipe_field():
    """Every editable recipe field (top-level ones like `backend` too) gets exactly one widget, in
    order, labelled in plain words with its dotted key in the hint, so widget values line up with
    fields when the tab builds `--set` overrides."""
    import gradio as gr

    from studio.train import fieldlabels
    from studio.ui import train_recipe, train_tab

    assert set(fieldlabels.LABELS) == {doc.key for doc in recipes.field_docs()}
    with gr.Blocks() as demo:
        train_tab.build_train_tab()
    shown = [
        (c.label, c.info) for c in demo.blocks.values() if isinstance(c, gr.components.Component) and c.label
    ]
    for doc in train_recipe.editable_docs():
        assert doc.label and (doc.label, train_recipe.widget_info(doc)) in [
            (label, (info or "").removesuffix(" (one per line)")) for label, info in shown
        ], doc.key
        assert f"[{doc.key}]" in train_recipe.widget_info(doc)
    values = train_recipe.on_recipe("recipes/qlora_sft.yaml")
    assert values[-1]["open"] is True  # a 4-bit recipe shows its 4-bit section
    assert (
        train_recipe.build_sets("recipes/qlora_sft.yaml", "default", "sample:alpaca.jsonl", values[:-1]) == []
    )
