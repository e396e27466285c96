"""Evaluate tab: did the tune work? Base vs adapter on prompts the run never saw, scored and judged.

Pick a run, an eval set and (optionally) a judge; Start runs `python -m studio eval` in the
background (studio/evaluate/job.py) and a `gr.Timer` reads its folder back: progress, the summary
with the win rate and its 95% interval, a win/tie/loss chart, per-prompt scores, and the table.
Runs are compared by their newest evaluation. Handlers convert widgets to an EvalConfig and back.
"""

from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from studio import workspace
from studio.data import store as datasets
from studio.evaluate import evaldir, job, report
from studio.train import runs

POLL_S = 2.0
SETS = ["Held-out split of the run", "Saved dataset or file", "Prompts I type"]
JUDGES = ["No judge", "A model the studio loads", "An OpenAI-compatible endpoint"]
COMPARE_COLUMNS = [
    "run",
    "eval",
    "set",
    "A",
    "B",
    "judge",
    "win rate [95%]",
    "n",
    "ref ppl A/B",
    "general ppl A/B",
]


def _evaluable_runs() -> list[tuple[str, str]]:
    """(name, run id) of every run with a finished adapter."""
    done = [r for r in runs.list_runs() if (r.path / "adapter" / "adapter_config.json").is_file()]
    return [(r.name, r.run_id) for r in done]


def _side_choices(run_id: str | None) -> list[tuple[str, str]]:
    choices = [("Base model", "base"), ("This run's adapter", "adapter")]
    if run_id:
        for ckpt in sorted((workspace.run_path(run_id) / "checkpoints").glob("checkpoint-*")):
            if (ckpt / "adapter_config.json").is_file():
                choices.append((f"Checkpoint {ckpt.name.removeprefix('checkpoint-')}", str(ckpt)))
    return choices


def _dataset_choices() -> list[str]:
    return [entry.name for entry in datasets.list_saved()] + datasets.list_samples()


def _config(eval_set, dataset, prompts, side_a, side_b, judge_kind, judge_model, url, endpoint_model,
            judge_prompt, limit, max_new_tokens, batch_size, seed) -> evaldir.EvalConfig:  # fmt: skip
    spec = {SETS[0]: "heldout", SETS[1]: (dataset or "").strip(), SETS[2]: "prompts"}[eval_set]
    if eval_set == SETS[1] and not spec:
        raise ValueError("choose a saved dataset, or type the path of a data file")
    judge = {JUDGES[0]: "", JUDGES[1]: (judge_model or "").strip(), JUDGES[2]: (url or "").strip()}[
        judge_kind
    ]
    if judge_kind != JUDGES[0] and not judge:
        raise ValueError("name the judge: a model ('default', a folder, a Hub id) or the endpoint's URL")
    if judge_kind == JUDGES[2] and not judge.lower().startswith(("http://", "https://")):
        raise ValueError(f"the endpoint URL {judge!r} must start with http:// or https://")
    return evaldir.EvalConfig(
        eval_set=spec,
        prompts=(prompts or "").splitlines(),
        side_a=side_a,
        side_b=side_b,
        judge=judge,
        judge_model=(endpoint_model or "").strip() if judge_kind == JUDGES[2] else "",
        judge_prompt=judge_prompt or evaldir.DEFAULT_JUDGE_PROMPT,
        limit=int(limit),
        max_new_tokens=int(max_new_tokens),
        batch_size=int(batch_size),
        seed=int(seed),
    ).check()


def on_start(run_id, key, *values):
    if not run_id:
        raise gr.Error("Pick a finished run to evaluate.")
    try:
        config = _config(*values)
        eval_id = job.start(workspace.run_path(run_id), config, key=(key or "").strip())
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    gr.Info(f"Evaluation {eval_id} started.")
    return gr.update(choices=evaldir.list_ids(workspace.run_path(run_id)), value=eval_id)


def on_stop(run_id, eval_id):
    if run_id and eval_id:
        job.stop(workspace.run_path(run_id), eval_id)
        gr.Info("Stopping: the answers so far are kept, and the summary says it is partial.")


def on_resume(run_id, eval_id, key):
    if not (run_id and eval_id):
        raise gr.Error("Pick an evaluation to continue.")
    try:
        job.resume(workspace.run_path(run_id), eval_id, key=(key or "").strip())
    except ValueError as exc:
        raise gr.Error(str(exc)) from None


