"""The Train tab's guided view: data, model, goal and time budget in -> the studio's choices, each
with its reason, a measured time estimate, and the launched run's progress with the time left.

Handlers only: the choices come from studio.train.tune / autotune, the timing from a warm-up
(studio.train.warmup), the time left from studio.train.pace. The plan fills the recipe editor's
widgets (studio.ui.train_recipe), so "Advanced" shows and edits the same recipe. No widget is
built here.
"""

from __future__ import annotations

import dataclasses
import html
import os

import gradio as gr

from studio.train import autotune, pace, runs, tune
from studio.ui import common, train_recipe

GOAL_CHOICES = [(words[0].upper() + words[1:], goal) for goal, words in autotune.GOAL_WORDS.items()]
BUDGET_CHOICES = [
    ("Quick (about 5 min)", "quick"),
    ("Balanced (about 20 min)", "balanced"),
    ("Thorough (about an hour)", "thorough"),
]
FINISHED = ("completed", "failed", "stopped")


def _value(choice: autotune.Choice) -> str:
    if isinstance(choice.value, bool):
        return "yes" if choice.value else "no"
    if choice.field == "data.eval_split":
        return f"{choice.value:.0%}"
    if isinstance(choice.value, str):
        return choice.value.upper()
    return f"{choice.value:g}" if isinstance(choice.value, float) else str(choice.value)


def plan_html(plan: autotune.Plan) -> str:
    """One row a choice: plain label, value, reason, and the technical name as a small hint."""
    rows = "".join(
        f"<tr class='plan-choice' data-field='{html.escape(c.field or 'method')}'>"
        f"<td><b>{html.escape(c.label)}</b><br><small class='plan-hint'>{html.escape(c.field or 'method')}"
        f"</small></td><td class='plan-value'>{html.escape(_value(c))}</td>"
        f"<td>{html.escape(c.reason)}</td></tr>"
        for c in plan.choices
    )
    recipe = html.escape(train_recipe.recipe_title(plan.recipe))
    return (
        f"<p>Recipe: <b>{recipe}</b> · {plan.steps} steps</p>"
        "<table id='plan-table'><thead><tr><th>Choice</th><th>Value</th><th>Why</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _editor(plan: autotune.Plan, dataset: str, model: str) -> list:
    """Method, recipe, every editor widget and the 4-bit section, filled from the plan."""
    recipe = train_recipe.load(plan.recipe, tune.sets_for(plan, dataset, model))
    return [
        gr.update(value=plan.method),
        gr.update(choices=train_recipe.recipes_for(plan.method), value=plan.recipe),
        *train_recipe.values_of(recipe),
        gr.update(open=train_recipe.quantized(recipe)),
    ]


def on_plan(dataset, model, goal, budget):
    """The choices at once (no timing yet); the warm-up follows in `on_measure`."""
    keep = [gr.update()] * (len(train_recipe.editable_docs()) + 3)
    if not dataset:
        return "Choose the data to learn from first.", "", None, gr.update(interactive=False), *keep
    try:
        facts = tune.facts(dataset, model or "default", goal, budget)
        plan = autotune.choose(facts)
    except (ValueError, OSError) as exc:
        return f"**Cannot plan this run.** {exc}", "", None, gr.update(interactive=False), *keep
    waiting = "Timing a few training steps on this machine for an honest estimate…"
    facts_state = dataclasses.asdict(facts)
    return plan_html(plan), waiting, facts_state, gr.update(interactive=False), *_editor(plan, dataset, model)


def on_measure(facts_state, dataset, model):
    """Time a few real steps, then plan again at that pace: the budget caps the steps."""
    keep = [gr.update()] * (len(train_recipe.editable_docs()) + 3)
    if not facts_state:
        return gr.update(), gr.update(), gr.update(), *keep
    facts = autotune.Facts(**facts_state)
    try:
        plan, timing = tune.timed(facts, dataset, model or "default")
    except (ValueError, OSError) as exc:
        note = f"**No time estimate.** {exc}. Fix it in Advanced (Check recipe names the field)."
        return gr.update(), note, gr.update(interactive=True), *keep
    words = timing.words(plan.steps)
    estimate = f"**{words[:1].upper()}{words[1:]}**"
    if timing.busy:
        estimate += f"\n\n⚠ {timing.busy} The estimate is for a machine this busy."
    return plan_html(plan), estimate, gr.update(interactive=True), *_editor(plan, dataset, model)


def on_stale(facts_state):
    """Data, model, goal or budget changed after a plan: that plan no longer holds."""
    if not facts_state:
        return gr.update(), gr.update()
    return gr.update(interactive=False), "The choices changed: press **Plan my run** again."


def on_start(recipe_path, model, dataset, devices, *values):
    """Launch what the editor holds (the plan, plus any change made in Advanced)."""
    try:
        run_id = train_recipe.launch(recipe_path, model, dataset, devices, values)
    except (ValueError, OSError) as exc:
        return f"**Not started.** {exc}", None, gr.Timer(active=False)
    return progress_html(run_id), run_id, gr.Timer(active=True)


def progress_html(run_id: str | None) -> str:
    """The launched run: state, a bar, step, time left from the recent pace, and what slows it."""
    if not run_id:
        return ""
    try:
        info = runs.get(run_id)
    except ValueError:
        return ""
    status = {**info.status, "state": info.state}
    step, total = int(status.get("step") or 0), int(status.get("max_steps") or 0)
    fraction = step / total if total > 0 else 0.0
    detail = pace.progress_words(status)
    if info.state in FINISHED:
        detail += f" · took {common.format_duration(info.duration_s())}"
    note = ""
    if info.state == "running":
        others = tuple(i.run_id for i in runs.list_runs() if i.state in runs.ACTIVE and i.run_id != run_id)
        cores = os.cpu_count() or 1
        busy = pace.busy_note(os.getloadavg()[0], cores, training_here=cores, other_runs=others)
        note = f"<p class='busy-note'>⚠ {html.escape(busy)}</p>" if busy else ""
    follow = "See it in the Runs tab." if info.state in FINISHED else "Follow it in the Runs tab."
    return (
        f"<div id='guided-run' data-state='{info.state}'><b>{html.escape(info.name)}</b> — "
        f"<span class='run-state'>{info.state}</span> · {html.escape(detail)}. {follow}</div>"
        f"<progress max='1' value='{fraction:.3f}' style='width:100%'></progress>{note}"
    )


def on_tick(run_id):
    """The timer: refresh the progress; stop polling once the run has ended."""
    text = progress_html(run_id)
    try:
        done = not run_id or runs.get(run_id).state in FINISHED
    except ValueError:
        done = True
    return text, gr.Timer(active=not done)
