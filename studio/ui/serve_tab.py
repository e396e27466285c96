"""API tab: a switch that serves the base model and chosen tuned models over an OpenAI-compatible
API (`python -m studio serve` in the background), so other apps, scripts and chat front-ends can
use them. Shows where it answers, which model names to ask for, and how to connect."""

from __future__ import annotations

import shlex
from pathlib import Path

import gradio as gr

from studio.chat import adapters as chat_adapters
from studio.chat import engine as chat
from studio.serve import client, keys, process

WHO = {
    "Only this computer": "127.0.0.1",
    "Other computers too (needs an API key)": "0.0.0.0",
}


def adapter_choices() -> list[tuple[str, str]]:
    """Finished runs (their final adapter) by name, with the model name API clients ask for."""
    return [(_served_as(p), p.parent.name) for p in chat.list_adapters() if p.name == "adapter"]


def _served_as(adapter: Path) -> str:
    title, label = chat_adapters.adapter_title(adapter), chat_adapters.adapter_label(adapter)
    return title if title == label else f'{title} (model "{label}")'


def status_markdown() -> str:
    state = process.status()
    key, _ = keys.find_key()
    key_line = f"API key: **{keys.mask_key(key)}** (send it as `Authorization: Bearer KEY`)" if key else ""
    if state is None:
        return "**Not serving.** Pick the models and press **Start serving**.\n\n" + key_line
    try:
        names = client.list_models(state.url, key, timeout=5)
    except client.EndpointError:
        names = [state.model, *state.adapters]  # still starting: what it was asked to serve
    argv = process.command(state.host, state.port, state.model, state.adapters)
    shell = shlex.join(["python", *argv[1:]])
    return (
        f"**Serving** at `{state.url}` — model names: "
        + ", ".join(f"`{name}`" for name in names)
        + f"\n\n{key_line}\n\nThe same from a terminal: `{shell}`"
        + "\n\nConnect with the `openai` package:\n"
        f'```python\nfrom openai import OpenAI\nclient = OpenAI(base_url="{state.url}", api_key="{"KEY" if key else "none"}")\n'
        f'client.chat.completions.create(model="{names[-1]}", messages=[{{"role": "user", "content": "Hi"}}])\n```'
    )


def reach_markdown(who: str) -> str:
    """Who will be able to connect, said as soon as it is picked (before Start serving)."""
    if WHO.get(who) != "0.0.0.0":
        return "Only programs on this computer can connect."
    if keys.find_key()[0]:
        return "Other computers on your network can connect, with the API key."
    return "Other computers need an API key: make one under **API key** below, then start."


def on_start(model, adapters, who, port):
    try:
        state = process.start(
            WHO.get(who, "127.0.0.1"), int(port or 8000), (model or "default").strip(), adapters or []
        )
    except ValueError as exc:
        gr.Warning(str(exc))
        return status_markdown(), process.log_tail()
    if not process.wait_ready(state):
        process.stop()
        gr.Warning("The server did not start: see its log below.")
    return status_markdown(), process.log_tail()


def on_stop():
    if not process.stop():
        gr.Info("No server was running.")
    return status_markdown(), process.log_tail()


def on_make_key():
    key = keys.make_key()
    gr.Info("New API key made: copy it now, it is shown only here and only once.")
    return key, status_markdown()


def on_refresh():
    return gr.update(choices=adapter_choices()), status_markdown(), process.log_tail()


def build_serve_tab(tab: gr.Tab | None = None) -> None:
    gr.Markdown(
        "Serve the models over the **OpenAI chat API**, so apps, notebooks and chat front-ends can use "
        "your tuned model. Requests that arrive together are answered together."
    )
    with gr.Row():
        model = gr.Textbox(
            "default", label="Base model", info="default, a local folder or a Hub id", elem_id="serve-model"
        )
        adapters = gr.Dropdown(
            adapter_choices(),
            multiselect=True,
            label="Tuned models to serve",
            info="finished runs by name; API clients ask for each by the model name in brackets (or its name)",
            elem_id="serve-adapters",
        )
    with gr.Row():
        who = gr.Radio(list(WHO), value="Only this computer", label="Who can connect", elem_id="serve-who")
        port = gr.Number(8000, precision=0, label="Port", minimum=1, maximum=65535, elem_id="serve-port")
    reach = gr.Markdown(reach_markdown(who.value), elem_id="serve-reach")
    with gr.Row():
        start = gr.Button("Start serving", variant="primary")
        stop = gr.Button("Stop serving", variant="stop")
        refresh = gr.Button("Refresh")
    status = gr.Markdown(status_markdown, elem_id="serve-status")
    with gr.Accordion("API key (needed when other computers connect)", open=False):
        make = gr.Button("Make a new API key")
        shown = gr.Textbox(label="New key (shown once)", interactive=False, elem_id="serve-key")
    log = gr.Textbox(
        process.log_tail, label="Server log", lines=6, max_lines=12, interactive=False, elem_id="serve-log"
    )
    start.click(on_start, [model, adapters, who, port], [status, log])
    stop.click(on_stop, None, [status, log])
    make.click(on_make_key, None, [shown, status]).then(reach_markdown, who, reach)
    who.change(reach_markdown, who, reach)
    refresh.click(on_refresh, None, [adapters, status, log])
    if tab is not None:  # finished runs appear without pressing Refresh
        tab.select(on_refresh, None, [adapters, status, log])
