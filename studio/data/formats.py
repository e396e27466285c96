"""Detect a dataset's format from all its rows and normalize it into the canonical records.

Canonical records (TRL's own key sets, see DESIGN.md):
    SFT         {"messages": [{"role", "content"}, ...]}
    preference  {"prompt": [messages], "chosen": [assistant msg], "rejected": [assistant msg]}
    KTO         {"prompt": [messages], "completion": [assistant msg], "label": bool}

Every row is checked; a row with an error is dropped and reported (file, line, field, fix), a row
with a warning is kept and reported. Nothing is dropped silently. Knows nothing about files
(rows come from `io`), tokenizers or the UI.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from studio.data import chat_text
from studio.data.io import Problem, Row

FORMAT_NAMES = {
    "alpaca": "Alpaca",
    "sharegpt": "ShareGPT",
    "messages": "OpenAI messages",
    "prompt_completion": "prompt/completion",
    "chatml": "ChatML text",
    "llama3": "Llama 3 chat text",
    "dpo": "DPO pairs",
    "kto": "KTO",
    "text": "plain text",
}
KIND_OF_FORMAT = {
    "alpaca": "sft",
    "sharegpt": "sft",
    "messages": "sft",
    "prompt_completion": "sft",
    "chatml": "sft",
    "llama3": "sft",
    "dpo": "preference",
    "kto": "kto",
    "text": "",
}
METHOD_KINDS = {"sft": "sft", "dpo": "preference", "simpo": "preference", "orpo": "preference", "kto": "kto"}
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}
EXAMPLES = {
    "sft": "sample_data/alpaca.jsonl",
    "preference": "sample_data/dpo.jsonl",
    "kto": "sample_data/kto.jsonl",
}


class RowError(ValueError):
    """What is wrong with one row: the field, the problem and the fix."""

    def __init__(self, field: str | None, message: str, fix: str):
        super().__init__(message)
        self.field, self.message, self.fix = field, message, fix


@dataclass
class Normalized:
    format: str  # the file's format id ("" when no row was recognised)
    kind: str  # "sft" | "preference" | "kto" | ""
    records: list[dict] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # source line of each record
    problems: list[Problem] = field(default_factory=list)
    rows_read: int = 0


def kind_for_method(method: str) -> str:
    """The record kind a training method takes: sft -> "sft"; dpo/simpo/orpo -> "preference"; kto -> "kto"."""
    try:
        return METHOD_KINDS[method.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHOD_KINDS)}") from None


def row_format(data: dict) -> str | None:
    """The format one row is written in, judged by its keys (None when no format fits).

    >>> row_format({"instruction": "Add 2 and 2", "output": "4"})
    'alpaca'
    """
    if "conversations" in data:
        return "sharegpt"
    if "messages" in data:
        return "messages"
    if "chosen" in data or "rejected" in data:
        return "dpo"
    if "label" in data and ("prompt" in data or "completion" in data):
        return "kto"
    if "instruction" in data or "output" in data:
        return "alpaca"
    if "prompt" in data or "completion" in data:
        return "prompt_completion"
    if "text" in data:
        text = data["text"]
        if isinstance(text, str) and chat_text.LLAMA3_HEADER in text:
            return "llama3"
        if isinstance(text, str) and chat_text.CHATML_START in text:
            return "chatml"
        return "text"
    return None


def detect_format(rows: Iterable[Row]) -> str:
    """The format most rows are written in ("" when none is recognised)."""
    counts = Counter(f for f in (row_format(r.data) for r in rows) if f)
    return counts.most_common(1)[0][0] if counts else ""


def normalize(rows: Iterable[Row], file: str) -> Normalized:
    """Detect the format from every row, then normalize and check each row."""
    rows = list(rows)
    formats = [row_format(r.data) for r in rows]
    counts = Counter(f for f in formats if f)
    main = counts.most_common(1)[0][0] if counts else ""
    result = Normalized(main, KIND_OF_FORMAT.get(main, ""), rows_read=len(rows))
    main_lines = _ranges([r.line for r, f in zip(rows, formats, strict=True) if f == main])
    seen: dict[str, int] = {}
    for row, fmt in zip(rows, formats, strict=True):
        try:
            record = _normalize_row(row.data, fmt, result.kind, main, main_lines)
        except RowError as err:
            result.problems.append(
                Problem(file, row.line, err.field, err.message, err.fix, "error", row.unit)
            )
            continue
        key = json.dumps(record, sort_keys=True, ensure_ascii=False)
        if key in seen:
            result.problems.append(
                Problem(
                    file,
                    row.line,
                    None,
                    f"duplicate of {row.unit} {seen[key]}",
                    f"kept {row.unit} {seen[key]} and skipped this copy; remove it from the file",
                    "warning",
                    row.unit,
                )
            )
            continue
        seen[key] = row.line
        result.records.append(record)
        result.lines.append(row.line)
    result.problems += _mixed_format_warnings(file, rows, formats, main)
    return result


def _normalize_row(data: dict, fmt: str | None, kind: str, main: str, main_lines: str) -> dict:
    if fmt is None:
        keys = ", ".join(f'"{k}"' for k in list(data)[:8]) or "none"
        raise RowError(
            None,
            f"no known format (columns: {keys})",
            'use "instruction"/"output", "messages", "conversations", "prompt"/"completion", '
            '"chosen"/"rejected" or a ChatML "text"',
        )
    if KIND_OF_FORMAT[fmt] != kind:
        raise RowError(
            None,
            f"is {FORMAT_NAMES[fmt]} but most of the file is {FORMAT_NAMES[main]} (lines {main_lines})",
            f"keep one kind of data per file: move the {FORMAT_NAMES[fmt]} rows to their own file",
        )
    bad = _nonfinite(data)
    if bad:
        raise RowError(
            bad, "is NaN or Infinity", "replace it with a real value (text, or true/false for a label)"
        )
    return NORMALIZERS[fmt](data)


def _mixed_format_warnings(file: str, rows: list[Row], formats: list, main: str) -> list[Problem]:
    """Formats of the same kind mixed in one file are all read, but the user should know."""
    kind = KIND_OF_FORMAT.get(main, "")
    others = sorted({f for f in formats if f and f != main and KIND_OF_FORMAT[f] == kind})
    problems = []
    for other in others:
        lines = [r.line for r, f in zip(rows, formats, strict=True) if f == other]
        problems.append(
            Problem(
                file,
                None,
                None,
                f"mixed formats: {_lines_are(lines)} {FORMAT_NAMES[other]}, the rest {FORMAT_NAMES[main]}; "
                "all were read",
                "write one format per file to be sure every row means what you think",
                "warning",
            )
        )
    return problems


def _lines_are(lines: list[int]) -> str:
    return f"line {lines[0]} is" if len(lines) == 1 else f"lines {_ranges(lines)} are"


def _ranges(numbers: list[int], limit: int = 8) -> str:
    """'1-3, 7, 9-10' for [1, 2, 3, 7, 9, 10]."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    text = ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans[:limit])
    return text + (", ..." if len(spans) > limit else "")


