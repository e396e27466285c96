"""Train tab: the guided view first (data, model, goal, time budget -> the studio's choices with
their reasons, a measured time estimate, Start training, the run's progress), and "Advanced", the
recipe field by field (plain labels, technical names as hints), with its checks, memory estimate,
command and cluster export right under the buttons that make them.

Both views edit one recipe: the plan fills the editor's widgets and "Start training" launches
what the editor holds. Handlers live in studio.ui.train_guided and studio.ui.train_recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from studio import models
from studio.data import store
from studio.train import cluster, recipes
from studio.ui import common, train_guided, train_recipe
from studio.ui.train_recipe import editable_docs  # noqa: F401 - the tab's fields, for tests

RANK_GUIDE = """**Adapter size (LoRA rank r)**: 8 quick experiments · 16 most tasks · 32 complex tasks ·
64 maximum adaptation · 128+ close to a full fine-tune. Set **strength (alpha) ≈ 2 × size**."""
METHOD_GUIDE = """**Preference methods**: **DPO** keeps a reference model, the proven baseline ·
**SimPO** needs no reference model, often the best quality · **ORPO** trains SFT and preference in
one pass, the lowest memory · **KTO** learns from thumbs-up / thumbs-down examples, no pairs needed."""
START_RECIPE = "recipes/qlora_sft.yaml"
# A picked method or recipe refills every field when the server answers: until then the fields are
# locked (inert: no typing, no clicks), so a value typed meanwhile is not overwritten. The lock is
# set in the browser before the request leaves and lifted when the answer (or an error) is in.
LOCK_FIELDS = """(...values) => {
  const box = document.querySelector("#train-advanced");
  if (box) { box.inert = true; box.classList.add("studio-refilling"); }
  return values;
}"""
UNLOCK_FIELDS = """() => {
  const box = document.querySelector("#train-advanced");
  if (box) { box.inert = false; box.classList.remove("studio-refilling"); }
}"""
CSS = "#train-advanced.studio-refilling { opacity: 0.6; cursor: progress; }"


@dataclass
class Editor:
    """The Advanced view's widgets that other parts of the tab read or fill."""

    method: gr.Dropdown
    recipe: gr.Dropdown
    devices: gr.Number
    widgets: list
    quant_box: gr.Accordion
    changed: gr.Markdown

    def filled(self) -> list:
        """What a plan fills: method, recipe, every field, the 4-bit section."""
        return [self.method, self.recipe, *self.widgets, self.quant_box]


def _datasets() -> list[str]:
    return [e.name for e in store.list_saved()] + store.list_samples()


def on_show():
    """The tab is shown: list the datasets and models saved since the page was built."""
    return gr.update(choices=_datasets()), gr.update(choices=models.local_specs())


def _widget(doc: recipes.FieldDoc, value):
    """One widget for one recipe field, typed after the field (never a Textbox parsed later)."""
    kw = dict(label=doc.label, info=train_recipe.widget_info(doc))
    if doc.auto:
        return gr.Dropdown([recipes.AUTO, "true", "false"], value=value, **kw)
    if doc.choices:
        return gr.Dropdown(["" if c is None else c for c in doc.choices], value=value, **kw)
    if doc.type == "bool":
        return gr.Checkbox(value=value, **kw)
    if doc.type.startswith("list"):
        return gr.Textbox(value=value, label=doc.label, info=kw["info"] + " (one per line)", lines=2)
    if "int" in doc.type and "float" not in doc.type:
        return gr.Number(value=value, precision=0, **kw)
    if "float" in doc.type:
        return gr.Number(value=value, **kw)
    return gr.Textbox(value=value, **kw)


def _build_pickers() -> tuple[gr.Dropdown, gr.Dropdown]:
    datasets = _datasets()
    with gr.Row():
        dataset = gr.Dropdown(
            datasets,
            value="sample:alpaca.jsonl" if "sample:alpaca.jsonl" in datasets else None,
            label="Data to learn from",
            info="a dataset saved in the Data tab (a Hub dataset too, once saved there) or a sample",
            scale=2,
            elem_id="train-dataset",
        )
        model = common.model_picker("Model", "train-model", scale=2)
    common.find_model_button()
    return dataset, model


def _build_sections(initial: list) -> tuple[list, gr.Accordion]:
    """One accordion per recipe section, in plain words; the 4-bit one open for a 4-bit recipe."""
    widgets, quant_box = [], None
    docs = list(zip(editable_docs(), initial, strict=True))
    open_ = {"lora", "training"} | (
        {"quantization"} if train_recipe.load(START_RECIPE).quantization.load_in_4bit else set()
    )
    for section in dict.fromkeys(doc.key.split(".", 1)[0] for doc, _ in docs):
        fields = [(doc, value) for doc, value in docs if doc.key.split(".", 1)[0] == section]
        with gr.Accordion(train_recipe.section_title(section), open=section in open_) as box:
            for start in range(0, len(fields), 4):  # four fields a row keeps the tab short
                with gr.Row():
                    widgets += [_widget(doc, value) for doc, value in fields[start : start + 4]]
        if section == "quantization":
            quant_box = box
    return widgets, quant_box


