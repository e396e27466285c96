"""The Train tab's recipe editor ("Advanced"): widget values <-> recipe fields, and its actions
(check, launch, switch method or recipe, export for a cluster).

Widgets are made from `recipes.field_docs()`, one per field, in field order, labelled in plain
words (studio.train.fieldlabels) with the dotted key as a hint; what differs from the recipe
file becomes `--set key=value`, so the launched command is exactly the one shown to copy. The
guided view fills the same widgets, so both views edit one recipe. No widget is built here.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import gradio as gr

from studio import models, workspace
from studio.train import cluster, fieldlabels, memory, preflight, recipes, runs

RECIPES_DIR = Path(__file__).resolve().parent.parent.parent / "recipes"
TOP_KEYS = ("method", "model", "dataset")  # chosen at the top of the tab
DEVICE_KEY = "training.num_processes"
SHOWN_CHANGES = 6  # a method switch lists this many changed fields, then "and N more"


def recipe_title(path: str) -> str:
    """A recipe by its name: the words before the colon of its first comment line.

    >>> recipe_title("recipes/qlora_sft.yaml")
    'QLoRA SFT'
    """
    try:
        first = (RECIPES_DIR.parent / path).read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError):
        first = ""
    if first.startswith("#") and ":" in first:
        return first.lstrip("# ").split(":", 1)[0].strip()
    return Path(path).stem.replace("_", " ")


def recipe_files() -> list[str]:
    return sorted(str(p.relative_to(RECIPES_DIR.parent)) for p in RECIPES_DIR.glob("*.yaml"))


def recipes_for(method: str) -> list[tuple[str, str]]:
    """(name, file) of each recipe of this method, for a dropdown that shows names."""
    return [
        (recipe_title(path), path)
        for path in recipe_files()
        if recipes.load(RECIPES_DIR.parent / path).method == method
    ]


def editable_docs() -> list[recipes.FieldDoc]:
    return [d for d in recipes.field_docs() if d.key not in TOP_KEYS and d.key != DEVICE_KEY]


def section_title(section: str) -> str:
    return fieldlabels.SECTIONS.get(section) or f"{fieldlabels.LABELS[section]} ({section})"


def widget_info(doc: recipes.FieldDoc) -> str:
    return f"{doc.help} [{doc.key}]"


def load(recipe_path: str, sets: list[str] | None = None) -> recipes.Recipe:
    return recipes.load(RECIPES_DIR.parent / recipe_path, sets or [])


def flat(recipe: recipes.Recipe) -> dict:
    data = recipes.to_dict(recipe)
    return {
        d.key: data[d.key.split(".")[0]][d.key.split(".")[1]] if "." in d.key else data[d.key]
        for d in recipes.field_docs()
    }


def to_widget(doc: recipes.FieldDoc, value):
    if doc.auto:
        return value if value == recipes.AUTO else str(bool(value)).lower()
    if doc.type.startswith("list"):
        return "\n".join(value or [])
    return "" if value is None and (doc.choices or doc.type == "str | None") else value


def from_widget(doc: recipes.FieldDoc, value):
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
    base = flat(load(recipe_path))
    sets = [_set_item(k, v) for k, v in (("model", model), ("dataset", dataset)) if v and v != base[k]]
    for doc, raw in zip(editable_docs(), values, strict=True):
        value = from_widget(doc, raw)
        if value != base[doc.key]:
            sets.append(_set_item(doc.key, value))
    return sets


def command_text(recipe_path: str, sets: list[str], devices: int) -> str:
    argv = runs.train_command(recipe_path, sets, Path("RUN_DIR"), int(devices or 1))
    head = ["accelerate", "launch"] if argv[1:3] == ["-m", "accelerate.commands.launch"] else ["python"]
    argv = head + argv[3 if head[0] == "accelerate" else 1 :]
    return shlex.join(argv).replace("--run-dir RUN_DIR", "").strip()


def quantized(recipe: recipes.Recipe) -> bool:
    return recipe.quantization.load_in_4bit or recipe.quantization.load_in_8bit


def values_of(recipe: recipes.Recipe) -> list:
    shown = flat(recipe)
    return [to_widget(doc, shown[doc.key]) for doc in editable_docs()]


def on_recipe(recipe_path: str):
    """Every widget from the recipe file, and the 4-bit section open when the recipe loads in 4-bit."""
    recipe = load(recipe_path)
    return [*values_of(recipe), gr.update(open=quantized(recipe))]


def what_changed(old_values: list, new_values: list) -> list[str]:
    """'Training length (steps) 60 → 40' for each field whose shown value differs."""
    changes = []
    for doc, old, new in zip(editable_docs(), old_values, new_values, strict=True):
        if from_widget(doc, old) == from_widget(doc, new):
            continue
        if doc.type.startswith("list"):  # a list does not fit in a sentence
            changes.append(f"{doc.label} replaced")
        else:
            changes.append(f"{doc.label} {_shown(old)} → {_shown(new)}")
    return changes


def _shown(value) -> str:
    if isinstance(value, float) and value == int(value) and abs(value) < 1e6:
        value = int(value)
    text = "empty" if value in ("", None) else str(value)
    return text if len(text) <= 40 else text[:37] + "…"


def switch_note(recipe_path: str, old_values: list, new_values: list) -> str:
    """Say what a switch of method or recipe changed, instead of changing fields silently."""
    changes = what_changed(old_values, new_values)
    name = recipe_title(recipe_path)
    if not changes:
        return f"Switched to the **{name}** recipe; no field changed."
    more = f", and {len(changes) - SHOWN_CHANGES} more" if len(changes) > SHOWN_CHANGES else ""
    return (
        f"Switched to the **{name}** recipe, which changed: "
        + "; ".join(changes[:SHOWN_CHANGES])
        + f"{more}. These are that recipe's own values; change any of them back below."
    )


def on_method(method: str, *old_values):
    """A method picked by hand: its first recipe, every field from it, and what that changed."""
    choices = recipes_for(method)
    if not choices:
        return [gr.update(), *old_values, gr.update(), f"No recipe in recipes/ trains {method.upper()}."]
    path = choices[0][1]
    values = on_recipe(path)
    return [gr.update(choices=choices, value=path), *values, switch_note(path, list(old_values), values[:-1])]


def on_pick_recipe(recipe_path: str, *old_values):
    values = on_recipe(recipe_path)
    return [*values, switch_note(recipe_path, list(old_values), values[:-1])]


def _problem_lines(problems: list[recipes.Problem]) -> str:
    lines = [
        f"{'❌' if p.severity == 'error' else '⚠' if p.severity == 'warning' else 'ℹ'} "
        f"**{fieldlabels.LABELS.get(p.field, p.field)}** ({p.field}): {p.message} — {p.fix}"
        for p in problems
    ]
    return "\n".join(f"- {line}" for line in lines) or "✅ No problems found."


def on_check(recipe_path, model, dataset, devices, *values):
    """Preflight + memory estimate + command, without loading any weights."""
    try:
        sets = build_sets(recipe_path, model, dataset, list(values))
        recipe = load(recipe_path, sets)
        problems = preflight.preflight(recipe)
    except (ValueError, OSError) as exc:
        return f"❌ {exc}", "", ""
    return _problem_lines(problems), memory_text(recipe), command_text(recipe_path, sets, devices)


def memory_text(recipe: recipes.Recipe) -> str:
    try:
        estimate = memory.estimate_memory(models.info(recipe.model), recipe)
    except (ValueError, OSError) as exc:
        return f"Memory estimate unavailable: {exc}"
    icon = {"fits": "🟢", "tight": "🟡", "will not fit": "🔴"}.get(estimate.verdict, "⚪")
    notes = "\n".join(f"- {a}" for a in estimate.assumptions)
    return f"{icon} **Memory: {estimate.verdict}** — {estimate.summary()}\n\n<small>Assumptions:\n{notes}</small>"


def launch(recipe_path, model, dataset, devices, values) -> str:
    """Queue the run the widgets describe; its run id. Raises ValueError naming what to fix."""
    sets = build_sets(recipe_path, model, dataset, list(values))
    recipe = load(recipe_path, sets)
    errors = [p for p in preflight.preflight(recipe) if p.severity == "error"]
    if errors:
        raise ValueError("fix these first: " + "; ".join(str(p) for p in errors))
    run_id = runs.submit(recipe_path, sets, recipe.method, int(devices or 1))
    runs.schedule()  # start it now if nothing else is training, not at the next scheduler tick
    return run_id


def on_launch(recipe_path, model, dataset, devices, *values):
    try:
        run_id = launch(recipe_path, model, dataset, devices, values)
    except (ValueError, OSError) as exc:
        return f"**Not launched.** {exc}"
    state = runs.get(run_id).state
    return f"Run **{run_id}** is {state}. Follow it in the Runs tab."


def on_cluster(recipe_path, model, dataset, nodes, gpus, strategy, job_name, *values):
    """Write the multi-node accelerate config, SLURM script and torchrun command for this recipe."""
    try:
        sets = build_sets(recipe_path, model, dataset, list(values))
        load(recipe_path, sets)  # a bad recipe fails here, not on the cluster
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
