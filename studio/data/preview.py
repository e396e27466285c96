"""One record as the Data tab shows it: as a chat (turns, each marked trained or not) and as the
exact text pieces the trainer reads, both from `templates` (what you preview is what you train).

Also finds what the chat template adds that the data does not have: a default system prompt
(SmolLM2's "You are a helpful AI assistant named SmolLM...") shown as its own turn with where it
comes from. Knows nothing about files, formats, trainers or the UI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from studio.data import templates

KINDS = ("trained", "chosen", "rejected", "completion")  # the highlighted kinds, in legend order
_PROBE_USER = "\u2063studio-probe-user\u2063"
_PROBE_SYSTEM = "\u2063studio-probe-system\u2063"


@dataclass
class Turn:
    role: str  # "system" | "user" | "assistant"
    text: str
    kind: str | None = None  # one of KINDS when the turn carries the loss, else None
    note: str = ""  # e.g. "from the model's chat template", "cut at the max length"
    from_template: bool = False  # written by the chat template, not found in the data


@dataclass
class RecordView:
    turns: list[Turn]
    pieces: list[tuple[str, str | None]]  # the exact rendered text, each piece with its kind
    injected_system: str | None = None  # a system prompt the template adds, not in the data
    truncated: bool = False
    kinds: list[str] = field(default_factory=list)  # kinds present, in KINDS order


def injected_system_prompt(tokenizer, template: str | None = None) -> str | None:
    """The system prompt the chat template writes when a conversation has none, else None.

    Renders one user turn with and without a system message and takes what the template puts
    where the system message's text would go.
    """
    chat_template = templates.template_text(tokenizer, template)
    user = {"role": "user", "content": _PROBE_USER}
    plain = templates.render([user], tokenizer, chat_template)
    with_system = templates.render(
        [{"role": "system", "content": _PROBE_SYSTEM}, user], tokenizer, chat_template
    )
    if _PROBE_SYSTEM not in with_system or _PROBE_USER not in plain:
        return None
    opener, _, rest = with_system.partition(_PROBE_SYSTEM)
    closer = rest.split(_PROBE_USER)[0]
    before_user = plain.split(_PROBE_USER)[0]
    if not (before_user.startswith(opener) and before_user.endswith(closer)):
        return None
    injected = before_user[len(opener) : len(before_user) - len(closer)]
    return injected.strip() or None


def record_view(record: dict, kind: str, tokenizer, template: str | None, max_length: int) -> RecordView:
    """The chat turns and exact pieces of one canonical record (kind "sft", "preference", "kto")."""
    if kind == "sft":
        view = _sft_view(record, tokenizer, template, max_length)
        prompt = record["messages"]
    else:
        view = _preference_view(record, tokenizer, template)
        prompt = record["prompt"]
    if prompt and prompt[0]["role"] != "system":
        injected = injected_system_prompt(tokenizer, template)
        if injected and injected in "".join(text for text, _ in view.pieces):
            view.injected_system = injected
            note = "from the model's chat template, not your data"
            view.turns.insert(0, Turn("system", injected, None, note, from_template=True))
    present = {k for _, k in view.pieces if k} | {t.kind for t in view.turns if t.kind}
    view.kinds = [k for k in KINDS if k in present]
    return view


def _sft_view(record: dict, tokenizer, template: str | None, max_length: int) -> RecordView:
    tok = templates.tokenize_sft(record, tokenizer, max_length=max_length, template=template)
    pieces = [(text, "trained" if trained else None) for text, trained in tok.segments]
    trained_text = "".join(text for text, kind in pieces if kind)
    turns = []
    for message in record["messages"]:
        if message["role"] != "assistant":
            turns.append(Turn(message["role"], message["content"]))
            continue
        content = message["content"].strip()
        if content in trained_text:
            turns.append(Turn("assistant", message["content"], "trained"))
        elif content[:16] in trained_text:
            turns.append(
                Turn(
                    "assistant",
                    message["content"],
                    "trained",
                    "cut at the max length: the end is not trained",
                )
            )
        else:
            turns.append(Turn("assistant", message["content"], None, "not trained: past the max length"))
    return RecordView(turns, pieces, truncated=tok.truncated)


def _preference_view(record: dict, tokenizer, template: str | None) -> RecordView:
    rendered = templates.render_preference(record, tokenizer, template=template)
    turns = [Turn(m["role"], m["content"]) for m in record["prompt"]]
    if "completion" in record:
        label = "desirable" if record.get("label") else "undesirable"
        answer = record["completion"][0]["content"]
        turns.append(Turn("assistant", answer, "completion", f"{label} answer"))
        pieces = [(rendered["prompt"], None), (rendered["completion"], "completion"), (f"  [{label}]", None)]
        return RecordView(turns, pieces)
    turns.append(Turn("assistant", record["chosen"][0]["content"], "chosen", "chosen answer"))
    turns.append(Turn("assistant", record["rejected"][0]["content"], "rejected", "rejected answer"))
    pieces = [
        (rendered["prompt"], None),
        (rendered["chosen"], "chosen"),
        ("\n\n── rejected ──\n", None),
        (rendered["rejected"], "rejected"),
    ]
    return RecordView(turns, pieces)
