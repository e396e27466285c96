"""Data tab: upload or pick a dataset, see the report (every problem of every row), browse records
as a chat or as the exact tokens the model is trained on, check token lengths, and save the
dataset by name.

Widgets and handlers only: the check is studio/data/check.py, a record's view studio/data/preview.py,
the HTML it is drawn as studio/ui/data_view.py, the Hub panel studio/ui/data_hub_panel.py.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import gradio as gr

from studio import models, workspace
from studio.data import check, preview, stats, store, templates
from studio.ui import common, data_view
from studio.ui.data_hub_panel import build_hub_panel, wire_hub_panel

METHODS = ["auto", "sft", "dpo", "simpo", "orpo", "kto"]
TEMPLATES = ["model's own", "chatml", "llama3", "alpaca"]
FILE_TYPES = [".jsonl", ".json", ".csv", ".parquet"]
STATS_ROWS = 2000  # token statistics on the first rows keep the tab responsive on huge files


@lru_cache(maxsize=4)
def _tokenizer(spec: str):
    return models.load_tokenizer(spec)


@lru_cache(maxsize=8)
def _report(path: str, mtime: float, method: str | None) -> check.Report:
    return check.load(path, method=method)


def _load(path: str, method: str) -> check.Report:
    return _report(path, Path(path).stat().st_mtime, None if method == "auto" else method)


def _template(choice: str) -> str | None:
    return None if choice == TEMPLATES[0] else choice


def dataset_choices() -> list[str]:
    """Saved datasets first (newest first), then the bundled samples."""
    return [e.name for e in store.list_saved()] + store.list_samples()


def _keep_upload(upload: str) -> str:
    """Copy an upload into the workspace so it outlives Gradio's temp folder."""
    source = Path(upload)
    if source.suffix.lower() not in FILE_TYPES:
        raise ValueError(f"{source.name}: unsupported file type — upload {', '.join(FILE_TYPES)}")
    target = workspace.uploads_dir() / source.name
    shutil.copyfile(source, target)
    return str(target)


def _report_markdown(report: check.Report) -> str:
    lines = [report.summary()]
    shown = report.problems[:10]
    if shown:
        lines.append(f"\n**Problems** (first {len(shown)} of {len(report.problems)}):")
        lines += [f"- {common.problem_line(p)}" for p in shown]
    return "\n".join(lines)


def _problems_file(report: check.Report):
    """The full problem list as a downloadable file (hidden when there is none)."""
    if not report.problems:
        return gr.update(value=None, visible=False)
    out = workspace.exports_dir() / f"{Path(report.path).stem}-problems.txt"
    workspace.atomic_write_text(out, "\n".join(common.problem_line(p) for p in report.problems) + "\n")
    return gr.update(value=str(out), visible=True)


def record_view(report: check.Report, index: int, model: str, template: str | None, max_length: int):
    """One record as the trainer will see it (a chat and its exact pieces)."""
    tokenizer = _tokenizer(model)
    templates.ensure_chat_template(tokenizer, template)
    return preview.record_view(report.records[index], report.kind, tokenizer, template, max_length)


def _view_outputs(view) -> tuple:
    """chat, system-prompt note, legend, exact tokens: the preview outputs of one record."""
    if view is None:
        return "", "", "", []
    return (
        data_view.chat_html(view),
        data_view.system_note(view),
        data_view.legend_html(view.kinds),
        view.pieces,
    )


def histogram(report: check.Report, model: str, template: str | None, max_length: int):
    token_stats = stats.token_stats(
        report.records[:STATS_ROWS], _tokenizer(model), max_length, template=template, kind=report.kind
    )
    return data_view.length_histogram_svg(token_stats, max_length), common.stats_markdown(
        token_stats, STATS_ROWS
    )


def _source(choice: str) -> str:
    if choice.startswith(store.SAMPLE_PREFIX):
        return "a sample that comes with Tune Studio"
    return "a saved dataset"


def _failed(message: str, active: str = "") -> tuple:
    """Check outputs for a file that cannot be used: the reason next to the button, nothing stale."""
    return (None, active, f"**Cannot use this file.** {message}", gr.update(visible=False), 0,
            "", "", "", [], "", "", common.notice(f"Cannot use this file: {message}", "error"))  # fmt: skip