def _nonfinite(value: object, path: str = "") -> str | None:
    """The field path of the first NaN/Infinity inside a row, else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "value"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for key, item in items:
        sub = f"{path}{key}" if str(key).startswith("[") else f"{path}.{key}" if path else str(key)
        found = _nonfinite(item, sub)
        if found:
            return found
    return None


# ---- field helpers -------------------------------------------------------------------------


def _type(value: object) -> str:
    return {
        str: "text",
        bool: "true/false",
        int: "number",
        float: "number",
        list: "list",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _text(data: dict, key: str, what: str = "text") -> str:
    if data.get(key) is None:
        raise RowError(key, "is missing", f'every example needs "{key}" ({what})')
    value = data[key]
    if not isinstance(value, str):
        raise RowError(key, f"is {_type(value)}, not text", f'write "{key}" as a string')
    if not value.strip():
        raise RowError(key, "is empty", f'every example needs a non-empty "{key}" ({what})')
    return value


def _optional_text(data: dict, key: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowError(key, f"is {_type(value)}, not text", f'write "{key}" as a string, or leave it out')
    return value


def _content(value: object, field: str) -> str:
    if isinstance(value, list):  # OpenAI content blocks: [{"type": "text", "text": ...}]
        texts = [b.get("text") for b in value if isinstance(b, dict) and b.get("type") == "text"]
        if len(texts) == len(value) and all(isinstance(t, str) for t in texts):
            value = "".join(texts)
    if value is None:
        raise RowError(field, "is missing", "every message needs its text")
    if not isinstance(value, str):
        raise RowError(field, f"is {_type(value)}, not text", "write the message text as a string")
    if not value.strip():
        raise RowError(field, "is empty", "every message needs non-empty text (or remove the message)")
    return value


def messages_from(
    value: object, field: str, role_key: str = "role", content_key: str = "content"
) -> list[dict]:
    """A list of {"role", "content"} from a list of message objects (OpenAI or ShareGPT keys)."""
    if not isinstance(value, list) or not value:
        raise RowError(
            field,
            "is empty" if value == [] else f"is {_type(value)}, not a list of messages",
            f'write "{field}" as a list like [{{"{role_key}": "user", "{content_key}": "..."}}, ...]',
        )
    out = []
    for i, msg in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(msg, dict):
            raise RowError(
                where,
                f"is {_type(msg)}, not a message object",
                f'use {{"{role_key}": ..., "{content_key}": ...}}',
            )
        rkey = role_key if role_key in msg else ("from" if "from" in msg else "role")
        ckey = content_key if content_key in msg else ("value" if "value" in msg else "content")
        raw_role = msg.get(rkey)
        role = ROLE_ALIASES.get(raw_role.strip().lower()) if isinstance(raw_role, str) else None
        if role is None:
            raise RowError(
                f"{where}.{rkey}",
                f"role {raw_role!r} is not system, user or assistant",
                "use system/user/assistant (ShareGPT: system/human/gpt)",
            )
        out.append({"role": role, "content": _content(msg.get(ckey), f"{where}.{ckey}")})
    return out


def check_order(messages: list[dict], field: str, ends_with: str) -> None:
    """System first (optional), then user and assistant alternating, ending with `ends_with`."""
    start = 1 if messages[0]["role"] == "system" else 0
    if start == len(messages):
        raise RowError(field, "has only a system message", "add the user's message and the answer")
    expected = "user"
    for i in range(start, len(messages)):
        role = messages[i]["role"]
        if role == "system":
            raise RowError(
                f"{field}[{i}]",
                "a system message after the start",
                "put the system message first, or merge it into the user's message",
            )
        if role != expected:
            what = "the assistant speaks first" if i == start else f"two {role} turns in a row"
            raise RowError(
                f"{field}[{i}]",
                f"roles out of order: {what}",
                "alternate user and assistant, starting with the user (merge or remove the extra turn)",
            )
        expected = "assistant" if role == "user" else "user"
    if messages[-1]["role"] != ends_with:
        fix = (
            "add the assistant's answer or drop the last turn"
            if ends_with == "assistant"
            else "the prompt must end with the user's message; the answer goes in chosen/rejected/completion"
        )
        raise RowError(field, f"ends with a {messages[-1]['role']} turn, not {ends_with}", fix)


def _with_system(data: dict, messages: list[dict]) -> list[dict]:
    system = _optional_text(data, "system")
    if system.strip() and messages[0]["role"] != "system":
        return [{"role": "system", "content": system}, *messages]
    return messages


def prompt_from(value: object, field: str) -> list[dict]:
    """A prompt given as text, as Human:/Assistant: text, or as a message list."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(field, "is empty", f'every example needs a non-empty "{field}"')
        turns = chat_text.parse_hh(value)
        if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
            turns = turns[:-1]  # "...\n\nAssistant:" left open for the answer
        return turns or [{"role": "user", "content": value}]
    return messages_from(value, field)


