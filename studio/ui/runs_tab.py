"""Runs tab: every run with its name and true state, a live view of one (progress, curves, log),
and for a finished run what happened in words, its probe answers as before/after cards with the
changed words marked, and the next steps ("Chat with it", "Evaluate"); stop / resume / duplicate /
rename / delete, and a side-by-side comparison of several runs.

A `gr.Timer` polls the run folders; no event handler stays open for the length of a run.
"""

from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from studio import rundir, workspace
from studio.train import outcome, pace, runs
from studio.ui import common

POLL_S = 2.0
TABLE_COLUMNS = ["name", "run", "state", "method", "model", "dataset", "step", "final loss", "duration"]
LOSS_KEYS = ["loss", "eval_loss"]
PREF_KEYS = ["rewards/margins", "rewards/accuracies"]


def _final_loss(rows: list[dict]) -> str:
    losses = [r["loss"] for r in rows if isinstance(r.get("loss"), int | float)]
    return f"{losses[-1]:.4f}" if losses else ""


def runs_table() -> pd.DataFrame:
    data = []
    for info in runs.list_runs():
        step, total = info.status.get("step"), info.status.get("max_steps")
        data.append(
            [
                info.name,
                info.run_id,
                info.state,
                info.method,
                info.model,
                info.dataset,
                f"{step or 0}/{total}" if total else str(step or ""),
                _final_loss(rundir.follow_metrics(info.path)),
                common.format_duration(info.duration_s()),
            ]
        )
    return pd.DataFrame(data, columns=TABLE_COLUMNS)