def on_check(upload, choice, method, model, template_choice, max_length, progress=gr.Progress()):  # noqa: B008
    """Read + validate the chosen file (an upload wins over the picker): the check outputs."""
    try:
        if upload:
            path, source = _keep_upload(upload), "your upload"
        elif choice:
            path, source = str(store.resolve(choice)), _source(choice)
        else:
            raise ValueError("upload a file or pick a dataset first")
    except (ValueError, OSError) as exc:
        return _failed(str(exc))
    return check_path(path, source, method, model, template_choice, max_length, progress)


def check_path(path: str, source: str, method, model, template_choice, max_length, progress=None):
    """The check outputs of a file in the workspace, in the order of `outputs` in build_data_tab."""
    progress = progress or (lambda *a, **k: None)
    started = time.monotonic()
    name = Path(path).name
    try:
        progress(0.05, desc=f"reading {name}")
        report = _load(path, method)
    except (ValueError, OSError) as exc:
        return _failed(str(exc), data_view.active_line(name, source))
    active = data_view.active_line(name, source, report.rows)
    template = _template(template_choice)
    view, plot, stats_md, note = None, "", "", ""
    if report.records:
        try:
            progress(0.4, desc=_tokenizer_step(model))
            models.tokenizer_path(
                model, lambda fraction, message: progress(0.4 + 0.4 * fraction, desc=message)
            )
            progress(0.85, desc="rendering with the chat template and counting tokens")
            view = record_view(report, 0, model, template, int(max_length))
            plot, stats_md = histogram(report, model, template, int(max_length))
        except ValueError as exc:
            stats_md = f"**Cannot render with this model.** {exc}"
            note = common.notice(f"Checked, but cannot render with this model: {exc}", "warning")
    note = note or common.notice(f"Checked {name} in {time.monotonic() - started:.1f} s.")
    return (path, active, _report_markdown(report), _problems_file(report), 0,
            *_view_outputs(view), plot, stats_md, note)  # fmt: skip


def _tokenizer_step(model: str) -> str:
    if (model or models.DEFAULT_SPEC) == models.DEFAULT_SPEC and not models.default_tokenizer_ready():
        return "first use: reading the embedded model's tokenizer (about 10 s, once)"
    return f"loading the tokenizer of {model}"


def on_browse(path, index, method, model, template_choice, max_length):
    """The preview outputs of record `index`; a problem goes to the note beside the buttons."""
    if not path:
        return *_view_outputs(None), ""
    try:
        report = _load(path, method)
        index = min(max(int(index or 0), 0), len(report.records) - 1)
        view = record_view(report, index, model, _template(template_choice), int(max_length))
    except (ValueError, OSError, IndexError) as exc:
        return *_view_outputs(None), common.notice(str(exc), "error")
    return *_view_outputs(view), ""


def on_save(path, name, method):
    """Save the checked file by name: the picker then shows it and the upload is cleared."""
    if not path:
        return (
            gr.update(),
            gr.update(),
            gr.update(),
            common.notice("Check a file first, then save it.", "warning"),
        )
    try:
        entry = check.save_file(path, name, None if method == "auto" else method)
    except ValueError as exc:
        return gr.update(), gr.update(), gr.update(), common.notice(f"Not saved: {exc}", "error")
    message = f"Saved **{entry.name}**: {entry.rows} {entry.kind} rows. The Train tab lists it now."
    return (
        gr.update(choices=dataset_choices(), value=entry.name),
        None,
        data_view.active_line(entry.name, "a saved dataset", entry.rows),
        common.notice(message),
    )


def _wire_browsing(path, index, prev_btn, next_btn, outputs, settings) -> None:
    """Previous / next / a typed record number re-render the preview of that record."""
    index.submit(on_browse, [path, index, *settings], outputs)
    prev_btn.click(lambda i: max(int(i or 0) - 1, 0), [index], [index]).then(
        on_browse, [path, index, *settings], outputs
    )
    next_btn.click(lambda i: int(i or 0) + 1, [index], [index]).then(
        on_browse, [path, index, *settings], outputs
    )