def answer_from(value: object, field: str, prompt: list[dict]) -> list[dict]:
    """One assistant message from text or a message list (which may repeat the prompt first)."""
    if isinstance(value, str) or value is None:
        return [{"role": "assistant", "content": _content(value, field).strip()}]
    messages = messages_from(value, field)
    if len(messages) > len(prompt) and messages[: len(prompt)] == prompt:
        messages = messages[len(prompt) :]
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise RowError(
            field,
            "must be one assistant message",
            f'write "{field}" as the answer text, or [{{"role": "assistant", "content": "..."}}]',
        )
    return messages


# ---- one normalizer per format ---------------------------------------------------------------


def _alpaca(data: dict) -> dict:
    instruction = _text(data, "instruction", "the task")
    extra = _optional_text(data, "input")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [
        {"role": "user", "content": user},
        {"role": "assistant", "content": _text(data, "output", "the answer")},
    ]
    return {"messages": _with_system(data, messages)}


def _sharegpt(data: dict) -> dict:
    messages = _with_system(data, messages_from(data["conversations"], "conversations", "from", "value"))
    check_order(messages, "conversations", "assistant")
    return {"messages": messages}


def _messages(data: dict) -> dict:
    messages = _with_system(data, messages_from(data["messages"], "messages"))
    check_order(messages, "messages", "assistant")
    return {"messages": messages}


