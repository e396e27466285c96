"""Hub tab: push a completed run's adapter (or merged model) to the Hugging Face Hub, preview the
model card first, or export it here as a zip or a GGUF file to download.

Handlers turn widget values into calls to studio/hub.py and its results or errors back into
Markdown; they know nothing about HTTP or staging. The token is passed straight through to
`hub.push`: it is shown only masked, never returned to the page, printed or written anywhere but
the 0600 secret file when "remember" is ticked. On a Hugging Face Space (SPACE_ID set) a Sign-in
button provides an OAuth token instead of a pasted one.
"""

from __future__ import annotations

import importlib.util
import os

import gradio as gr

from studio import workspace
from studio.publish import card, export, hub
from studio.train import runs

ADAPTER, MERGED = "adapter", "merged model"
NO_RUNS = "No completed run with an adapter yet: train one in the Train tab, and it shows up here."
_CURVE_LINK = f"![Training loss]({card.CURVE_NAME})"


# --- runs ---------------------------------------------------------------------------------------
def run_choices() -> list[tuple[str, str]]:
    """(label, run id) of every completed run that left an adapter or model, newest first."""
    choices = []
    for info in runs.list_runs():
        if info.state == "completed" and (info.path / "adapter").is_dir():
            dataset = os.path.basename(str(info.recipe.get("dataset", "")).rstrip("/")) or "?"
            choices.append((f"{info.name} · {info.method} on {dataset}", info.run_id))
    return choices


def _run_folder(run_id: str | None) -> export.RunFolder:
    if not run_id:
        raise ValueError("pick a completed run first (the Run list above)")
    run = export.load_run(workspace.run_path(run_id))
    export.require_completed(run)
    return run


def on_refresh(current: str | None):
    choices = run_choices()
    ids = [value for _, value in choices]
    value = current if current in ids else (ids[0] if ids else None)
    return gr.update(choices=choices, value=value), "" if choices else NO_RUNS


# --- model card preview -------------------------------------------------------------------------
def _has_curve(run: export.RunFolder) -> bool:
    return any(isinstance(m.get(key), int | float) for m in run.metrics for key in ("loss", "eval_loss"))


def card_preview(run_id: str | None, repo_id: str, what: str) -> str:
    """The README.md the push would upload, with its YAML header shown as a code block."""
    if not run_id:
        return "*Pick a run to see the model card that will be published with it.*"
    try:
        run = _run_folder(run_id)
    except (ValueError, OSError) as exc:
        return f"**No preview:** {exc}"
    repo = (repo_id or "").strip()
    if not repo or repo_note(repo):
        repo = f"your-username/{run_id}"
    merged = what == MERGED or run.is_full_model
    text = card.model_card(run, repo, merged, _has_curve(run))
    _, meta, body = text.split("---\n", 2)
    body = body.replace(_CURVE_LINK, f"*(the loss curve shown here is uploaded as `{card.CURVE_NAME}`)*")
    return f"```yaml\n{meta}```\n{body}"


def curve_image(run_id: str | None) -> str | None:
    """The loss-curve PNG the card links to, drawn into STUDIO_HOME/exports/ for the preview."""
    try:
        run = _run_folder(run_id)
    except (ValueError, OSError):
        return None
    path = workspace.exports_dir() / f"{run.run_id}-{card.CURVE_NAME}"
    return str(path) if card.plot_loss(run.metrics, path) else None


def repo_note(repo_id: str) -> str:
    """An inline warning for a malformed repo id; nothing while the box is empty or valid."""
    if not (repo_id or "").strip():
        return ""
    try:
        hub.check_repo_id(repo_id)
    except hub.HubError as exc:
        return f"**Repo id:** {exc}"
    return ""


# --- token --------------------------------------------------------------------------------------
def _oauth_value(oauth_token: gr.OAuthToken | None) -> str | None:
    return oauth_token.token if oauth_token is not None and oauth_token.token else None


def sign_in_available() -> bool:
    """Whether to show "Sign in with Hugging Face": on a Space with `hf_oauth: true` and gradio[oauth].

    Outside a Space Gradio fakes the sign-in with the machine's own login, and it refuses to start
    when OAuth is configured without authlib and itsdangerous; there the password field is the way in.
    """
    on_space = bool(os.environ.get("SPACE_ID")) and bool(os.environ.get("OAUTH_CLIENT_ID"))
    return on_space and all(importlib.util.find_spec(name) for name in ("authlib", "itsdangerous"))


def token_line(typed: str, oauth_token: gr.OAuthToken | None = None) -> str:
    """Which token a push would use, masked: typed > Sign-in (Spaces) > HF_TOKEN > saved > login."""
    oauth = _oauth_value(oauth_token)
    if not (typed or "").strip() and oauth:
        return f"Using {hub.mask_token(oauth)} from your Hugging Face sign-in."
    return hub.token_status(typed)


def on_forget(typed: str, oauth_token: gr.OAuthToken | None = None) -> str:
    hub.forget_token()
    gr.Info("The saved token was deleted from this machine.")
    return token_line(typed, oauth_token)


# --- push ---------------------------------------------------------------------------------------
def result_markdown(result: hub.PushResult) -> str:
    """Success message with the repo and the commit as links."""
    what = "merged model" if result.merged else "adapter"
    visibility = "private" if result.private else "public"
    return (
        f"**Pushed** the {what} ({len(result.files)} files, {visibility} repo) to "
        f"[{result.repo_url}]({result.repo_url})\n\n"
        f"Commit [{result.commit_id[:12]}]({result.commit_url})"
    )