def progress_html(run_dir, eval_id: str) -> str:
    folder = evaldir.folder(run_dir, eval_id)
    status = evaldir.read_status(folder)
    state = job.state(run_dir, eval_id)
    done, total = int(status.get("done") or 0), int(status.get("total") or 0)
    stage = {"answers": "answering", "likelihood": "scoring perplexity", "judge": "judging"}.get(
        status.get("stage", ""), "starting"
    )
    words = {
        "interrupted": "interrupted (the app or the job was killed): press Continue to finish it",
        "completed": "done",
    }.get(state, state)
    percent = 100 * done / total if total else 0
    error = status.get("error") or ""
    detail = f"{stage}: {done}/{total}" if state in job.ACTIVE else words
    return (
        f"<div id='eval-state' data-state='{state}'><b>{eval_id}</b>: {detail}"
        f"<div style='background:#e5e7eb;height:8px;border-radius:4px'><div style='background:#2563eb;"
        f"height:8px;border-radius:4px;width:{percent:.0f}%'></div></div>"
        + (f"<pre class='studio-error'>{html.escape(error)}</pre>" if error else "")
        + "</div>"
    )


def chart(summary: dict, rows: list[list]):
    """Win / tie / loss bars (judge, your votes) with the 95% interval; per-prompt ROUGE-L of A, B."""
    import matplotlib  # on first chart, not at import: the page's first load is 0.4 s shorter

    matplotlib.use("Agg")  # charts are drawn to images on a server with no display
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 2.8), dpi=100)
    bars = [(name, summary.get(key)) for name, key in (("judge", "judge"), ("your votes", "human"))]
    bars = [(name, rate) for name, rate in bars if rate and rate.get("n")]
    for y, (_, rate) in enumerate(bars):
        n = rate["n"]
        start = 0.0
        for part, color in (("wins", "#16a34a"), ("ties", "#9ca3af"), ("losses", "#dc2626")):
            width = rate[part] / n
            left.barh(y, width, left=start, color=color, label=part if y == 0 else None)
            start += width
        below, above = rate["win_rate"] - rate["low"], rate["high"] - rate["win_rate"]
        left.errorbar(rate["win_rate"], y, xerr=[[below], [above]], fmt="o", color="black", capsize=4)
    left.set_yticks(range(len(bars)), [f"{name} (n={rate['n']})" for name, rate in bars])
    left.axvline(0.5, color="#6b7280", linestyle="--", linewidth=1)
    left.set_xlim(0, 1)
    left.set_title("B vs A: wins / ties / losses, win rate with 95% interval", fontsize=9)
    if bars:
        left.legend(fontsize=7, loc="lower right")
    scores_a = [float(r[7]) for r in rows if r[7] != ""]
    scores_b = [float(r[8]) for r in rows if r[8] != ""]
    if scores_a:
        right.boxplot([scores_a, scores_b], tick_labels=["A", "B"], vert=False)
        right.set_title("ROUGE-L against the references, per prompt", fontsize=9)
    else:
        right.axis("off")
        right.text(0.5, 0.5, "no reference answers to score against", ha="center", va="center", fontsize=9)
    fig.tight_layout()
    plt.close(fig)
    return fig


def on_poll(run_id, eval_id, seen):
    """Timer tick: progress always; summary, chart and table only when the folder changed."""
    if not run_id or not eval_id:
        return "", "", None, None, None
    run_dir = workspace.run_path(run_id)
    folder = evaldir.folder(run_dir, eval_id)
    state = job.state(run_dir, eval_id)
    mark = [state, *(f.stat().st_size for f in sorted(folder.glob("*.jsonl")))]
    if mark == seen:
        return progress_html(run_dir, eval_id), gr.skip(), gr.skip(), gr.skip(), seen
    summary = report.summarize(folder, run_dir)
    rows = report.table(folder)
    text = f"### {report.headline(summary)}\n\n" + "\n".join(report.summary_lines(summary))
    frame = pd.DataFrame(rows, columns=report.TABLE_COLUMNS)
    return progress_html(run_dir, eval_id), text, chart(summary, rows), frame, mark


def on_pick_run(run_id):
    if not run_id:
        return gr.update(choices=[], value=None), gr.update(), gr.update()
    ids = evaldir.list_ids(workspace.run_path(run_id))
    sides = _side_choices(run_id)
    return (
        gr.update(choices=ids, value=ids[0] if ids else None),
        gr.update(choices=sides),
        gr.update(choices=sides),
    )


def _pair(perplexity: dict | None) -> str:
    return f"{perplexity['a']:.2f} / {perplexity['b']:.2f}" if perplexity else ""


def compare_table(run_ids: list[str]) -> pd.DataFrame:
    rows = []
    for summary in report.compare([workspace.run_path(r) for r in run_ids or []]):
        judge = summary.get("judge") or {}
        ref, gen = summary["perplexity"].get("reference"), summary["perplexity"].get("general")
        interval = ""
        if judge.get("n"):
            interval = f"{judge['win_rate']:.2f} [{judge['low']:.2f}, {judge['high']:.2f}]"
        rows.append(
            [
                summary["run_id"],
                summary["eval_id"],
                summary["eval_set"],
                summary["side_a"],
                summary["side_b"],
                summary.get("judge_name") or "",
                interval,
                judge.get("n", ""),
                _pair(ref),
                _pair(gen),
            ]
        )
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def select_run(run_id: str | None):
    """The run picker's update when another tab sends a run here."""
    return gr.update(choices=_evaluable_runs(), value=run_id)