def _prompt_completion(data: dict) -> dict:
    if data.get("prompt") is None:
        raise RowError("prompt", "is missing", 'every example needs "prompt" and "completion"')
    prompt = _with_system(data, prompt_from(data["prompt"], "prompt"))
    messages = prompt + answer_from(data.get("completion"), "completion", prompt)
    check_order(messages, "prompt", "assistant")
    return {"messages": messages}


def _chat_text(parse) -> callable:
    def normalize_text(data: dict) -> dict:
        text = _text(data, "text", "the conversation")
        try:
            messages = parse(text)
        except ValueError as exc:
            raise RowError(
                "text", str(exc), "every turn needs its role header and its end-of-turn marker"
            ) from None
        messages = [
            {"role": ROLE_ALIASES.get(m["role"], m["role"]), "content": m["content"]} for m in messages
        ]
        messages = messages_from(messages, "text")
        check_order(messages, "text", "assistant")
        return {"messages": messages}

    return normalize_text


def _plain_text(data: dict) -> dict:
    raise RowError(
        "text",
        "is plain text with no chat turns (pretraining text is not supported)",
        "mark the turns with ChatML (<|im_start|>user ... <|im_end|>) or use instruction/output columns",
    )


def _dpo(data: dict) -> dict:
    for key in ("chosen", "rejected"):
        if data.get(key) is None:
            raise RowError(key, "is missing", 'every pair needs "chosen" and "rejected" answers')
    if data.get("prompt") not in (None, "", []):
        prompt = _with_system(data, prompt_from(data["prompt"], "prompt"))
        chosen = answer_from(data["chosen"], "chosen", prompt)
        rejected = answer_from(data["rejected"], "rejected", prompt)
    else:
        prompt, chosen, rejected = _implicit_prompt(data["chosen"], data["rejected"])
        prompt = _with_system(data, prompt)
    check_order(prompt, "prompt", "user")
    if chosen[0]["content"].strip() == rejected[0]["content"].strip():
        raise RowError("rejected", "is identical to chosen", "a pair teaches only when the answers differ")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _implicit_prompt(chosen: object, rejected: object) -> tuple[list, list, list]:
    """Split two full conversations into their shared prompt and the differing last answers."""
    convs = []
    for value, key in ((chosen, "chosen"), (rejected, "rejected")):
        if isinstance(value, str):
            turns = chat_text.parse_hh(value)
            if not turns:
                raise RowError(
                    "prompt",
                    "is missing",
                    'add a "prompt" field, or write chosen/rejected as '
                    '"\\n\\nHuman: ...\\n\\nAssistant: ..." conversations',
                )
            convs.append(messages_from(turns, key))
        else:
            convs.append(messages_from(value, key))
    a, b = convs
    shared = 0
    while shared < min(len(a), len(b)) - 1 and a[shared] == b[shared]:
        shared += 1
    for rest, key in ((a[shared:], "chosen"), (b[shared:], "rejected")):
        if len(rest) != 1 or rest[0]["role"] != "assistant" or shared == 0:
            raise RowError(
                key,
                "does not end in one assistant answer after a prompt shared with the other side",
                "both sides must repeat the same prompt turns and differ only in the last answer, "
                'or give the prompt in a "prompt" field',
            )
    return a[:shared], a[shared:], b[shared:]