def _failure(exc: Exception) -> str:
    if isinstance(exc, hub.HubError) and exc.retryable:  # its message already says to press Push again
        return f"**Push failed:** {exc}. Nothing was lost."
    return f"**Push failed:** {exc}. Fix it and press **Push** again."


def on_push(
    run_id: str | None,
    repo_id: str,
    private: bool,
    what: str,
    typed: str,
    remember: bool,
    oauth_token: gr.OAuthToken | None = None,
):
    """Validate, push, and report; returns (result Markdown, token line)."""
    typed = (typed or "").strip()
    token = typed or _oauth_value(oauth_token)
    try:
        repo = hub.check_repo_id(repo_id)  # before anything else, so a typo costs no request
        _run_folder(run_id)
        result = hub.push(
            workspace.run_path(run_id),
            repo,
            token=token,
            private=bool(private),
            merged=what == MERGED,
            remember=bool(remember and typed),  # a Sign-in token expires: never keep it
        )
    except (ValueError, OSError) as exc:
        return _failure(exc), token_line(typed, oauth_token)
    return result_markdown(result), token_line(typed, oauth_token)


# --- local export -------------------------------------------------------------------------------
def _export(run_id: str | None, kind: str):
    """Build one download in STUDIO_HOME/exports/; returns (file or None, message)."""
    try:
        run_dir = _run_folder(run_id).path
        if kind == "gguf":
            path = hub.export_gguf(run_dir)
        else:
            path = hub.export_zip(run_dir, merged=kind == "merged")
    except (ValueError, OSError) as exc:
        return None, f"**Export failed:** {exc}"
    size = path.stat().st_size
    shown = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} KB"
    return str(path), f"`{path.name}` ({shown}) is ready: download it below."


def _shown(path: str | None, message: str):
    # The download box stays hidden until there is something in it.
    return gr.update(value=path, visible=path is not None), message


def on_zip_adapter(run_id: str | None):
    return _shown(*_export(run_id, "adapter"))


def on_zip_merged(run_id: str | None):
    return _shown(*_export(run_id, "merged"))


def on_gguf(run_id: str | None):
    return _shown(*_export(run_id, "gguf"))


# --- layout -------------------------------------------------------------------------------------
def build_hub_tab(tab: gr.Tab | None = None) -> None:
    """`tab`: the Hub tab, so that showing it lists the runs completed meanwhile."""
    choices = run_choices()
    with gr.Row(equal_height=True):
        run = gr.Dropdown(
            choices,
            value=choices[0][1] if choices else None,
            label="Run",
            info="Completed runs with an adapter",
            elem_id="hub-run",
            scale=5,
        )
    no_runs = gr.Markdown("" if choices else NO_RUNS)
    with gr.Row():
        with gr.Column(scale=3):
            push_controls = _push_controls(run)
        with gr.Column(scale=2):
            _export_controls(run)
    with gr.Accordion("Model card preview (README.md)", open=True):
        with gr.Row():
            with gr.Column(scale=3):
                preview = gr.Markdown(card_preview(run.value, "", ADAPTER))
            with gr.Column(scale=1, min_width=240):
                curve = gr.Image(curve_image(run.value), label=card.CURVE_NAME, interactive=False)
    repo_id, what = push_controls
    if tab is not None:
        tab.select(on_refresh, [run], [run, no_runs], show_progress="hidden")
    run.change(card_preview, [run, repo_id, what], [preview]).then(curve_image, [run], [curve])
    what.change(card_preview, [run, repo_id, what], [preview])
    for event in (repo_id.blur, repo_id.submit):
        event(card_preview, [run, repo_id, what], [preview])


def _push_controls(run: gr.Dropdown) -> tuple[gr.Textbox, gr.Radio]:
    gr.Markdown("### Push to the Hugging Face Hub")
    repo_id = gr.Textbox(label="Repo id", placeholder="your-username/my-tuned-model")
    note = gr.Markdown()
    with gr.Row():
        private = gr.Checkbox(True, label="Private repo")
        what = gr.Radio(
            [ADAPTER, MERGED],
            value=ADAPTER,
            label="What to push",
            info="adapter: a few MB, loaded on top of the base · merged model: standalone weights",
        )
    if sign_in_available():
        gr.LoginButton()
    token = gr.Textbox(
        label="Hugging Face token",
        type="password",
        placeholder="hf_... with write access (leave empty to use HF_TOKEN or a saved one)",
    )
    with gr.Row():
        remember = gr.Checkbox(
            False, label="Remember on this machine", info="saved in a file only you can read"
        )
        forget = gr.Button("Forget saved token", size="sm")
    status = gr.Markdown(token_line(""))
    push = gr.Button("Push to the Hub", variant="primary")
    result = gr.Markdown()
    repo_id.blur(repo_note, [repo_id], [note])
    repo_id.submit(repo_note, [repo_id], [note])
    token.input(token_line, [token], [status], show_progress="hidden")
    forget.click(on_forget, [token], [status])
    push.click(
        on_push,
        [run, repo_id, private, what, token, remember],
        [result, status],
        concurrency_id="hub_export",
        concurrency_limit=1,
    )
    return repo_id, what


def _export_controls(run: gr.Dropdown) -> None:
    gr.Markdown("### Export here")
    adapter_zip = gr.Button("Download adapter (.zip)")
    merged_zip = gr.Button("Download merged model (.zip)")
    gguf = gr.Button("Export GGUF")
    message = gr.Markdown()
    download = gr.File(label="Download", interactive=False, visible=False)
    for button, handler in ((adapter_zip, on_zip_adapter), (merged_zip, on_zip_merged), (gguf, on_gguf)):
        button.click(handler, [run], [download, message], concurrency_id="hub_export", concurrency_limit=1)
