"""Assemble the tabs into one Gradio app and serve it."""

from __future__ import annotations

import gradio as gr

from studio import workspace
from studio.train import runs
from studio.ui import common
from studio.ui.chat_tab import build_chat_tab, on_load, open_run
from studio.ui.data_tab import build_data_tab
from studio.ui.data_view import CSS as DATA_CSS
from studio.ui.evaluate_tab import build_evaluate_tab, select_run
from studio.ui.hub_tab import build_hub_tab
from studio.ui.models_tab import build_models_tab
from studio.ui.rate_tab import JS as RATE_KEYS
from studio.ui.rate_tab import build_rate_tab
from studio.ui.runs_tab import build_runs_tab
from studio.ui.serve_tab import build_serve_tab
from studio.ui.train_tab import CSS as TRAIN_CSS
from studio.ui.train_tab import build_train_tab
from studio.ui.votes_tab import build_votes_tab

MAX_UPLOAD = "200mb"

CSS = (
    """
footer { display: none !important; }
/* a plot's legend sits under its axes: let the block grow to show it instead of clipping it */
.studio-plot { height: auto !important; }
.studio-plot .vega-embed { height: 250px !important; }
"""
    + DATA_CSS
    + common.NOTICE_CSS
    + TRAIN_CSS
)
JS = f"() => {{ ({RATE_KEYS})(); ({common.NOTICE_JS})(); }}"


def build_app() -> gr.Blocks:
    with gr.Blocks(title="Tune Studio") as demo:
        gr.Markdown("# Tune Studio\nBring data, see exactly what is trained, tune, compare, share.")
        with gr.Tabs() as tabs:
            with gr.Tab("Data", id="data"):
                build_data_tab()
            with gr.Tab("Models", id="models"):
                build_models_tab()
            with gr.Tab("Train", id="train") as train_tab:
                build_train_tab(train_tab)
            with gr.Tab("Runs", id="runs") as runs_tab:
                run_picked, chat_btn, evaluate_btn = build_runs_tab(runs_tab)
            with gr.Tab("Evaluate", id="evaluate"):
                eval_run = build_evaluate_tab()
            with gr.Tab("Chat", id="chat") as chat_tab:
                chat = build_chat_tab(chat_tab)
            with gr.Tab("Rate pairs", id="rate") as rate_tab:
                build_rate_tab(rate_tab)
            with gr.Tab("Votes", id="votes") as votes_tab:
                build_votes_tab(votes_tab)
            with gr.Tab("Hub", id="hub") as hub_tab:
                build_hub_tab(hub_tab)
            with gr.Tab("API", id="serve") as serve_tab:
                build_serve_tab(serve_tab)
        evaluate_btn.click(
            lambda run_id: (gr.Tabs(selected="evaluate"), select_run(run_id)),
            [run_picked],
            [tabs, eval_run],
        )
        opened = chat_btn.click(
            lambda run_id, session_id: (gr.Tabs(selected="chat"), *open_run(run_id, session_id)),
            [run_picked, *chat.open_inputs],
            [tabs, *chat.open_outputs],
        )
        opened.then(on_load, chat.load_inputs, chat.load_outputs)  # base + adapter, ready to answer
    return demo


def launch(
    host: str = "127.0.0.1", port: int = 7860, auth: tuple[str, str] | list[tuple[str, str]] | None = None
) -> None:
    runs.start_scheduler()  # queued runs start, dead ones are marked, even with no page open
    demo = build_app()
    demo.queue(default_concurrency_limit=4)
    demo.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        max_file_size=MAX_UPLOAD,
        allowed_paths=[str(workspace.exports_dir())],
        blocked_paths=[str(workspace.home() / ".secrets")],
        css=CSS,
        js=JS,
        footer_links=["api"] if auth else [],
        show_error=False,
    )
