"""Data tab: upload or pick a dataset, see the report, browse records as the model will be trained
on them (trained tokens highlighted), check token lengths, and save the dataset by name."""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

import gradio as gr
import pandas as pd

from studio import hubclient, models, workspace
from studio.data import check, stats, store, templates
from studio.data import hub as data_hub
from studio.ui import common

METHODS = ["auto", "sft", "dpo", "simpo", "orpo", "kto"]
TEMPLATES = ["model's own", "chatml", "llama3", "alpaca"]
FILE_TYPES = [".jsonl", ".json", ".csv", ".parquet"]
STATS_ROWS = 2000  # token statistics on the first rows keep the tab responsive on huge files
COLORS = {"trained": "#7dd3a8", "chosen": "#7dd3a8", "rejected": "#f4a3a3", "completion": "#9cc3f5"}


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


def preview_segments(report: check.Report, index: int, model: str, template: str | None, max_length: int):
    """Highlighted pieces of one record exactly as the trainer will see it."""
    record = report.records[index]
    tokenizer = _tokenizer(model)
    templates.ensure_chat_template(tokenizer, template)
    if report.kind == "sft":
        tok = templates.tokenize_sft(record, tokenizer, max_length=max_length, template=template)
        pieces = [(text, "trained" if trained else None) for text, trained in tok.segments]
        if tok.truncated:
            pieces.append((f"\n[truncated at {max_length} tokens]", None))
        return pieces
    rendered = templates.render_preference(record, tokenizer, template=template)
    if report.kind == "kto":
        label = "desirable" if record.get("label") else "undesirable"
        return [(rendered["prompt"], None), (rendered["completion"], "completion"), (f"  [{label}]", None)]
    return [
        (rendered["prompt"], None),
        (rendered["chosen"], "chosen"),
        ("\n\n── rejected ──\n", None),
        (rendered["rejected"], "rejected"),
    ]


def histogram(report: check.Report, model: str, template: str | None, max_length: int):
    token_stats = stats.token_stats(
        report.records[:STATS_ROWS], _tokenizer(model), max_length, template=template, kind=report.kind
    )
    return common.length_histogram(token_stats, max_length), common.stats_markdown(token_stats, STATS_ROWS)


def on_check(upload, choice, method, model, template_choice, max_length, progress=gr.Progress()):  # noqa: B008
    """Read + validate the chosen file; return report, problems file, record index, preview, plot, stats."""
    try:
        path = _keep_upload(upload) if upload else str(store.resolve(choice))
    except (ValueError, OSError) as exc:
        gr.Warning(str(exc))
        return (None, f"**Cannot use this file.** {exc}", gr.update(visible=False), 0, [], None, "")
    return check_path(path, method, model, template_choice, max_length, progress)


def check_path(path: str, method, model, template_choice, max_length, progress=None):
    """The report, problems file, index, preview, plot and stats of a file in the workspace."""
    progress = progress or (lambda *a, **k: None)
    try:
        progress(0.1, desc=f"reading {Path(path).name}")
        report = _load(path, method)
    except (ValueError, OSError) as exc:
        gr.Warning(str(exc))
        return (None, f"**Cannot use this file.** {exc}", gr.update(visible=False), 0, [], None, "")
    template = _template(template_choice)
    if not report.records:
        return (
            path,
            _report_markdown(report),
            _problems_file(report),
            0,
            [],
            None,
            "",
        )
    try:
        progress(0.6, desc=f"loading the tokenizer of {model}")  # the first use converts the default model
        models.resolve(model, lambda fraction, message: progress(0.6 + 0.3 * fraction, desc=message))
        pieces = preview_segments(report, 0, model, template, int(max_length))
        plot, stats_md = histogram(report, model, template, int(max_length))
    except ValueError as exc:
        gr.Warning(str(exc))
        pieces, plot, stats_md = [], None, f"**Cannot render with this model.** {exc}"
    return (path, _report_markdown(report), _problems_file(report), 0, pieces, plot, stats_md)


def on_browse(path, index, method, model, template_choice, max_length):
    if not path:
        return []
    try:
        report = _load(path, method)
        index = min(max(int(index or 0), 0), len(report.records) - 1)
        return preview_segments(report, index, model, _template(template_choice), int(max_length))
    except (ValueError, OSError, IndexError) as exc:
        gr.Warning(str(exc))
        return []