def build_evaluate_tab() -> gr.Dropdown:
    """The tab; returns its run picker, so the Runs tab's "Evaluate" button can select a run."""
    gr.Markdown(
        "Is the tuned model better than the base on prompts it has not seen? Both answer every prompt "
        "greedily; a judge compares each pair twice (both orders) and the **win rate comes with its 95% "
        "interval**. See the README's *Reading the numbers*."
    )
    with gr.Row():
        run = gr.Dropdown(_evaluable_runs(), label="Run", scale=3, elem_id="eval-run")
        side_a = gr.Dropdown(_side_choices(None), value="base", label="A (compared against)", scale=2)
        side_b = gr.Dropdown(_side_choices(None), value="adapter", label="B (the tuned model)", scale=2)
    with gr.Row():
        eval_set = gr.Radio(SETS, value=SETS[0], label="Eval set", scale=2)
        dataset = gr.Dropdown(
            _dataset_choices(), label="Saved dataset or file", allow_custom_value=True, scale=2
        )
    prompts = gr.Textbox(label="Prompts I type (one per line)", lines=3, elem_id="eval-prompts")
    with gr.Row():
        judge_kind = gr.Radio(JUDGES, value=JUDGES[1], label="Judge", scale=3)
        judge_model = gr.Textbox(
            "default", label="Judge model", info="'default', a folder or a Hub id", scale=2
        )
    with gr.Row():
        url = gr.Textbox(label="Endpoint URL", placeholder="http://127.0.0.1:8000/v1", scale=3)
        endpoint_model = gr.Textbox(label="Endpoint model name", scale=2)
        key = gr.Textbox(label="API key (kept in memory, never saved)", type="password", scale=2)
    with gr.Accordion("Judging prompt (editable) and settings", open=False):
        judge_prompt = gr.Textbox(
            evaldir.DEFAULT_JUDGE_PROMPT,
            label="Judging prompt",
            lines=10,
            info="{question}, {answer_1} and {answer_2} are filled in; ask for [[1]], [[2]] or [[tie]]",
        )
        with gr.Row():
            limit = gr.Number(50, label="At most this many prompts", precision=0, minimum=1)
            max_new_tokens = gr.Slider(8, 512, value=128, step=8, label="Longest answer (tokens)")
            batch_size = gr.Slider(1, 16, value=4, step=1, label="Prompts per batch")
            seed = gr.Number(0, label="Seed", precision=0)
    with gr.Row():
        start = gr.Button("Start evaluation", variant="primary")
        stop = gr.Button("Stop", variant="stop")
        resume = gr.Button("Continue")
        evaluation = gr.Dropdown([], label="Evaluation", scale=2, elem_id="eval-pick")
    progress = gr.HTML(elem_id="eval-progress")
    summary = gr.Markdown(elem_id="eval-summary")
    plot = gr.Plot(label="Win rate and scores")
    table = gr.Dataframe(
        headers=report.TABLE_COLUMNS,
        label="Prompt by prompt",
        interactive=False,
        wrap=True,
        elem_id="eval-table",
        column_widths=["3%", "14%", "14%", "20%", "20%", "4%", "4%", "4%", "4%", "4%", "4%", "5%"],
    )
    with gr.Accordion("Compare runs by their newest evaluation", open=False):
        to_compare = gr.Dropdown([], multiselect=True, label="Runs")
        compared = gr.Dataframe(headers=COMPARE_COLUMNS, interactive=False, wrap=True)

    seen = gr.State(None)
    settings = [eval_set, dataset, prompts, side_a, side_b, judge_kind, judge_model, url, endpoint_model,
                judge_prompt, limit, max_new_tokens, batch_size, seed]  # fmt: skip
    timer = gr.Timer(POLL_S)
    poll = [run, evaluation, seen]
    shown = [progress, summary, plot, table, seen]
    timer.tick(on_poll, poll, shown, show_progress="hidden")
    run.focus(lambda: gr.update(choices=_evaluable_runs()), None, [run])
    run.change(on_pick_run, [run], [evaluation, side_a, side_b])
    gr.on([evaluation.change], lambda: None, None, [seen]).then(on_poll, poll, shown, show_progress="hidden")
    start.click(on_start, [run, key, *settings], [evaluation])
    stop.click(on_stop, [run, evaluation], None)
    resume.click(on_resume, [run, evaluation, key], None)
    to_compare.focus(lambda: gr.update(choices=_evaluable_runs()), None, [to_compare])
    to_compare.change(compare_table, [to_compare], [compared])
    return run
