"""Votes tab: browse and delete chat votes, see their quality report, export them as DPO or KTO
JSONL, or save them as a dataset that the Train tab lists for a preference run."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import gradio as gr
import pandas as pd

from studio import workspace
from studio.chat.adapters import adapter_title
from studio.prefs import agreement, records, report, store

COLUMNS = ["id", "time", "preferred", "model A", "model B", "shown first", "prompt", "edited"]
PREFERRED = {"A": "A", "B": "B", "tie": "tie", "both_bad": "both bad"}


def _side(model: str, adapter: str) -> str:
    """'SmolLM2-135M-Instruct + my-run': the model folder's name and the adapter's run name."""
    name = Path(model).name if model else "(unknown model)"
    return f"{name} + {adapter_title(Path(adapter))}" if adapter else name


def _local_time(stamp: str) -> str:
    """An ISO time as this machine's local time, to the minute."""
    try:
        return datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return stamp


def votes_frame(limit: int = 200) -> pd.DataFrame:
    rows = []
    try:
        votes = store.list_votes(limit=limit)
    except ValueError:  # an unreadable studio.db: the report above says what to do
        votes = []
    for vote in votes:
        prompt = next((m["content"] for m in reversed(vote.messages) if m["role"] == "user"), "")
        rows.append(
            [
                vote.id,
                _local_time(vote.created_at),
                PREFERRED.get(vote.verdict, vote.verdict),
                _side(vote.model_a, vote.adapter_a),
                _side(vote.model_b, vote.adapter_b),
                vote.shown_first,
                prompt[:120],
                "yes" if vote.edited else "",
            ]
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def report_markdown() -> str:
    try:
        r = report.quality_report()
    except ValueError as exc:
        return f"**The vote database cannot be read.** {exc}"
    if not r.total:
        return "No votes yet: vote in the Chat tab."
    pct = lambda x: "n/a" if x is None else f"{x:.0%}"  # noqa: E731
    lines = [
        f"**{r.total} votes** → **{r.usable_pairs} usable pairs** "
        f"({r.ties_left_out} ties and {r.both_bad_left_out} 'both bad' left out, "
        f"{r.identical_pairs} identical pairs left out, {r.edited} edited answers)",
        f"- Position bias: the answer shown first (left) won {r.shown_first_wins} of {r.decisive} "
        f"decisive votes ({pct(r.position_bias)})",
        f"- Length bias: the longer answer won {r.longer_wins} of {r.length_votes} ({pct(r.length_bias)})",
    ]
    lines += [f"- ⚠ {note}" for note in r.notes()]
    return "\n".join(lines)


def vote_choices(frame: pd.DataFrame) -> list[tuple[str, int]]:
    """('#3 · What is the capital…', 3) for each vote in the table."""
    return [(f"#{row['id']} · {str(row['prompt'])[:50]}", int(row["id"])) for _, row in frame.iterrows()]


def on_show():
    """The tab is shown: the votes cast since, their report, and nothing picked to delete."""
    frame = votes_frame()
    return frame, report_markdown(), gr.update(choices=vote_choices(frame), value=None)


def annotators_markdown() -> str:
    """Per-annotator counts and biases, and agreement on the pairs several people rated."""
    try:
        votes = store.all_votes()
    except ValueError:
        return ""
    groups = agreement.by_annotator(votes)
    if not votes or list(groups) == [""]:
        return ""
    pct = lambda x: "n/a" if x is None else f"{x:.0%}"  # noqa: E731
    lines = ["**Annotators**", "", "| who | votes | shown-first wins | longer wins |", "|---|---|---|---|"]
    for name, own in groups.items():
        r = report.quality_report(own)
        lines.append(
            f"| {name or '(no login)'} | {r.total} | {pct(r.position_bias)} | {pct(r.length_bias)} |"
        )
    lines += ["", *(f"- {line}" for line in agreement.summary_lines(votes))]
    return "\n".join(lines)


def on_export_team(kind: str, annotator: str):
    """Export resolved by majority (ties dropped), or one annotator's votes."""
    votes = store.all_votes()
    who = (annotator or "").strip()
    if who:
        votes = [v for v in votes if v.annotator == who]
        note, stem = f"votes of {who}", f"votes-{who}"
    else:
        found = agreement.majority(votes)
        votes = found.votes
        note = f"majority of each pair ({found.resolved} resolved, {found.dropped_ties} tied pairs dropped)"
        stem = "votes-majority"
    rows = (records.dpo_records if kind == "DPO" else records.kto_records)(votes)
    if not rows:
        return None, f"**Nothing exported** from the {note}."
    path = workspace.exports_dir() / f"{stem}-{kind.lower()}.jsonl"
    records.write_jsonl(path, rows)
    return str(path), f"Exported **{len(rows)} {kind} records**, {note}, to `{path}`"


def on_delete(vote_id):
    if vote_id is None:
        gr.Warning("Pick the vote to delete first.")
        return on_show()
    try:
        store.delete_vote(int(vote_id))
    except (ValueError, TypeError) as exc:
        gr.Warning(str(exc))
    return on_show()


def on_export(kind: str):
    path = workspace.exports_dir() / ("votes-dpo.jsonl" if kind == "DPO" else "votes-kto.jsonl")
    rows = records.export_dpo(path) if kind == "DPO" else records.export_kto(path)
    if not rows:
        return None, (
            "**Nothing exported.** No usable votes yet: pick the better answer, or write a better one "
            "(ties and 'both bad' without an edit make no pairs)."
        )
    return str(path), f"Exported **{len(rows)} {kind} records** to `{path}`"


def on_save(name: str, kind: str):
    try:
        entry = records.save_as_dataset((name or "").strip(), "preference" if kind == "DPO" else "kto")
    except ValueError as exc:
        return f"**Not saved.** {exc}"
    methods = "DPO, SimPO or ORPO" if entry.kind == "preference" else "KTO"
    return (
        f"Saved **{entry.name}** ({entry.rows} {entry.kind} rows). In the Train tab "
        f"pick it as the dataset and a {methods} recipe."
    )


def build_votes_tab(tab: gr.Tab | None = None) -> None:
    """`tab`: the Votes tab, so that showing it lists the votes cast meanwhile."""
    report = gr.Markdown(report_markdown, elem_id="votes-report")  # callables: fresh on page load
    table = gr.Dataframe(
        votes_frame,
        label="Votes (newest first)",
        interactive=False,
        wrap=True,
        column_widths=["5%", "13%", "10%", "22%", "22%", "8%", "14%", "6%"],  # one per COLUMNS
        elem_id="votes-table",
    )
    with gr.Row():
        vote_id = gr.Dropdown(
            vote_choices(votes_frame()), value=None, label="Vote to delete", elem_id="votes-delete-id"
        )
        delete = gr.Button("Delete vote", variant="stop")
    with gr.Row():
        kind = gr.Radio(
            ["DPO", "KTO"],
            value="DPO",
            label="Format",
            info="DPO pairs also train SimPO and ORPO; KTO takes thumbs-up/down examples",
        )
        export = gr.Button("Export JSONL")
        download = gr.File(label="Download", interactive=False)
    exported = gr.Markdown(elem_id="votes-exported")
    with gr.Row():
        name = gr.Textbox(label="Save as dataset", placeholder="my-votes", elem_id="votes-name")
        save = gr.Button("Save as dataset", variant="primary")
    saved = gr.Markdown(elem_id="votes-saved")
    team = gr.Markdown(annotators_markdown, elem_id="votes-annotators")
    with gr.Row():
        who = gr.Textbox(
            label="Export one annotator",
            info="empty: resolve each rated pair by majority",
            elem_id="votes-annotator",
        )
        team_export = gr.Button("Export team votes")
        team_file = gr.File(label="Download", interactive=False)
    team_done = gr.Markdown(elem_id="votes-team-exported")
    if tab is not None:
        tab.select(on_show, None, [table, report, vote_id], show_progress="hidden")
        tab.select(annotators_markdown, None, [team], show_progress="hidden")
    delete.click(on_delete, [vote_id], [table, report, vote_id])
    team_export.click(on_export_team, [kind, who], [team_file, team_done])
    export.click(on_export, [kind], [download, exported])
    save.click(on_save, [name, kind], [saved])