def on_save(path, name, method):
    if not path:
        gr.Warning("Check a file first, then save it.")
        return gr.update(), ""
    try:
        entry = check.save_file(path, name, None if method == "auto" else method)
    except ValueError as exc:
        gr.Warning(str(exc))
        return gr.update(), f"**Not saved.** {exc}"
    gr.Info(f"Saved {entry.rows} rows as '{entry.name}'")
    message = f"Saved **{entry.name}**: {entry.rows} {entry.kind} rows. The Train tab lists it now."
    return gr.update(choices=dataset_choices(), value=entry.name), message


# --- a dataset from the Hub ---------------------------------------------------------------------
TAKE = ["the first N rows", "a random sample of N rows"]


def on_hub_search(query: str):
    try:
        found = data_hub.search(query or "")
    except ValueError as exc:
        return gr.update(choices=[], value=None), str(exc)
    if not found:
        return gr.update(choices=[], value=None), f"No dataset matches '{query}'."
    return gr.update(choices=found, value=None), f"{len(found)} datasets: pick one, then press Look at it."


def on_hub_look(dataset_id: str):
    """Configs, splits and a streamed preview of the first rows of a Hub dataset."""
    try:
        found = data_hub.layout(dataset_id)
        config = next(iter(found.configs))
        splits = list(found.configs[config])
        split = "train" if "train" in splits else splits[0]
        rows = data_hub.preview(dataset_id, config, split)
    except ValueError as exc:
        return gr.update(), gr.update(), None, f"**Cannot read {dataset_id}.** {exc}"
    note = f"First {len(rows)} rows of {dataset_id} ({config}, {split}), read without downloading the files."
    return (
        gr.update(choices=list(found.configs), value=config),
        gr.update(choices=splits, value=split),
        pd.DataFrame(rows),
        note,
    )


def on_hub_split(dataset_id: str, config: str, split: str):
    try:
        found = data_hub.layout(dataset_id)
        splits = list(found.configs.get(config, {}))
        split = split if split in splits else (splits[0] if splits else None)
        rows = data_hub.preview(dataset_id, config, split)
    except ValueError as exc:
        return gr.update(), None, f"**Cannot read {dataset_id}.** {exc}"
    note = f"First {len(rows)} rows of {dataset_id} ({config}, {split}), read without downloading the files."
    return gr.update(choices=splits, value=split), pd.DataFrame(rows), note


def on_hub_pull(dataset_id, config, split, rows, take):
    try:
        count = int(rows) if rows else None
        progress = data_hub.start_pull(dataset_id, config, split, count, take == TAKE[1])
    except ValueError as exc:
        return f"**Cannot download.** {exc}", gr.Timer(active=False)
    return progress.line(), gr.Timer(active=True)


def on_hub_tick(dataset_id, config, split, method, model, template_choice, max_length):
    key = data_hub.job_key(dataset_id, config, split)
    progress = hubclient.job(key)
    keep = [gr.update()] * 7
    if progress is None:
        return "", gr.Timer(active=False), *keep
    if progress.state in ("starting", "downloading"):
        return f"Downloading: {progress.line()}", gr.Timer(active=True), *keep
    if progress.state == "failed":
        return f"**Stopped.** {progress.message}", gr.Timer(active=False), *keep
    path, kept = hubclient.job_result(key)
    checked = check_path(str(path), method, model, template_choice, max_length)
    return (
        f"Downloaded. {kept}. Checked below: save it by name to train on it.",
        gr.Timer(active=False),
        *checked,
    )


def _wire_browsing(path, index, prev_btn, next_btn, preview, settings) -> None:
    """Previous / next / a typed record number re-render the preview of that record."""
    index.submit(on_browse, [path, index, *settings], preview)
    prev_btn.click(lambda i: max(int(i or 0) - 1, 0), [index], [index]).then(
        on_browse, [path, index, *settings], preview
    )
    next_btn.click(lambda i: int(i or 0) + 1, [index], [index]).then(
        on_browse, [path, index, *settings], preview
    )