def _source_column():
    """The left column: where the data comes from and how it is rendered."""
    upload = gr.File(label="Upload a dataset", file_types=FILE_TYPES, type="filepath")
    choice = gr.Dropdown(
        dataset_choices(),
        label="…or pick a saved dataset or a sample",
        value="sample:alpaca.jsonl",
        allow_custom_value=False,
        elem_id="data-choice",
    )
    panel = build_hub_panel()
    method = gr.Dropdown(
        METHODS,
        value="auto",
        label="Method",
        info="auto: whatever the data fits; a preference method needs pairs",
    )
    model = common.model_picker("Model", "data-model")
    common.find_model_button()
    template = gr.Dropdown(TEMPLATES, value=TEMPLATES[0], label="Chat template")
    max_length = gr.Number(1024, label="Max length (tokens)", precision=0, minimum=16)
    check_btn = gr.Button("Check dataset", variant="primary")
    check_note = gr.Markdown(elem_id="data-check-note")
    return upload, choice, panel, [method, model, template, max_length], check_btn, check_note


@dataclass
class ViewColumn:
    active: gr.Markdown
    report: gr.Markdown
    problems: gr.File
    index: gr.Number
    prev: gr.Button
    next: gr.Button
    exact: gr.Checkbox
    browse_note: gr.Markdown
    system_note: gr.Markdown
    legend: gr.HTML
    chat: gr.HTML
    tokens: gr.HighlightedText
    hub_preview: gr.Dataframe
    plot: gr.HTML
    stats: gr.Markdown
    name: gr.Textbox
    save: gr.Button
    saved: gr.Markdown


def _view_column() -> ViewColumn:
    """The right column: the active dataset, its report, one record, the token lengths, saving."""
    active = gr.Markdown("### Active dataset: none yet", elem_id="data-active")
    report_md = gr.Markdown(
        "Upload a file or pick a sample, then press **Check dataset**.", elem_id="data-report"
    )
    problems = gr.File(label="All problems (download)", interactive=False, visible=False)
    with gr.Row():
        prev_btn = gr.Button("◀ Previous", size="sm", scale=1)
        index = gr.Number(0, precision=0, minimum=0, label="Record (0 = first)", scale=2)
        next_btn = gr.Button("Next ▶", size="sm", scale=1)
        exact = gr.Checkbox(False, label="Show exact tokens", scale=2, elem_id="data-exact")
    browse_note = gr.Markdown()
    system_note = gr.Markdown(elem_id="data-system-note")
    legend = gr.HTML(elem_id="data-legend")
    chat = gr.HTML(elem_id="data-chat", label="As a chat")
    tokens = gr.HighlightedText(
        elem_id="data-preview",
        label="Exact text the model reads (coloured tokens carry the loss)",
        color_map=data_view.COLORS,
        show_legend=False,
        combine_adjacent=True,
        visible=False,
    )
    hub_preview = gr.Dataframe(
        label="Hub dataset: first rows", interactive=False, elem_id="data-hub-preview", visible=False
    )
    plot = gr.HTML(elem_id="data-lengths", label="Token lengths")
    stats_md = gr.Markdown()
    with gr.Row():
        name = gr.Textbox(label="Save as", placeholder="my-dataset", scale=3)
        save_btn = gr.Button("Save dataset", scale=1)
    saved_md = gr.Markdown(elem_id="data-save-note")
    return ViewColumn(active, report_md, problems, index, prev_btn, next_btn, exact, browse_note, system_note,
                      legend, chat, tokens, hub_preview, plot, stats_md, name, save_btn, saved_md)  # fmt: skip


def build_data_tab() -> None:
    path = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            upload, choice, panel, settings, check_btn, check_note = _source_column()
        with gr.Column(scale=2):
            v = _view_column()
    shown = [v.chat, v.system_note, v.legend, v.tokens]
    outputs = [path, v.active, v.report, v.problems, v.index, *shown, v.plot, v.stats, check_note]
    check_btn.click(on_check, [upload, choice, *settings], outputs)
    # a new source empties the other one (and the last save's message): one dataset is active
    upload.upload(lambda: (None, ""), None, [choice, v.saved]).then(
        on_check, [upload, choice, *settings], outputs
    )
    choice.input(lambda: (None, ""), None, [upload, v.saved]).then(
        on_check, [upload, choice, *settings], outputs
    )
    _wire_browsing(path, v.index, v.prev, v.next, [*shown, v.browse_note], settings)
    v.exact.change(
        lambda exact: (gr.update(visible=not exact), gr.update(visible=exact)), v.exact, [v.chat, v.tokens]
    )
    v.save.click(on_save, [path, v.name, settings[0]], [choice, upload, v.active, v.saved])
    wire_hub_panel(panel, v.hub_preview, settings, check_path, outputs)
