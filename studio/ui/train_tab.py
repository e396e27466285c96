"""Train tab: choose data, model, method and recipe; edit the recipe's fields as typed widgets
(help text from the recipe dataclasses); see preflight problems, the memory estimate and the exact
command; launch into the run queue.

Widgets are made from `recipes.field_docs()`, one per field, in field order; what the user
changed relative to the recipe file becomes `--set key=value`, so the launched command is exactly
the one shown to copy.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import gradio as gr

from studio import models, workspace
from studio.data import store
from studio.train import cluster, memory, preflight, recipes, runs
from studio.ui import common

RECIPES_DIR = Path(__file__).resolve().parent.parent.parent / "recipes"
TOP_KEYS = ("method", "model", "dataset")  # chosen at the top of the tab
DEVICE_KEY = "training.num_processes"

RANK_GUIDE = """**LoRA rank (r)**: 8 quick experiments · 16 most tasks · 32 complex tasks · 64 maximum
adaptation · 128+ close to a full fine-tune. Set **alpha ≈ 2 × r**."""
METHOD_GUIDE = """**Preference methods**: **DPO** keeps a reference model, the proven baseline ·
**SimPO** needs no reference model, often the best quality · **ORPO** trains SFT and preference in
one pass, the lowest memory · **KTO** learns from thumbs-up / thumbs-down examples, no pairs needed."""


def recipe_files() -> list[str]:
    return sorted(str(p.relative_to(RECIPES_DIR.parent)) for p in RECIPES_DIR.glob("*.yaml"))


def recipes_for(method: str) -> list[str]:
    return [path for path in recipe_files() if recipes.load(RECIPES_DIR.parent / path).method == method]


def editable_docs() -> list[recipes.FieldDoc]:
    return [d for d in recipes.field_docs() if d.key not in TOP_KEYS and d.key != DEVICE_KEY]


def _flat(recipe: recipes.Recipe) -> dict:
    data = recipes.to_dict(recipe)
    return {
        d.key: data[d.key.split(".")[0]][d.key.split(".")[1]] if "." in d.key else data[d.key]
        for d in recipes.field_docs()
    }


def _widget(doc: recipes.FieldDoc, value):
    """One widget for one recipe field, typed after the field (never a Textbox parsed later)."""
    label = doc.key.split(".", 1)[-1]
    if doc.auto:
        return gr.Dropdown([recipes.AUTO, "true", "false"], value=value, label=label, info=doc.help)
    if doc.choices:
        return gr.Dropdown(
            ["" if c is None else c for c in doc.choices], value=value, label=label, info=doc.help
        )
    if doc.type == "bool":
        return gr.Checkbox(value=value, label=label, info=doc.help)
    if doc.type.startswith("list"):
        return gr.Textbox(value=value, label=label, info=doc.help + " (one per line)", lines=2)
    if "int" in doc.type and "float" not in doc.type:
        return gr.Number(value=value, label=label, info=doc.help, precision=0)
    if "float" in doc.type:
        return gr.Number(value=value, label=label, info=doc.help)
    return gr.Textbox(value=value, label=label, info=doc.help)


def _to_widget(doc: recipes.FieldDoc, value):
    if doc.auto:
        return value if value == recipes.AUTO else str(bool(value)).lower()
    if doc.type.startswith("list"):
        return "\n".join(value or [])
    return "" if value is None and (doc.choices or doc.type == "str | None") else value


def _from_widget(doc: recipes.FieldDoc, value):
    """Widget value -> the recipe's typed value (None for an empty optional)."""
    if doc.auto:
        return value if value == recipes.AUTO else value == "true"
    if doc.type.startswith("list"):
        return [line.strip() for line in (value or "").splitlines() if line.strip()]
    if value in ("", None):
        return None
    if value == 0 and doc.type.endswith("| None"):  # 0 means off / all for optional numbers
        return None
    if "int" in doc.type and "float" not in doc.type:
        return int(value)
    if "float" in doc.type and "int" not in doc.type:
        return float(value)
    return value


def _set_item(key: str, value) -> str:
    """`key=value` whose value YAML reads back as the same type (strings quoted)."""
    if value is None:
        return f"{key}="
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, str | list):
        return f"{key}={json.dumps(value, ensure_ascii=False)}"
    return f"{key}={value}"


