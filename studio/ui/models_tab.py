"""Models tab: search the Hugging Face Hub, see a model's size and fit before downloading, download
it with a progress bar, and manage the models on this machine (size on disk, last used, delete).

Handlers convert widget values to calls of studio/hubmodels.py and its results or one-line errors
back into tables and Markdown. A download runs in a background thread in the core; a `gr.Timer`
polls its progress, so no handler stays open for the length of a download.
"""

from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from studio import hubclient, hubmodels, models

SORTS = [("most downloaded", "downloads"), ("most liked", "likes"), ("recently updated", "last_modified")]
RESULT_COLUMNS = ["Model", "Downloads", "Likes", "Updated", "Gated", "On this machine"]
LOCAL_COLUMNS = ["Model", "State", "Size on disk", "Last used"]


def results_frame(found: list[hubmodels.Found]) -> pd.DataFrame:
    rows = [
        [
            f.repo_id,
            f.downloads,
            f.likes,
            f.last_modified,
            "yes" if f.gated else "",
            "yes" if f.downloaded else "",
        ]
        for f in found
    ]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def local_frame() -> pd.DataFrame:
    rows = [
        [
            m.spec,
            m.state,
            hubclient.human_bytes(m.size_bytes) if m.size_bytes else "",
            (m.last_used or "")[:16],
        ]
        for m in hubmodels.local_models()
    ]
    return pd.DataFrame(rows, columns=LOCAL_COLUMNS)


def deletable() -> list[str]:
    return [m.spec for m in hubmodels.local_models() if m.spec != models.DEFAULT_SPEC]


def on_search(query: str, sort: str):
    try:
        found = hubmodels.search(query or "", sort=sort or "downloads")
    except ValueError as exc:
        return results_frame([]), str(exc)
    if not found:
        return results_frame([]), f"No text-generation model matches '{query}'."
    return results_frame(
        found
    ), f"{len(found)} models from {hubclient.endpoint()}: pick one to see its details."


def on_select(evt: gr.SelectData) -> str:
    row = getattr(evt, "row_value", None)
    return str(row[0]) if row else str(evt.value)


def details_markdown(look: hubmodels.Look) -> str:
    lines = look.lines()
    out = [f"**{html.escape(lines[0])}**", ""]
    for line in lines[1:]:
        method, _, verdict = line.partition(": ")
        if method in look.fit:  # the verdict word first and bold: "LoRA: **fits** (~1.2 GB of ...)"
            word, _, rest = verdict.partition(" (")
            line = f"{method}: **{word}**" + (f" ({rest}" if rest else "")
            out.append(f"- {line}")
        else:
            out.append(f"- {html.escape(line)}")
    files = "".join(f"<li>{html.escape(n)} — {hubclient.human_bytes(s)}</li>" for n, s in look.files.items())
    out.append(f"\n<details><summary>Files that would be downloaded</summary><ul>{files}</ul></details>")
    return "\n".join(out)


def on_look(repo_id: str) -> str:
    if not (repo_id or "").strip():
        return "Type a model id like `org/name`, or pick a search result."
    try:
        return details_markdown(hubmodels.look(repo_id))
    except ValueError as exc:
        return f"**Cannot show {html.escape(repo_id)}.** {html.escape(str(exc))}"


def progress_html(progress: hubclient.Progress | None) -> str:
    if progress is None:
        return ""
    color = {"failed": "#c0392b", "done": "#2f7a55"}.get(progress.state, "#3b82f6")
    label = {"done": "Downloaded", "failed": "Stopped", "starting": "Starting"}.get(
        progress.state, "Downloading"
    )
    return (
        f'<div class="studio-progress" data-state="{progress.state}">'
        f"<div><b>{label} {html.escape(progress.repo_id)}</b> — {html.escape(progress.line())}</div>"
        f'<div style="background:#e5e7eb;border-radius:4px;height:12px;margin-top:4px">'
        f'<div style="background:{color};width:{progress.fraction * 100:.1f}%;height:12px;border-radius:4px">'
        "</div></div></div>"
    )