def parse_label(value: object) -> bool:
    """KTO labels: true/false, "true"/"false", 1/0 (as numbers or text)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise RowError(
        "label",
        f"{value!r} is not true or false",
        "write true for a desirable answer and false for an undesirable one (1/0 also work)",
    )


def _kto(data: dict) -> dict:
    if data.get("prompt") is None:
        raise RowError("prompt", "is missing", 'every KTO example needs "prompt", "completion" and "label"')
    prompt = _with_system(data, prompt_from(data["prompt"], "prompt"))
    check_order(prompt, "prompt", "user")
    completion = answer_from(data.get("completion"), "completion", prompt)
    return {"prompt": prompt, "completion": completion, "label": parse_label(data.get("label"))}


NORMALIZERS = {
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
    "messages": _messages,
    "prompt_completion": _prompt_completion,
    "chatml": _chat_text(chat_text.parse_chatml),
    "llama3": _chat_text(chat_text.parse_llama3),
    "text": _plain_text,
    "dpo": _dpo,
    "kto": _kto,
}


# ---- method <-> kind -------------------------------------------------------------------------


def for_method(data: Normalized, method: str, file: str) -> Normalized:
    """Adapt normalized data to what `method` trains on, or explain why it cannot be.

    Preference pairs feed KTO (each pair -> one desirable + one undesirable example) and SFT
    (prompt + chosen); KTO feeds SFT (desirable examples); SFT data cannot feed preference methods.
    """
    want = kind_for_method(method)
    if not data.kind or want == data.kind:
        return data
    records, lines, note = _convert(data, want)
    if records is None:
        name = FORMAT_NAMES.get(data.format, data.format)
        need = "chosen/rejected pairs" if want == "preference" else "prompt/completion/label rows"
        problem = Problem(
            file,
            None,
            None,
            f"this file is {data.kind.upper()} data ({name}); {method.upper()} needs {need}",
            f"use a file like {EXAMPLES[want]}, or choose the method {_methods_for(data.kind)}",
        )
        return Normalized(data.format, want, [], [], [*data.problems, problem], data.rows_read)
    warning = Problem(file, None, None, note, "", "warning")
    return Normalized(data.format, want, records, lines, [*data.problems, warning], data.rows_read)


def _methods_for(kind: str) -> str:
    return " or ".join(
        m.upper() for m, k in METHOD_KINDS.items() if k == kind or (kind == "preference" and m == "kto")
    )


def _convert(data: Normalized, want: str) -> tuple[list | None, list, str]:
    pairs = list(zip(data.records, data.lines, strict=True))
    if data.kind == "preference" and want == "kto":
        records, lines = [], []
        for r, line in pairs:
            records += [
                {"prompt": r["prompt"], "completion": r["chosen"], "label": True},
                {"prompt": r["prompt"], "completion": r["rejected"], "label": False},
            ]
            lines += [line, line]
        return (
            records,
            lines,
            f"unpaired {len(pairs)} pairs into {len(records)} KTO examples (chosen: desirable)",
        )
    if data.kind == "preference" and want == "sft":
        records = [{"messages": r["prompt"] + r["chosen"]} for r, _ in pairs]
        return (
            records,
            [line for _, line in pairs],
            "SFT trains on the chosen answers; the rejected ones are unused",
        )
    if data.kind == "kto" and want == "sft":
        kept = [(r, line) for r, line in pairs if r["label"]]
        records = [{"messages": r["prompt"] + r["completion"]} for r, _ in kept]
        skipped = len(pairs) - len(kept)
        return (
            records,
            [line for _, line in kept],
            f"SFT trains on the {len(kept)} desirable examples; {skipped} undesirable ones are unused",
        )
    return None, [], ""