def build_sets(recipe_path: str, model: str, dataset: str, values: list) -> list[str]:
    """The `--set` overrides that turn the recipe file into what the widgets show."""
    base = _flat(recipes.load(RECIPES_DIR.parent / recipe_path))
    sets = [_set_item(k, v) for k, v in (("model", model), ("dataset", dataset)) if v and v != base[k]]
    for doc, raw in zip(editable_docs(), values, strict=True):
        value = _from_widget(doc, raw)
        if value != base[doc.key]:
            sets.append(_set_item(doc.key, value))
    return sets


def command_text(recipe_path: str, sets: list[str], devices: int) -> str:
    argv = runs.train_command(recipe_path, sets, Path("RUN_DIR"), int(devices or 1))
    head = ["accelerate", "launch"] if argv[1:3] == ["-m", "accelerate.commands.launch"] else ["python"]
    argv = head + argv[3 if head[0] == "accelerate" else 1 :]
    text = shlex.join(argv)
    return text.replace("--run-dir RUN_DIR", "").strip()


def on_recipe(recipe_path: str):
    """Fill every widget from the recipe file."""
    recipe = recipes.load(RECIPES_DIR.parent / recipe_path)
    flat = _flat(recipe)
    return [_to_widget(doc, flat[doc.key]) for doc in editable_docs()]


def on_method(method: str):
    choices = recipes_for(method)
    return gr.update(choices=choices, value=choices[0] if choices else None)


def on_check(recipe_path, model, dataset, devices, *values):
    """Preflight + memory estimate + command, without loading any weights."""
    try:
        sets = build_sets(recipe_path, model, dataset, list(values))
        recipe = recipes.load(RECIPES_DIR.parent / recipe_path, sets)
        problems = preflight.preflight(recipe)
    except (ValueError, OSError) as exc:
        return f"❌ {exc}", "", ""
    lines = [
        f"{'❌' if p.severity == 'error' else '⚠' if p.severity == 'warning' else 'ℹ'} **{p.field}**: "
        f"{p.message} — {p.fix}"
        for p in problems
    ]
    report = "\n".join(f"- {line}" for line in lines) or "✅ No problems found."
    return report, memory_text(recipe), command_text(recipe_path, sets, devices)


def memory_text(recipe: recipes.Recipe) -> str:
    try:
        estimate = memory.estimate_memory(models.info(recipe.model), recipe)
    except (ValueError, OSError) as exc:
        return f"Memory estimate unavailable: {exc}"
    icon = {"fits": "🟢", "tight": "🟡", "will not fit": "🔴"}.get(estimate.verdict, "⚪")
    notes = "\n".join(f"- {a}" for a in estimate.assumptions)
    return f"{icon} **Memory: {estimate.verdict}** — {estimate.summary()}\n\n<small>Assumptions:\n{notes}</small>"


def on_launch(recipe_path, model, dataset, devices, *values):
    try:
        sets = build_sets(recipe_path, model, dataset, list(values))
        recipe = recipes.load(RECIPES_DIR.parent / recipe_path, sets)
        errors = [p for p in preflight.preflight(recipe) if p.severity == "error"]
        if errors:
            raise ValueError("fix these first: " + "; ".join(str(p) for p in errors))
        run_id = runs.submit(recipe_path, sets, recipe.method, int(devices or 1))
        runs.schedule()  # start it now if nothing else is training, not at the next scheduler tick
    except (ValueError, OSError) as exc:
        return f"**Not launched.** {exc}"
    state = runs.get(run_id).state
    return f"Run **{run_id}** is {state}. Follow it in the Runs tab."


def on_cluster(recipe_path, model, dataset, nodes, gpus, strategy, job_name, *values):
    """Write the multi-node accelerate config, SLURM script and torchrun command for this recipe."""
    try:
        sets = build_sets(recipe_path, model, dataset, list(values))
        recipes.load(RECIPES_DIR.parent / recipe_path, sets)  # a bad recipe fails here, not on the cluster
        job = cluster.ClusterJob(
            recipe=recipe_path,
            job_name=job_name.strip(),
            nodes=int(nodes),
            gpus_per_node=int(gpus),
            strategy=strategy,
            sets=tuple(sets),
        )
        out = workspace.exports_dir() / f"cluster-{workspace.check_name(job.job_name, 'job name')}"
        files = cluster.write_bundle(out, job)
        torchrun = (
            cluster.torchrun_command(job)
            if strategy == "ddp"
            else "(torchrun: ddp only; use the SLURM script)"
        )
    except ValueError as exc:
        return f"**Not exported.** {exc}", "", "", "", None
    zip_path = shutil.make_archive(str(out), "zip", out)
    note = f"Wrote {len(files)} files to `{out}`: " + ", ".join(f"`{f.name}`" for f in files)
    return note, cluster.accelerate_config(job), cluster.slurm_script(job), torchrun, zip_path


