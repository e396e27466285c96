"""What the Data tab draws, as HTML: a record as a chat, the legend of the kinds it shows, the
token-length histogram (inline SVG, its axis fitted to the data) and the active-dataset line.

Pure converters from core types (`preview.RecordView`, `stats.TokenStats`) to strings; no
widgets, no events, no file or model access.
"""

from __future__ import annotations

import html
import io

# Each highlighted kind has its own colour: trained (SFT) is not chosen (a preference pair).
COLORS = {"trained": "#7dd3a8", "chosen": "#8ab4f8", "rejected": "#f4a3a3", "completion": "#f5c97a"}
LEGEND = {
    "trained": "trained (carries the loss)",
    "chosen": "chosen answer",
    "rejected": "rejected answer",
    "completion": "KTO answer",
}
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}

CSS = """
#data-chat .turn { border-radius: 10px; padding: 8px 12px; margin: 6px 0; max-width: 92%;
  white-space: pre-wrap; border: 1px solid var(--border-color-primary); }
#data-chat .turn .who { font-size: 0.8em; font-weight: 600; opacity: 0.75; display: block; }
#data-chat .turn.user { margin-right: auto; background: var(--background-fill-secondary); }
#data-chat .turn.assistant { margin-left: auto; }
#data-chat .turn.system { font-style: italic; background: var(--background-fill-secondary); }
#data-chat .turn.injected { border-style: dashed; }
#data-chat .turn .note { font-size: 0.8em; font-style: normal; opacity: 0.8; display: block; }
#data-legend .swatch { display: inline-block; width: 0.9em; height: 0.9em; border-radius: 3px;
  vertical-align: middle; margin: 0 4px 0 12px; }
#data-preview .text.unlabeled { opacity: 0.5; }  /* masked tokens: shown, dimmed, no loss */
"""


def chat_html(view) -> str:
    """The record as chat bubbles; a turn that carries the loss is coloured by its kind."""
    out = []
    for turn in view.turns:
        classes = ["turn", turn.role] + (["injected"] if turn.from_template else [])
        style = (
            f' style="background:{COLORS[turn.kind]}33;border-color:{COLORS[turn.kind]}"' if turn.kind else ""
        )
        who = ROLE_NAMES.get(turn.role, turn.role)
        note = f'<span class="note">{html.escape(turn.note)}</span>' if turn.note else ""
        kind = f' data-kind="{turn.kind}"' if turn.kind else ""
        out.append(
            f'<div class="{" ".join(classes)}"{kind}{style}><span class="who">{who}</span>'
            f"{html.escape(turn.text)}{note}</div>"
        )
    if view.truncated:
        out.append('<p class="note">This example is longer than the max length: the rest is cut off.</p>')
    return "\n".join(out)


def system_note(view) -> str:
    """Where an injected system prompt comes from and how to change it ("" when there is none)."""
    if not view.injected_system:
        return ""
    return (
        f'**System prompt not in your data:** "{view.injected_system}" comes from the model\'s chat '
        "template: the model reads it before every example (it carries no loss). To change it, give your rows a system message "
        '(a `system` column, or a first message with role "system"), or pick the chat template '
        "`chatml`, which adds none."
    )


def legend_html(kinds: list[str]) -> str:
    """Legend entries for the kinds present only, plus the dimmed untrained text."""
    items = [
        f'<span class="swatch" style="background:{COLORS[k]}"></span><span class="entry">{LEGEND[k]}</span>'
        for k in kinds
    ]
    items.append(
        '<span class="swatch" style="background:var(--body-text-color);opacity:0.3"></span>'
        '<span class="entry">not trained (read only)</span>'
    )
    return "".join(items)


def length_histogram_svg(token_stats, max_length: int) -> str:
    """Histogram of prompt and total lengths; the axis ends near the longest example and the
    max-length cut-off is drawn only when it falls inside (otherwise the title says where it is)."""
    totals = list(token_stats.total_lengths)
    if not totals:
        return ""
    prompts = list(getattr(token_stats, "prompt_lengths", []) or [])
    longest = max(totals)
    right = max(longest, max_length) if max_length <= longest * 1.1 else longest
    bins = min(40, max(12, len(set(totals))))
    edges = [right * 1.02 * i / bins for i in range(bins + 1)]
    import matplotlib  # here, not at import: it costs the page's first load 0.4 s

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"svg.fonttype": "none"}):  # text stays text in the page
        fig, ax = plt.subplots(figsize=(7, 2.6), dpi=100)
        if prompts:
            ax.hist(prompts, bins=edges, alpha=0.5, label="prompt", color="#9cc3f5")
        ax.hist(totals, bins=edges, alpha=0.7, label="total", color="#2f7a55")
        if max_length <= right:
            ax.axvline(max_length, color="#c0392b", linestyle="--", label=f"cut-off {max_length}")
            ax.set_title("tokens per example", fontsize=9)
        else:
            ax.set_title(
                f"tokens per example (the cut-off, {max_length}, is past the longest: {longest})", fontsize=9
            )
        ax.set_xlim(0, right * 1.02)
        ax.set_xlabel("tokens per example")
        ax.set_ylabel("examples")
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg")
        plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def active_line(name: str, source: str, rows: int | None = None) -> str:
    """The banner naming the dataset the tab is showing: 'Active dataset: x.jsonl (your upload)'."""
    count = f" — {rows} usable rows" if rows is not None else ""
    return f"### Active dataset: `{name}`\n{source}{count}"
