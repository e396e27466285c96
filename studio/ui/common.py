"""Small converters shared by the tabs: core types in, plain display values out."""

from __future__ import annotations

import pandas as pd


def problem_line(problem) -> str:
    """'alpaca.jsonl line 17, field "output": is empty — every example needs an answer'."""
    where = problem.file
    if getattr(problem, "line", None):
        where += f" line {problem.line}"
    if getattr(problem, "field", None):
        where += f', field "{problem.field}"'
    text = f"{where}: {problem.message}"
    if getattr(problem, "fix", None):
        text += f" — {problem.fix}"
    if getattr(problem, "severity", "error") == "warning":
        text = "(warning) " + text
    return text


NOTICE_MARKS = {"info": "✓", "warning": "⚠", "error": "✗"}


def notice(message: str, level: str = "info") -> str:
    """A status line for the Markdown next to the button that caused it.

    Every tab reports the outcome of an action this way, never with gr.Info/gr.Warning toasts:
    a toast floats over the page, covers content and stays when the user changes tab.

    >>> notice("Saved", "info")
    '✓ Saved'
    """
    return f"{NOTICE_MARKS[level]} {message}"


def stats_markdown(token_stats, limit: int) -> str:
    totals = list(token_stats.total_lengths)
    if not totals:
        return ""
    over = getattr(token_stats, "over_max", 0)
    sampled = f" (first {limit} rows)" if len(totals) >= limit else ""
    return (
        f"**Tokens**{sampled}: {len(totals)} examples, mean {sum(totals) / len(totals):.0f}, "
        f"max {max(totals)}; **{over}** over the max length; "
        f"{getattr(token_stats, 'tokens_per_epoch', sum(totals))} tokens per epoch"
    )


# Plain names for the curves' legend, one per metric key the trainer logs.
SERIES_NAMES = {
    "loss": "train loss",
    "eval_loss": "eval loss",
    "learning_rate": "learning rate",
    "rewards/margins": "reward margin",
    "rewards/accuracies": "accuracy",
}


def series_frame(rows: list[dict], keys: list[str], x: str = "step") -> pd.DataFrame:
    """Long-format frame (x, value, series) of the given metric keys, for gr.LinePlot; each
    series is named in plain words (SERIES_NAMES).

    The frame opens with one row per key with no value (drawn as nothing, placed at the first
    step so the axis does not stretch): Gradio's LinePlot fixes its colours and legend to the
    series of the first frame it draws and never rebuilds them on later updates, so every series
    the plot can show must be named from the first frame on.
    """
    points = [
        {x: float(row[x]), "value": float(row[key]), "series": SERIES_NAMES.get(key, key)}
        for row in rows
        for key in keys
        if x in row and isinstance(row.get(key), int | float)
    ]
    first = points[0][x] if points else 1.0
    data = [{x: first, "value": float("nan"), "series": SERIES_NAMES.get(k, k)} for k in keys] + points
    # Explicit dtypes: a first frame with no points must not make the plot's axes categorical.
    frame = pd.DataFrame(data, columns=[x, "value", "series"])
    return frame.astype({x: "float64", "value": "float64", "series": "object"})


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


# A model field's "Search the Hub" button: opens the Models tab in the page (no server round trip).
OPEN_MODELS_TAB = """() => {
  const tab = [...document.querySelectorAll('button[role="tab"]')].find((b) => b.textContent.trim() === "Models");
  if (tab) { tab.click(); window.scrollTo(0, 0); }
}"""


# Toasts (gr.Info / gr.Warning / gr.Error) float over the page, cover content and stay when the
# user changes tab. Hidden app-wide; each message is shown instead as a status line right after
# the button (or field) the user last acted on, inside that tab, so it goes away with the tab.
NOTICE_CSS = """
.toast-wrap { display: none !important; }
.studio-notice { font-size: var(--text-sm); padding: 4px 8px; border-radius: 6px; margin: 4px 0;
  flex-basis: 100%; white-space: pre-wrap; }
.studio-notice.info, .studio-notice.success { background: #e6f4ea; color: #1e5631; }
.studio-notice.warning { background: #fff4d6; color: #6b4e00; }
.studio-notice.error { background: #fde2e1; color: #8a1c1c; }
"""
NOTICE_JS = """() => {
  const marks = {info: "✓", success: "✓", warning: "⚠", error: "✗"};
  let anchor = null;
  const remember = (e) => {
    const el = e.target.closest && e.target.closest("button, input, textarea, select");
    if (el && !el.closest(".toast-wrap")) anchor = el.closest("button") || el.closest(".block") || el;
  };
  document.addEventListener("click", remember, true);
  document.addEventListener("keydown", (e) => { if (e.key === "Enter") remember(e); }, true);
  const seen = new WeakSet();
  const place = (text, level) => {
    let at = anchor && anchor.isConnected ? anchor : null;
    if (!at) at = [...document.querySelectorAll(".tabitem")].find((t) => t.offsetParent !== null);
    if (!at) return;
    let note = at.nextElementSibling;
    if (!note || !note.classList.contains("studio-notice")) {
      note = document.createElement("div");
      note.setAttribute("role", "status");
      at.insertAdjacentElement("afterend", note);
    }
    note.className = "studio-notice " + level;
    note.textContent = (marks[level] || "") + " " + text;
  };
  new MutationObserver(() => {
    for (const el of document.querySelectorAll(".toast-message-text")) {
      if (seen.has(el)) continue;
      seen.add(el);
      const level = ["error", "warning", "success", "info"].find((c) => el.classList.contains(c)) || "info";
      place(el.textContent.trim(), level);
    }
  }).observe(document.body, {childList: true, subtree: true, characterData: true});
}"""


MODEL_INFO = (
    "'default' (embedded SmolLM2-135M-Instruct) and the models on this machine; or type a local folder "
    "or any Hub id (search in the Models tab)"
)


def model_picker(label: str, elem_id: str, info: str = MODEL_INFO, **layout):
    """The model field every tab shares: 'default' and the models on this machine (re-read when the
    field is focused, so a model downloaded meanwhile is listed), or any folder or Hub id typed in."""
    import gradio as gr

    from studio import models

    dropdown = gr.Dropdown(
        models.local_specs(),
        value="default",
        allow_custom_value=True,
        label=label,
        info=info,
        elem_id=elem_id,
        **layout,
    )
    dropdown.focus(lambda: gr.update(choices=models.local_specs()), None, dropdown)
    return dropdown


def find_model_button():
    """ "Search the Hub for a model…": opens the Models tab."""
    import gradio as gr

    button = gr.Button("Search the Hub for a model…", size="sm")
    button.click(None, js=OPEN_MODELS_TAB)
    return button
