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
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from studio.data import chat_text, fields
from studio.data.files import Problem, Row

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
EXAMPLES = {
    "sft": "sample_data/alpaca.jsonl",
    "preference": "sample_data/dpo.jsonl",
    "kto": "sample_data/kto.jsonl",
}


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
        except fields.RowError as err:
            result.problems += [
                Problem(file, row.line, e.field, e.message, e.fix, "error", row.unit) for e in err.errors
            ]
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
        raise fields.RowError(
            None,
            f"no known format (columns: {keys})",
            'use "instruction"/"output", "messages", "conversations", "prompt"/"completion", '
            '"chosen"/"rejected" or a ChatML "text"',
        )
    if KIND_OF_FORMAT[fmt] != kind:
        raise fields.RowError(
            None,
            f"is {FORMAT_NAMES[fmt]} but most of the file is {FORMAT_NAMES[main]} (lines {main_lines})",
            f"keep one kind of data per file: move the {FORMAT_NAMES[fmt]} rows to their own file",
        )
    bad = fields.nonfinite(data)
    if bad:
        raise fields.RowError(
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


# ---- one normalizer per format ---------------------------------------------------------------


def _alpaca(data: dict) -> dict:
    instruction, extra, output, _ = fields.gather(
        lambda: fields.text_field(data, "instruction", "the task"),
        lambda: fields.optional_text(data, "input"),
        lambda: fields.text_field(data, "output", "the answer"),
        lambda: fields.optional_text(data, "system"),
    )
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {"messages": fields.with_system(data, messages)}


def _sharegpt(data: dict) -> dict:
    messages, _ = fields.gather(
        lambda: fields.messages_from(data["conversations"], "conversations", "from", "value"),
        lambda: fields.optional_text(data, "system"),
    )
    messages = fields.with_system(data, messages)
    fields.check_order(messages, "conversations", "assistant")
    return {"messages": messages}


def _messages(data: dict) -> dict:
    messages, _ = fields.gather(
        lambda: fields.messages_from(data["messages"], "messages"),
        lambda: fields.optional_text(data, "system"),
    )
    messages = fields.with_system(data, messages)
    fields.check_order(messages, "messages", "assistant")
    return {"messages": messages}


def _prompt(data: dict, needs: str) -> list[dict]:
    if data.get("prompt") is None:
        raise fields.RowError("prompt", "is missing", needs)
    prompt, _ = fields.gather(
        lambda: fields.prompt_from(data["prompt"], "prompt"), lambda: fields.optional_text(data, "system")
    )
    return fields.with_system(data, prompt)


def _prompt_and_answers(data: dict, needs: str, *keys: str) -> tuple[list[dict], list[list[dict]]]:
    """The prompt and each answer, every problem of all of them raised together."""
    prompt, errors = fields.attempt(lambda: _prompt(data, needs))
    answers = []
    for key in keys:
        answer, failed = fields.attempt(lambda key=key: fields.answer_from(data.get(key), key, prompt or []))
        answers.append(answer)
        errors += failed
    fields.raise_all(errors)
    return prompt, answers


def _prompt_completion(data: dict) -> dict:
    needs = 'every example needs "prompt" and "completion"'
    prompt, (completion,) = _prompt_and_answers(data, needs, "completion")
    messages = prompt + completion
    fields.check_order(messages, "prompt", "assistant")
    return {"messages": messages}


def _chat_text(parse) -> callable:
    def normalize_text(data: dict) -> dict:
        text = fields.text_field(data, "text", "the conversation")
        try:
            messages = parse(text)
        except ValueError as exc:
            raise fields.RowError(
                "text", str(exc), "every turn needs its role header and its end-of-turn marker"
            ) from None
        messages = [
            {"role": fields.ROLE_ALIASES.get(m["role"], m["role"]), "content": m["content"]} for m in messages
        ]
        messages = fields.messages_from(messages, "text")
        fields.check_order(messages, "text", "assistant")
        return {"messages": messages}

    return normalize_text


def _plain_text(data: dict) -> dict:
    raise fields.RowError(
        "text",
        "is plain text with no chat turns (pretraining text is not supported)",
        "mark the turns with ChatML (<|im_start|>user ... <|im_end|>) or use instruction/output columns",
    )


def _dpo(data: dict) -> dict:
    needs = 'every pair needs "chosen" and "rejected" answers'
    fields.raise_all(
        [fields.RowError(k, "is missing", needs) for k in ("chosen", "rejected") if data.get(k) is None]
    )
    if data.get("prompt") not in (None, "", []):
        prompt, (chosen, rejected) = _prompt_and_answers(data, needs, "chosen", "rejected")
    else:
        prompt, chosen, rejected = _implicit_prompt(data["chosen"], data["rejected"])
        prompt = fields.with_system(data, prompt)
    fields.check_order(prompt, "prompt", "user")
    if chosen[0]["content"].strip() == rejected[0]["content"].strip():
        raise fields.RowError(
            "rejected", "is identical to chosen", "a pair teaches only when the answers differ"
        )
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _implicit_prompt(chosen: object, rejected: object) -> tuple[list, list, list]:
    """Split two full conversations into their shared prompt and the differing last answers."""
    convs = []
    for value, key in ((chosen, "chosen"), (rejected, "rejected")):
        if isinstance(value, str):
            turns = chat_text.parse_hh(value)
            if not turns:
                raise fields.RowError(
                    "prompt",
                    "is missing",
                    'add a "prompt" field, or write chosen/rejected as '
                    '"\\n\\nHuman: ...\\n\\nAssistant: ..." conversations',
                )
            convs.append(fields.messages_from(turns, key))
        else:
            convs.append(fields.messages_from(value, key))
    a, b = convs
    shared = 0
    while shared < min(len(a), len(b)) - 1 and a[shared] == b[shared]:
        shared += 1
    for rest, key in ((a[shared:], "chosen"), (b[shared:], "rejected")):
        if len(rest) != 1 or rest[0]["role"] != "assistant" or shared == 0:
            raise fields.RowError(
                key,
                "does not end in one assistant answer after a prompt shared with the other side",
                "both sides must repeat the same prompt turns and differ only in the last answer, "
                'or give the prompt in a "prompt" field',
            )
    return a[:shared], a[shared:], b[shared:]


def _kto(data: dict) -> dict:
    needs = 'every KTO example needs "prompt", "completion" and "label"'
    prompt, errors = fields.attempt(lambda: _prompt(data, needs))
    if prompt is not None:
        errors += fields.attempt(lambda: fields.check_order(prompt, "prompt", "user"))[1]
    completion, failed = fields.attempt(
        lambda: fields.answer_from(data.get("completion"), "completion", prompt or [])
    )
    label, failed_label = fields.attempt(lambda: fields.parse_label(data.get("label")))
    fields.raise_all(errors + failed + failed_label)
    return {"prompt": prompt, "completion": completion, "label": label}


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
        return Normalized(data.format, data.kind, [], [], [*data.problems, problem], data.rows_read)
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
