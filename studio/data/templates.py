"""Render canonical records with a chat template and build the loss mask.

THE one function the Data tab's preview, the token statistics and the trainer share: what you
preview is what you train. `tokenize_sft` renders the whole conversation once with the tokenizer's
chat template, finds every assistant answer right after the assistant opener the template adds
(learned by rendering with the generation prompt, so whatever else the template injects -
SmolLM2's default system prompt, Llama 3 headers - is never mistaken for an answer), extends
each span over the end-of-turn marker (<|im_end|>, <|eot_id|>, eos), then tokenizes the text once
with character offsets and trains exactly the tokens that overlap those spans. No
`{% generation %}` markers are needed. Knows nothing about files, formats, trainers or the UI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from studio.data.chat_text import TEMPLATES

IGNORE_INDEX = -100
END_MARKERS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "</s>",
)
_RUNS = re.compile(rb"\x00+|\x01+")  # runs of untrained / trained tokens in bytes(trained)
_OWN_TEMPLATE = "studio_own_chat_template"  # the model's own template, kept when another is chosen


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]  # token id where trained, -100 where masked
    segments: list[tuple[str, bool]]  # consecutive decoded text pieces + trained flag, for the preview
    truncated: bool


def ensure_chat_template(tokenizer, template: str | None) -> None:
    """Give `tokenizer` the chat template to train with.

    template: None (the model's own; restored if another was chosen before), "chatml", "llama3"
    or "alpaca". Raises ValueError naming the fix when the model has none and none is chosen.
    """
    if _OWN_TEMPLATE not in tokenizer.__dict__:
        tokenizer.__dict__[_OWN_TEMPLATE] = getattr(tokenizer, "chat_template", None)
    own = tokenizer.__dict__[_OWN_TEMPLATE]
    if template is None:
        tokenizer.chat_template = own
        template_text(tokenizer, None)  # raises when there is none
    else:
        tokenizer.chat_template = template_text(tokenizer, template)


def template_text(tokenizer, template: str | None) -> str | None:
    """The Jinja text to render with: a named template, or None for the tokenizer's current one."""
    if template is not None:
        if template not in TEMPLATES:
            raise ValueError(
                f"unknown chat template {template!r}: choose the model's own, {', '.join(TEMPLATES)}"
            )
        return TEMPLATES[template]
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or "this model"
        raise ValueError(
            f"{name} has no chat template: choose one for it (chatml, llama3 or alpaca) "
            "in the recipe's chat_template field or the Data tab's 'Chat template' menu"
        )
    return None


def render(
    messages: list[dict], tokenizer, chat_template: str | None, generation_prompt: bool = False
) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt, chat_template=chat_template
    )


def generation_prompt(tokenizer, chat_template: str | None) -> str:
    """The text the template adds to open an assistant turn (e.g. "<|im_start|>assistant\n")."""
    probe = [{"role": "user", "content": "x"}]
    closed = render(probe, tokenizer, chat_template)
    opened = render(probe, tokenizer, chat_template, generation_prompt=True)
    return opened[len(closed) :] if opened.startswith(closed) else ""