def on_show():
    """The tab is shown: list the datasets and models saved since the page was built."""
    datasets = [e.name for e in store.list_saved()] + store.list_samples()
    return gr.update(choices=datasets), gr.update(choices=models.local_specs())


def build_train_tab(tab: gr.Tab | None = None) -> None:
    """`tab`: the Train tab, so that showing it lists the datasets and models saved meanwhile."""
    datasets = [e.name for e in store.list_saved()] + store.list_samples()
    initial = on_recipe("recipes/qlora_sft.yaml")
    with gr.Row():
        dataset = gr.Dropdown(
            datasets,
            value="sample:alpaca.jsonl" if "sample:alpaca.jsonl" in datasets else None,
            label="Dataset",
            scale=2,
            elem_id="train-dataset",
        )
        model = gr.Dropdown(
            models.local_specs(),
            value="default",
            allow_custom_value=True,
            elem_id="train-model",
            label="Model",
            scale=2,
            info="'default' (embedded SmolLM2-135M-Instruct) and the models on this machine; or type a local folder or any Hub id (search in the Models tab)",
        )
        method = gr.Dropdown(list(recipes.METHODS), value="sft", label="Method", scale=1)
        recipe = gr.Dropdown(recipes_for("sft"), value="recipes/qlora_sft.yaml", label="Recipe", scale=2)
        devices = gr.Number(
            1,
            precision=0,
            minimum=1,
            label="Devices",
            info="processes / GPUs; more than 1 runs under accelerate launch",
            scale=1,
        )
    with gr.Row():
        find_model = gr.Button("Search the Hub for a model…", size="sm")
    with gr.Row():
        gr.Markdown(RANK_GUIDE)
        gr.Markdown(METHOD_GUIDE)
    widgets = []
    docs = list(zip(editable_docs(), initial, strict=True))
    for section in dict.fromkeys(doc.key.split(".", 1)[0] for doc, _ in docs):
        fields = [(doc, value) for doc, value in docs if doc.key.split(".", 1)[0] == section]
        with gr.Accordion(section.capitalize(), open=section in ("lora", "training")):
            for start in range(0, len(fields), 4):  # four fields a row keeps the tab short
                with gr.Row():
                    widgets += [_widget(doc, value) for doc, value in fields[start : start + 4]]
    with gr.Row():
        check_btn = gr.Button("Check recipe")
        launch_btn = gr.Button("Launch run", variant="primary")
    with gr.Accordion("Export for a cluster (multi-node accelerate, SLURM, torchrun)", open=False):
        with gr.Row():
            nodes = gr.Number(2, precision=0, minimum=1, label="Nodes")
            gpus = gr.Number(8, precision=0, minimum=1, label="GPUs per node")
            strategy = gr.Dropdown(
                list(cluster.STRATEGIES),
                value="ddp",
                label="Strategy",
                info="ddp: model fits one GPU · fsdp: shard it · zero3: DeepSpeed ZeRO-3",
            )
            job_name = gr.Textbox("studio-train", label="Job name")
        cluster_btn = gr.Button("Export for a cluster")
        cluster_note = gr.Markdown()
        accel_cfg = gr.Code(label="accelerate_config.yaml", language="yaml")
        slurm = gr.Code(label="SLURM batch script", language="shell")
        torchrun = gr.Code(label="torchrun command", language="shell")
        bundle = gr.File(label="All files (.zip)", interactive=False)
    problems = gr.Markdown()
    mem = gr.Markdown()
    command = gr.Code(
        label="Command (copy to run it from a terminal)", language="shell", lines=2, elem_id="train-command"
    )
    launched = gr.Markdown()

    top = [recipe, model, dataset, devices]
    method.change(on_method, [method], [recipe])
    recipe.change(on_recipe, [recipe], widgets)
    if tab is not None:
        tab.select(on_show, None, [dataset, model], show_progress="hidden")
    model.focus(lambda: gr.update(choices=models.local_specs()), None, model)
    find_model.click(None, js=common.OPEN_MODELS_TAB)
    check_btn.click(on_check, top + widgets, [problems, mem, command])
    launch_btn.click(on_launch, top + widgets, [launched])
    cluster_btn.click(
        on_cluster,
        [recipe, model, dataset, nodes, gpus, strategy, job_name, *widgets],
        [cluster_note, accel_cfg, slurm, torchrun, bundle],
    )