def progress_html(info: runs.RunInfo) -> str:
    """Progress bar with step, epoch and time left, from status.json and the last metrics."""
    step = int(info.status.get("step") or 0)
    total = int(info.status.get("max_steps") or 0)
    fraction = step / total if total else 0.0
    rows = rundir.follow_metrics(info.path)
    epoch = next((r["epoch"] for r in reversed(rows) if "epoch" in r), None)
    # time left from the trainer's measured pace of recent steps (loading excluded), not elapsed/step
    detail = pace.progress_words(info.status) + (f" · epoch {epoch:.2f}" if epoch is not None else "")
    error = info.status.get("error") or ""
    error_html = (
        f"<pre class='studio-error'>{_escape(error)}</pre>" if error and info.state == "failed" else ""
    )
    return (
        f"<div><b>{html.escape(info.name)}</b> <small>({info.run_id})</small> — <span class='run-state' data-state='{info.state}' data-step='{step}'>"
        f"{info.state}</span> · {detail}</div>"
        f"<progress max='1' value='{fraction:.3f}' style='width:100%'></progress>{error_html}"
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def summary_markdown(info: runs.RunInfo) -> str:
    """What a completed run did, in one sentence ("" before it completes)."""
    if info.state != "completed":
        return ""
    return f"**What happened:** {outcome.summarize(info.path).text}."


CARD = "border:1px solid #d1d5db;border-radius:8px;padding:10px;margin:8px 0"
SIDE = "flex:1;min-width:0;white-space:pre-wrap;padding:6px;border-radius:6px"


def _marked(runs_of_words: list[tuple[str, bool]], tag: str) -> str:
    return "".join(
        f"<{tag}>{html.escape(text)}</{tag}>" if changed else html.escape(text)
        for text, changed in runs_of_words
    )


def probe_cards(run_dir) -> str:
    """The probe questions as cards: the base model's answer and the tuned one side by side, with
    the words that left marked in the first and the new words marked in the second."""
    probes = rundir.read_probes(run_dir)
    prompts = probes.get("prompts") or []
    before, after = probes.get("before") or [], probes.get("after") or []
    if not prompts:
        return ""
    cards = ["<div id='probe-cards'><b>Probe questions: before and after training</b>"]
    for i, prompt in enumerate(prompts):
        old = before[i] if i < len(before) else ""
        new = after[i] if i < len(after) else None
        left, right = outcome.word_diff(old, new or "")
        before_html = _marked(left, "del") or "<i>(no answer)</i>"
        after_html = _marked(right, "mark") or "<i>(no answer)</i>"
        if new is None:
            after_html = "<i>(answered when training ends)</i>"
        cards.append(
            f"<div class='probe-card' style='{CARD}'><div><b>{html.escape(prompt)}</b></div>"
            f"<div style='display:flex;gap:12px;margin-top:6px'>"
            f"<div class='probe-before' style='{SIDE};background:#f9fafb'><small>before (base)</small><br>"
            f"{before_html}</div>"
            f"<div class='probe-after' style='{SIDE};background:#f0fdf4'><small>after (tuned)</small><br>"
            f"{after_html}</div></div></div>"
        )
    return "".join(cards) + "</div>"


def _plot(rows: list[dict], keys: list[str]):
    return common.series_frame(rows, keys)


ACTIONS = {  # state -> (Stop clickable, Resume clickable)
    "queued": (True, False),
    "running": (True, False),
    "stopped": (False, True),
    "failed": (False, True),
}


def on_refresh(run_id: str | None, known: list[str] | None):
    """Timer tick: the table, and the selected run's live view.

    A run that appeared since the last tick (just launched, here or from a terminal) is selected.
    """
    table = runs_table()
    choices = list(table["run"])
    labelled = list(zip(table["name"], choices, strict=True))
    new = [r for r in choices if known is not None and r not in known]
    # Otherwise only an empty selection is filled in: rewriting it every tick would race the user.
    picker, name = gr.update(choices=labelled), gr.update()  # the name box is the user's while typing
    if (new or not run_id) and choices:
        run_id = new[0] if new else choices[0]
        picker = gr.update(choices=labelled, value=run_id)
        name = _name_of(run_id)
    if not run_id or run_id not in choices:
        empty = _plot([], LOSS_KEYS)
        off = gr.update(interactive=False, variant="secondary")
        pref = gr.update(value=_plot([], PREF_KEYS), visible=False)
        return table, picker, "", "No run selected.", empty, empty, pref, "", "", "", off, off, choices
    info = runs.get(run_id)
    rows = rundir.follow_metrics(info.path)
    can_stop, can_resume = ACTIONS.get(info.state, (False, False))
    return (
        table,
        picker,
        name,
        progress_html(info),
        _plot(rows, LOSS_KEYS),
        _plot(rows, ["learning_rate"]),
        # reward margin and accuracy exist for preference methods only: an SFT run shows no empty axes
        gr.update(value=_plot(rows, PREF_KEYS), visible=info.method != "sft"),
        rundir.log_tail(info.path, 40),
        summary_markdown(info),
        probe_cards(info.path),
        # a Stop that cannot be pressed is grey, not red
        gr.update(interactive=can_stop, variant="stop" if can_stop else "secondary"),
        gr.update(interactive=can_resume),
        choices,
    )


def _curves(label: str, y_title: str, elem_id: str, legend: str = "", height: int = 260, visible=True):
    """A line per series of a `common.series_frame`, its legend under the axes (never clipped:
    app.py's .studio-plot rule) titled `legend` (none by default: the entries name themselves)."""
    return gr.LinePlot(
        x="step",
        y="value",
        color="series",
        label=label,
        y_title=y_title,
        color_title=legend,
        height=height,
        visible=visible,
        elem_id=elem_id,
        elem_classes="studio-plot",
    )


def _act(action, run_id: str | None, done: str) -> None:
    if not run_id:
        gr.Warning("Select a run first.")
        return
    try:
        action(run_id)
    except ValueError as exc:
        gr.Warning(str(exc))
        return
    gr.Info(done)


def on_stop(run_id):
    _act(runs.stop, run_id, "Stopping: the run saves a checkpoint, then stops.")


def on_resume(run_id):
    _act(runs.resume, run_id, "Queued to resume from the last checkpoint (or from the start if it had none).")
    runs.schedule()


def on_duplicate(run_id):
    _act(runs.duplicate, run_id, "Queued a new run with the same recipe.")
    runs.schedule()


def on_delete(run_id, confirmed: bool):
    if not confirmed:
        gr.Warning("Tick 'yes, delete this run' first: deleting removes its adapter and checkpoints.")
        return False
    _act(runs.delete, run_id, f"Deleted {run_id}.")
    return False


def compare(run_ids: list[str]):
    """Overlaid loss curves and the recipes side by side for two or more runs."""
    if not run_ids or len(run_ids) < 2:
        return common.series_frame([], ["loss"]), pd.DataFrame()
    curves = []
    for run_id in run_ids:
        frame = common.series_frame(rundir.follow_metrics(workspace.run_path(run_id)), ["loss"])
        frame["series"] = run_id
        curves.append(frame)
    recipes = {run_id: _flatten(runs.get(run_id).recipe) for run_id in run_ids}
    keys = sorted({k for r in recipes.values() for k in r})
    table = pd.DataFrame(
        [[k, *[str(recipes[r].get(k, "")) for r in run_ids]] for k in keys], columns=["field", *run_ids]
    )
    differs = table[run_ids].nunique(axis=1) > 1
    return pd.concat(curves, ignore_index=True), pd.concat([table[differs], table[~differs]])


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _offer_next(run_id: str | None):
    """ "Chat with it" and "Evaluate", shown once the selected run has completed with an adapter."""
    try:
        info = runs.get(run_id) if run_id else None
    except ValueError:  # deleted meanwhile
        info = None
    done = info is not None and info.state == "completed" and (info.path / "adapter").is_dir()
    return gr.update(visible=done), gr.update(visible=done)


def _name_of(run_id: str | None) -> str:
    try:
        return runs.get(run_id).name if run_id else ""
    except ValueError:
        return ""


def on_rename(run_id: str | None, name: str):
    if not run_id:
        gr.Warning("Select a run first.")
        return gr.update()
    try:
        name = runs.rename(run_id, name)
    except ValueError as exc:
        gr.Warning(str(exc))
        return gr.update()
    gr.Info(f"Renamed to {name}.")
    return name


def build_runs_tab(tab: gr.Tab | None = None) -> tuple[gr.Dropdown, gr.Button, gr.Button]:
    """The tab; returns the run picker, "Chat with it" and "Evaluate" (the app wires them to the
    Chat and Evaluate tabs). `tab`: the Runs tab, so that showing it refreshes the view at once."""
    timer = gr.Timer(POLL_S)
    table = gr.Dataframe(
        headers=TABLE_COLUMNS, label="Runs", interactive=False, wrap=True, elem_id="runs-table"
    )
    with gr.Row():
        selected = gr.Dropdown([], label="Run", scale=3, allow_custom_value=False)
        stop_btn = gr.Button("Stop", variant="secondary", scale=1, interactive=False)
        resume_btn = gr.Button("Resume", scale=1, interactive=False)
        dup_btn = gr.Button("Duplicate as new run", scale=1)
        chat_btn = gr.Button("Chat with it", variant="primary", scale=1, visible=False)
        evaluate_btn = gr.Button("Evaluate", variant="primary", scale=1, visible=False)
    with gr.Row():
        name = gr.Textbox(label="Name", scale=3, max_lines=1, elem_id="run-name")
        rename_btn = gr.Button("Rename", scale=1)
        confirm = gr.Checkbox(False, label="yes, delete this run", scale=2)
        delete_btn = gr.Button("Delete run", scale=1)
    progress = gr.HTML(elem_id="run-progress")
    summary = gr.Markdown(elem_id="run-summary")
    probes = gr.HTML(elem_id="run-probes")
    with gr.Row():
        loss_plot = _curves("Loss (train and eval)", "loss", "runs-loss")
        lr_plot = _curves("Learning rate", "learning rate", "runs-lr")
        pref_plot = _curves("Reward margin and accuracy", "margin / accuracy", "runs-pref", visible=False)
    log = gr.Code(label="Log (last lines)", language=None, lines=12)
    with gr.Accordion("Compare runs", open=False):
        to_compare = gr.Dropdown([], multiselect=True, label="Runs to compare (two or more)")
        compare_btn = gr.Button("Compare")
        compare_plot = _curves("Loss", "loss", "runs-compare", legend="run", height=300)
        compare_table = gr.Dataframe(label="Recipes side by side (differences first)", interactive=False)

    known = gr.State(None)  # run ids seen by the last tick: a new one gets selected
    outputs = [table, selected, name, progress, loss_plot, lr_plot, pref_plot, log, summary, probes]
    outputs += [stop_btn, resume_btn, known]
    triggers = [timer.tick, selected.input] + ([tab.select] if tab is not None else [])
    gr.on(triggers, on_refresh, [selected, known], outputs, show_progress="hidden")
    timer.tick(_offer_next, [selected], [chat_btn, evaluate_btn], show_progress="hidden")
    selected.input(_name_of, [selected], [name], show_progress="hidden")
    gr.on([rename_btn.click, name.submit], on_rename, [selected, name], [name])
    stop_btn.click(on_stop, [selected], None)
    resume_btn.click(on_resume, [selected], None)
    dup_btn.click(on_duplicate, [selected], None)
    delete_btn.click(on_delete, [selected, confirm], [confirm])
    to_compare.focus(lambda: gr.update(choices=[r.run_id for r in runs.list_runs()]), None, [to_compare])
    compare_btn.click(compare, [to_compare], [compare_plot, compare_table])
    return selected, chat_btn, evaluate_btn
