"""The Data tab's "…or take one from the Hugging Face Hub" panel: search datasets, look at a
dataset's configs, splits and first rows, download N rows and hand the file to the tab's check.

Widgets and their handlers only; the Hub calls live in studio/data/hub.py. Knows nothing of how
the tab shows a checked file: `wire_hub_panel` takes the tab's check function and outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from studio import hubclient
from studio.data import hub as data_hub

TAKE = ["the first N rows", "a random sample of N rows"]


@dataclass
class HubPanel:
    query: gr.Textbox
    search: gr.Button
    found: gr.Dropdown
    dataset_id: gr.Textbox
    look: gr.Button
    config: gr.Dropdown
    split: gr.Dropdown
    rows: gr.Number
    take: gr.Radio
    pull: gr.Button
    note: gr.Markdown
    timer: gr.Timer


def build_hub_panel() -> HubPanel:
    with gr.Accordion("…or take one from the Hugging Face Hub", open=False, elem_id="data-hub"):
        with gr.Row():
            query = gr.Textbox(label="Search datasets", placeholder="e.g. alpaca", scale=3)
            search = gr.Button("Search", size="sm", scale=1)
        found = gr.Dropdown([], label="Found", elem_id="data-hub-found")
        dataset_id = gr.Textbox(
            label="Dataset id", placeholder="e.g. tatsu-lab/alpaca", elem_id="data-hub-id"
        )
        look = gr.Button("Look at it", size="sm")
        with gr.Row():
            config = gr.Dropdown([], label="Config", allow_custom_value=True)
            split = gr.Dropdown([], label="Split", allow_custom_value=True)
        with gr.Row():
            rows = gr.Number(1000, precision=0, minimum=1, label="Rows to keep (N)")
            take = gr.Radio(TAKE, value=TAKE[0], label="Which rows", info="large datasets: keep a part")
        pull = gr.Button("Download and check", size="sm", elem_id="data-hub-pull")
        note = gr.Markdown(elem_id="data-hub-note")
        timer = gr.Timer(1.0, active=False)
    return HubPanel(query, search, found, dataset_id, look, config, split, rows, take, pull, note, timer)


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
        gr.update(value=pd.DataFrame(rows), visible=True),
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
    return gr.update(choices=splits, value=split), gr.update(value=pd.DataFrame(rows), visible=True), note


def on_hub_pull(dataset_id, config, split, rows, take):
    try:
        count = int(rows) if rows else None
        progress = data_hub.start_pull(dataset_id, config, split, count, take == TAKE[1])
    except ValueError as exc:
        return f"**Cannot download.** {exc}", gr.Timer(active=False)
    return progress.line(), gr.Timer(active=True)


def _on_tick(check: Callable, n_outputs: int):
    def on_hub_tick(dataset_id, config, split, *settings):
        key = data_hub.job_key(dataset_id, config, split)
        progress = hubclient.job(key)
        keep = [gr.update()] * n_outputs
        if progress is None:
            return "", gr.Timer(active=False), *keep
        if progress.state in ("starting", "downloading"):
            return f"Downloading: {progress.line()}", gr.Timer(active=True), *keep
        if progress.state == "failed":
            return f"**Stopped.** {progress.message}", gr.Timer(active=False), *keep
        path, kept = hubclient.job_result(key)
        checked = check(str(path), "downloaded from the Hub", *settings)
        return (
            f"Downloaded. {kept}. Checked below: save it by name to train on it.",
            gr.Timer(active=False),
            *checked,
        )

    return on_hub_tick


def wire_hub_panel(
    panel: HubPanel, hub_preview: gr.Dataframe, settings: list, check: Callable, outputs: list
):
    """Search / look / pull events; a finished download goes through `check(path, source, *settings)`."""
    gr.on([panel.search.click, panel.query.submit], on_hub_search, panel.query, [panel.found, panel.note])
    panel.found.input(lambda found: found, panel.found, panel.dataset_id)
    where = [panel.dataset_id, panel.config, panel.split]
    gr.on(
        [panel.look.click, panel.dataset_id.submit],
        on_hub_look,
        panel.dataset_id,
        [panel.config, panel.split, hub_preview, panel.note],
    )
    gr.on(
        [panel.config.input, panel.split.input], on_hub_split, where, [panel.split, hub_preview, panel.note]
    )
    panel.pull.click(on_hub_pull, [*where, panel.rows, panel.take], [panel.note, panel.timer])
    panel.timer.tick(_on_tick(check, len(outputs)), [*where, *settings], [panel.note, panel.timer, *outputs])