def assistant_spans(
    messages: list[dict], tokenizer, chat_template: str | None, opener: str | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant answer + end-of-turn.

    An answer starts after the next assistant opener (`generation_prompt`); when the template
    renders history differently, after the conversation rendered up to it with the generation
    prompt (one more render per answer).
    """
    if opener is None:
        opener = generation_prompt(tokenizer, chat_template)
    full = render(messages, tokenizer, chat_template)
    markers = _end_markers(tokenizer)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        found = full.find(opener, cursor) if opener else -1
        if found >= 0:
            cursor = found + len(opener)
        else:
            prefix = render(messages[:i], tokenizer, chat_template, generation_prompt=True)
            if full.startswith(prefix):
                cursor = max(cursor, len(prefix))
        start, end = _find_content(full, message["content"], cursor)
        spans.append((start, _past_end_marker(full, end, markers)))
        cursor = spans[-1][1]
    return full, spans


def _end_markers(tokenizer) -> tuple[str, ...]:
    eos = getattr(tokenizer, "eos_token", None)
    markers = set(END_MARKERS) | ({eos} if isinstance(eos, str) and eos else set())
    return tuple(sorted(markers, key=len, reverse=True))


def _find_content(full: str, content: str, cursor: int) -> tuple[int, int]:
    for text in (content, content.strip()):
        start = full.find(text, cursor) if text else -1
        if start >= 0:
            return start, start + len(text)
    raise ValueError(
        f"the chat template changes the assistant's text ({content[:40]!r} is not in the rendered "
        "conversation), so the trained tokens cannot be located: choose the chatml template"
    )


def _past_end_marker(full: str, end: int, markers: tuple[str, ...]) -> int:
    """Extend a span over the end-of-turn marker right after the answer (spaces/newlines allowed)."""
    pos = end
    while pos < len(full) and full[pos] in " \t\n" and pos - end < 4:
        pos += 1
    for marker in markers:
        if full.startswith(marker, pos):
            return pos + len(marker)
    return end


def tokenize_sft(
    record: dict,
    tokenizer,
    max_length: int | None = None,
    template: str | None = None,
    train_on: str = "assistant",
) -> Tokenized:
    """Token ids, labels (-100 where masked) and preview segments of one SFT record.

    train_on: "assistant" (answers + their end-of-turn marker) or "all". Truncation keeps the start.
    """
    return tokenize_sft_batch([record], tokenizer, max_length, template, train_on)[0]


def tokenize_sft_batch(
    records: list[dict],
    tokenizer,
    max_length: int | None = None,
    template: str | None = None,
    train_on: str = "assistant",
) -> list[Tokenized]:
    """`tokenize_sft` for many records with one call of the fast tokenizer (the fast path)."""
    if train_on not in ("assistant", "all"):
        raise ValueError(f"train_on {train_on!r} must be 'assistant' or 'all'")
    chat_template = template_text(tokenizer, template)
    opener = generation_prompt(tokenizer, chat_template)
    rendered = [assistant_spans(_messages(r), tokenizer, chat_template, opener) for r in records]
    tokens = _encode([text for text, _ in rendered], tokenizer)
    if tokens is None:
        tokens = [_tokenize_by_pieces(text, spans, tokenizer) for text, spans in rendered]
    return [
        _masked(text, spans, ids, offsets, max_length, train_on == "all")
        for (text, spans), (ids, offsets) in zip(rendered, tokens, strict=True)
    ]


def _encode(texts: list[str], tokenizer) -> list[tuple[list[int], list]] | None:
    """Ids and character offsets from the fast tokenizer in one batch (None: no offsets here)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        # the Rust tokenizer directly: same ids as tokenizer(texts), without per-row Python wrapping
        return [(enc.ids, enc.offsets) for enc in backend.encode_batch(texts, add_special_tokens=False)]
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return list(zip(enc["input_ids"], enc["offset_mapping"], strict=True))
    return None


def _messages(record: dict) -> list[dict]:
    if "messages" not in record:
        raise ValueError(f"an SFT record needs 'messages', got keys {sorted(record)}: check the data kind")
    return record["messages"]


def _tokenize_by_pieces(text: str, spans: list[tuple[int, int]], tokenizer) -> tuple[list[int], list]:
    """Slow tokenizers have no offsets: tokenize the text piece by piece at the span edges."""
    edges = sorted({0, len(text), *(p for span in spans for p in span)})
    ids, offsets = [], []
    for a, b in zip(edges, edges[1:], strict=False):
        piece = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
        ids += piece
        offsets += [(a, b)] * len(piece)
    return ids, offsets


def _masked(text, spans, ids, offsets, max_length, train_all) -> Tokenized:
    trained = [True] * len(offsets) if train_all else _overlaps(offsets, spans)
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, offsets, trained = ids[:max_length], offsets[:max_length], trained[:max_length]
    labels = [t if flag else IGNORE_INDEX for t, flag in zip(ids, trained, strict=True)]
    return Tokenized(list(ids), labels, _segments(text, offsets, trained, truncated), truncated)


def _overlaps(offsets, spans: list[tuple[int, int]]) -> list[bool]:
    """For each token (start, end): does it overlap a trained span? One sweep (both are sorted)."""
    flags, j = [], 0
    for start, end in offsets:
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        flags.append(j < len(spans) and spans[j][0] < end)
    return flags


def _segments(text: str, offsets, trained: list[bool], truncated: bool) -> list[tuple[str, bool]]:
    """Cut the text where the trained flag changes; the pieces join back into the text trained on."""
    if not offsets:
        return [(text, False)] if text else []
    cuts, flags = [0], [trained[0]]
    # runs of equal flags found by a C regex over the flags as bytes: no Python loop per token
    for run in _RUNS.finditer(bytes(trained)):
        if run.start() > 0:
            cuts.append(max(offsets[run.start()][0], cuts[-1]))
            flags.append(trained[run.start()])
    cuts.append(offsets[-1][1] if truncated else len(text))
    return [(text[a:b], f) for a, b, f in zip(cuts, cuts[1:], flags, strict=False) if b > a]


def render_preference(record: dict, tokenizer, template: str | None = None) -> dict:
    """{"prompt", "chosen", "rejected"} (KTO: {"prompt", "completion"}) as text, the way the
    preference trainers render them: the prompt with the generation prompt, each answer as what
    the full conversation adds after the part it shares with the prompt."""
    chat_template = template_text(tokenizer, template)
    prompt = render(record["prompt"], tokenizer, chat_template, generation_prompt=True)
    keys = [k for k in ("chosen", "rejected", "completion") if k in record]
    fulls = {k: render(record["prompt"] + record[k], tokenizer, chat_template) for k in keys}
    for full in fulls.values():
        prompt = prompt[: _common_prefix(prompt, full)]
    return {"prompt": prompt, **{k: full[len(prompt) :] for k, full in fulls.items()}}


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