def build_data_tab() -> None:
    path = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Upload a dataset", file_types=FILE_TYPES, type="filepath")
            choice = gr.Dropdown(
                dataset_choices(),
                label="…or pick a saved dataset or a sample",
                value="sample:alpaca.jsonl",
                allow_custom_value=False,
            )
            with gr.Accordion("…or take one from the Hugging Face Hub", open=False, elem_id="data-hub"):
                with gr.Row():
                    hub_query = gr.Textbox(label="Search datasets", placeholder="e.g. alpaca", scale=3)
                    hub_search = gr.Button("Search", size="sm", scale=1)
                hub_found = gr.Dropdown([], label="Found", elem_id="data-hub-found")
                hub_id = gr.Textbox(
                    label="Dataset id", placeholder="e.g. tatsu-lab/alpaca", elem_id="data-hub-id"
                )
                hub_look = gr.Button("Look at it", size="sm")
                with gr.Row():
                    hub_config = gr.Dropdown([], label="Config", allow_custom_value=True)
                    hub_split = gr.Dropdown([], label="Split", allow_custom_value=True)
                with gr.Row():
                    hub_rows = gr.Number(1000, precision=0, minimum=1, label="Rows to keep (N)")
                    hub_take = gr.Radio(
                        TAKE, value=TAKE[0], label="Which rows", info="large datasets: keep a part"
                    )
                hub_pull = gr.Button("Download and check", size="sm", elem_id="data-hub-pull")
                hub_note = gr.Markdown(elem_id="data-hub-note")
                hub_timer = gr.Timer(1.0, active=False)
            method = gr.Dropdown(
                METHODS,
                value="auto",
                label="Method",
                info="auto: whatever the data fits; a preference method needs pairs",
            )
            model = gr.Dropdown(
                models.local_specs(),
                value="default",
                allow_custom_value=True,
                label="Model",
                info="'default' (embedded SmolLM2-135M-Instruct) and the models on this machine; or type a local folder or any Hub id (search in the Models tab)",
                elem_id="data-model",
            )
            find_model = gr.Button("Search the Hub for a model…", size="sm")
            template = gr.Dropdown(TEMPLATES, value=TEMPLATES[0], label="Chat template")
            max_length = gr.Number(1024, label="Max length (tokens)", precision=0, minimum=16)
            check_btn = gr.Button("Check dataset", variant="primary")
        with gr.Column(scale=2):
            report_md = gr.Markdown("Upload a file or pick a sample, then press **Check dataset**.")
            problems = gr.File(label="All problems (download)", interactive=False, visible=False)
            with gr.Row():
                prev_btn = gr.Button("◀ Previous", size="sm", scale=1)
                index = gr.Number(0, precision=0, minimum=0, label="Record (0 = first)", scale=2)
                next_btn = gr.Button("Next ▶", size="sm", scale=1)
            preview = gr.HighlightedText(
                elem_id="data-preview",
                label="As trained (highlighted tokens carry the loss)",
                color_map=COLORS,
                show_legend=True,
                combine_adjacent=True,
            )
            hub_preview = gr.Dataframe(
                label="Hub dataset: first rows", interactive=False, elem_id="data-hub-preview"
            )
            plot = gr.Plot(label="Token lengths")
            stats_md = gr.Markdown()
            with gr.Row():
                name = gr.Textbox(label="Save as", placeholder="my-dataset", scale=3)
                save_btn = gr.Button("Save dataset", scale=1)
            saved_md = gr.Markdown()

    settings = [method, model, template, max_length]
    outputs = [path, report_md, problems, index, preview, plot, stats_md]
    check_btn.click(on_check, [upload, choice, *settings], outputs)
    upload.upload(on_check, [upload, choice, *settings], outputs)
    _wire_browsing(path, index, prev_btn, next_btn, preview, settings)
    save_btn.click(on_save, [path, name, method], [choice, saved_md])
    model.focus(lambda: gr.update(choices=models.local_specs()), None, model)
    find_model.click(None, js=common.OPEN_MODELS_TAB)
    gr.on([hub_search.click, hub_query.submit], on_hub_search, hub_query, [hub_found, hub_note])
    hub_found.input(lambda found: found, hub_found, hub_id)
    where = [hub_id, hub_config, hub_split]
    gr.on(
        [hub_look.click, hub_id.submit], on_hub_look, hub_id, [hub_config, hub_split, hub_preview, hub_note]
    )
    gr.on([hub_config.input, hub_split.input], on_hub_split, where, [hub_split, hub_preview, hub_note])
    hub_pull.click(on_hub_pull, [*where, hub_rows, hub_take], [hub_note, hub_timer])
    hub_timer.tick(on_hub_tick, [*where, *settings], [hub_note, hub_timer, *outputs])