def on_pull(repo_id: str):
    try:
        progress = hubmodels.start_pull(repo_id)
    except ValueError as exc:
        return f"**Cannot download.** {html.escape(str(exc))}", gr.Timer(active=False)
    return progress_html(progress), gr.Timer(active=True)


def on_tick(repo_id: str):
    progress = hubmodels.progress_of(repo_id)
    running = progress is not None and progress.state in ("starting", "downloading")
    if running:
        return progress_html(progress), gr.Timer(active=True), gr.update(), gr.update()
    if progress is not None and progress.state == "done":
        gr.Info(f"{progress.repo_id} is ready: pick it as the model in Data, Train or Chat.")
    return progress_html(progress), gr.Timer(active=False), local_frame(), gr.update(choices=deletable())


def on_ask_delete(spec: str | None):
    if not spec:
        return gr.update(visible=False), "Pick a downloaded model to delete."
    size = next((m.size_bytes for m in hubmodels.local_models() if m.spec == spec), 0)
    return gr.update(
        visible=True
    ), f"Delete **{spec}** and free {hubclient.human_bytes(size)}? This cannot be undone."


def on_delete(spec: str | None):
    try:
        freed = hubmodels.remove(spec or "")
        message = f"Deleted {spec}: {hubclient.human_bytes(freed)} freed."
    except ValueError as exc:
        message = f"**Not deleted.** {exc}"
    return gr.update(visible=False), message, local_frame(), gr.update(choices=deletable(), value=None)


def build_models_tab() -> None:
    gr.Markdown(hubclient.status_line, elem_id="models-status")  # a callable: checked on each page load
    with gr.Row():
        query = gr.Textbox(
            label="Search the Hub",
            placeholder="e.g. qwen2.5 instruct, llama, smollm",
            scale=3,
            elem_id="models-query",
        )
        sort = gr.Dropdown(SORTS, value="downloads", label="Sort", scale=1)
        search_btn = gr.Button("Search", variant="primary", scale=1)
    found_md = gr.Markdown(elem_id="models-found")
    results = gr.Dataframe(results_frame([]), interactive=False, elem_id="models-results", max_height=320)
    with gr.Row():
        repo = gr.Textbox(
            label="Model id",
            placeholder="org/name: pick a result above or type one",
            info="Details come before any download: size, parameters, license, gated, and whether it fits here",
            scale=3,
            elem_id="models-repo",
        )
        look_btn = gr.Button("Show details", scale=1)
        pull_btn = gr.Button("Download", variant="primary", scale=1, elem_id="models-download")
    details = gr.Markdown(elem_id="models-details")
    progress = gr.HTML(elem_id="models-progress")
    timer = gr.Timer(1.0, active=False)
    gr.Markdown("### Models on this machine")
    local = gr.Dataframe(local_frame, interactive=False, elem_id="models-local")  # re-read on page load
    with gr.Row():
        to_delete = gr.Dropdown(deletable(), value=None, label="Delete a downloaded model", scale=3)
        delete_btn = gr.Button("Delete…", scale=1)
    deleted = gr.Markdown()
    with gr.Row(visible=False) as confirm_row:
        confirm_md = gr.Markdown()
        yes_btn = gr.Button("Yes, delete it", variant="stop", elem_id="models-confirm-delete")
        no_btn = gr.Button("Cancel")

    gr.on([search_btn.click, query.submit], on_search, [query, sort], [results, found_md])
    results.select(on_select, None, repo).then(on_look, repo, details)
    gr.on([look_btn.click, repo.submit], on_look, repo, details)
    pull_btn.click(on_pull, repo, [progress, timer])
    timer.tick(on_tick, repo, [progress, timer, local, to_delete])
    delete_btn.click(on_ask_delete, to_delete, [confirm_row, confirm_md])
    no_btn.click(lambda: gr.update(visible=False), None, confirm_row)
    yes_btn.click(on_delete, to_delete, [confirm_row, deleted, local, to_delete])