def _build_editor() -> Editor:
    with gr.Row():
        method = gr.Dropdown(
            list(recipes.METHODS), value="sft", label="What it learns (method)", info="[method]", scale=1
        )
        recipe = gr.Dropdown(
            train_recipe.recipes_for("sft"),
            value=START_RECIPE,
            label="Recipe",
            info="a file in recipes/",
            scale=2,
        )
        devices = gr.Number(
            1,
            precision=0,
            minimum=1,
            label="Devices (GPUs)",
            info="processes / GPUs; more than 1 runs under accelerate launch [training.num_processes]",
            scale=1,
        )
    changed = gr.Markdown(elem_id="train-changed")
    with gr.Row():
        gr.Markdown(RANK_GUIDE)
        gr.Markdown(METHOD_GUIDE)
    widgets, quant_box = _build_sections(train_recipe.values_of(train_recipe.load(START_RECIPE)))
    return Editor(method, recipe, devices, widgets, quant_box, changed)


def _build_checks(top: list, editor: Editor) -> None:
    """Check and launch, their results right below them."""
    with gr.Row():
        check_btn = gr.Button("Check recipe")
        launch_btn = gr.Button("Launch run", variant="primary")
    launched = gr.Markdown()
    problems = gr.Markdown()
    mem = gr.Markdown()
    command = gr.Code(
        label="Command (copy to run it from a terminal)", language="shell", lines=2, elem_id="train-command"
    )
    check_btn.click(train_recipe.on_check, top + editor.widgets, [problems, mem, command])
    launch_btn.click(train_recipe.on_launch, top + editor.widgets, [launched])


def _build_cluster(recipe, dataset, model, widgets: list) -> None:
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
    cluster_btn.click(
        train_recipe.on_cluster,
        [recipe, model, dataset, nodes, gpus, strategy, job_name, *widgets],
        [cluster_note, accel_cfg, slurm, torchrun, bundle],
    )


def _build_guided(dataset, model, editor_inputs: list, filled: list) -> None:
    with gr.Row():
        goal = gr.Radio(train_guided.GOAL_CHOICES, value="style", label="What should it learn?", scale=2)
        budget = gr.Radio(train_guided.BUDGET_CHOICES, value="quick", label="How long may it train?", scale=2)
    plan_btn = gr.Button("Plan my run", variant="secondary")
    plan = gr.HTML(elem_id="train-plan")
    estimate = gr.Markdown(elem_id="train-estimate")
    start = gr.Button("Start training", variant="primary", interactive=False)
    progress = gr.HTML(elem_id="train-progress")
    facts, run_id = gr.State(None), gr.State(None)
    timer = gr.Timer(2.0, active=False)
    plan_btn.click(
        train_guided.on_plan, [dataset, model, goal, budget], [plan, estimate, facts, start, *filled]
    ).then(train_guided.on_measure, [facts, dataset, model], [plan, estimate, start, *filled])
    gr.on(
        [dataset.input, model.input, goal.input, budget.input],
        train_guided.on_stale,
        [facts],
        [start, estimate],
    )
    start.click(train_guided.on_start, editor_inputs, [progress, run_id, timer])
    timer.tick(train_guided.on_tick, [run_id], [progress, timer], show_progress="hidden")


def build_train_tab(tab: gr.Tab | None = None) -> None:
    """`tab`: the Train tab, so that showing it lists the datasets and models saved meanwhile."""
    dataset, model = _build_pickers()
    guided = gr.Column()  # filled below, once the editor it fills exists
    with gr.Accordion("Advanced: every setting of the recipe", open=False, elem_id="train-advanced"):
        editor = _build_editor()
        top = [editor.recipe, model, dataset, editor.devices]
        _build_checks(top, editor)
        _build_cluster(editor.recipe, dataset, model, editor.widgets)
    with guided:
        _build_guided(dataset, model, top + editor.widgets, editor.filled())
    # .input, not .change: a plan filling method and recipe must not reset the fields it set
    editor.method.input(
        train_recipe.on_method,
        [editor.method, *editor.widgets],
        [editor.recipe, *editor.widgets, editor.quant_box, editor.changed],
        js=LOCK_FIELDS,
    ).then(None, js=UNLOCK_FIELDS)
    editor.recipe.input(
        train_recipe.on_pick_recipe,
        [editor.recipe, *editor.widgets],
        [*editor.widgets, editor.quant_box, editor.changed],
        js=LOCK_FIELDS,
    ).then(None, js=UNLOCK_FIELDS)
    if tab is not None:
        tab.select(on_show, None, [dataset, model], show_progress="hidden")
