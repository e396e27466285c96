"""Checks on one row's fields: text fields, message lists, role order, KTO labels, NaN.

Every check raises `RowError` naming the field (in the input's own terms, e.g.
"conversations[2].value"), what is wrong and the fix; `gather` runs a row's independent checks
and raises `RowErrors` listing every failure, so a row with several problems names all of them.
`formats` turns each into a Problem with the file and line. Knows nothing about files, formats as
a whole, tokenizers or the UI.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from studio.data import chat_text

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


class RowError(ValueError):
    """What is wrong with one row: the field, the problem and the fix."""

    def __init__(self, field: str | None, message: str, fix: str):
        super().__init__(message)
        self.field, self.message, self.fix = field, message, fix

    @property
    def errors(self) -> list[RowError]:
        return [self]


class RowErrors(RowError):
    """Several independent problems of one row (the first one doubles as the message)."""

    def __init__(self, errors: list[RowError]):
        first = errors[0]
        super().__init__(first.field, first.message, first.fix)
        self._errors = errors

    @property
    def errors(self) -> list[RowError]:
        return self._errors


def gather(*checks: Callable[[], object]) -> list:
    """Run every check of a row and return their results; when any fail, raise one `RowErrors`
    listing every failure (a check that depends on another belongs after `gather`, not in it).

    >>> gather(lambda: 1, lambda: "a")
    [1, 'a']
    """
    results, errors = [], []
    for check in checks:  # try/except inline, not `attempt`: this runs for every field of every row
        try:
            results.append(check())
        except RowError as err:
            results.append(None)
            errors += err.errors
    if errors:
        raise_all(errors)
    return results


def attempt(check: Callable[[], object]) -> tuple[object, list[RowError]]:
    """(the check's result, []) or (None, its errors): for checks that later ones depend on."""
    try:
        return check(), []
    except RowError as err:
        return None, err.errors


def raise_all(errors: list[RowError]) -> None:
    """Raise the row's errors as one exception (nothing when the list is empty)."""
    if errors:
        raise errors[0] if len(errors) == 1 else RowErrors(errors)


def nonfinite(value: object, path: str = "") -> str | None:
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
        found = nonfinite(item, sub)
        if found:
            return found
    return None


def type_name(value: object) -> str:
    return {
        str: "text",
        bool: "true/false",
        int: "number",
        float: "number",
        list: "list",
        dict: "object",
    }.get(type(value), type(value).__name__)


def text_field(data: dict, key: str, what: str = "text") -> str:
    if data.get(key) is None:
        raise RowError(key, "is missing", f'every example needs "{key}" ({what})')
    value = data[key]
    if not isinstance(value, str):
        raise RowError(key, f"is {type_name(value)}, not text", f'write "{key}" as a string')
    if not value.strip():
        raise RowError(key, "is empty", f'every example needs a non-empty "{key}" ({what})')
    return value


def optional_text(data: dict, key: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowError(key, f"is {type_name(value)}, not text", f'write "{key}" as a string, or leave it out')
    return value


def content_text(value: object, field: str) -> str:
    if isinstance(value, list):  # OpenAI content blocks: [{"type": "text", "text": ...}]
        texts = [b.get("text") for b in value if isinstance(b, dict) and b.get("type") == "text"]
        if len(texts) == len(value) and all(isinstance(t, str) for t in texts):
            value = "".join(texts)
    if value is None:
        raise RowError(field, "is missing", "every message needs its text")
    if not isinstance(value, str):
        raise RowError(field, f"is {type_name(value)}, not text", "write the message text as a string")
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
            "is empty" if value == [] else f"is {type_name(value)}, not a list of messages",
            f'write "{field}" as a list like [{{"{role_key}": "user", "{content_key}": "..."}}, ...]',
        )
    return gather(
        *(_message_check(msg, f"{field}[{i}]", role_key, content_key) for i, msg in enumerate(value))
    )


def _message_check(msg: object, where: str, role_key: str, content_key: str) -> Callable[[], dict]:
    def check() -> dict:
        if not isinstance(msg, dict):
            raise RowError(
                where,
                f"is {type_name(msg)}, not a message object",
                f'use {{"{role_key}": ..., "{content_key}": ...}}',
            )
        rkey = role_key if role_key in msg else ("from" if "from" in msg else "role")
        ckey = content_key if content_key in msg else ("value" if "value" in msg else "content")
        role, content = gather(
            lambda: _role(msg.get(rkey), f"{where}.{rkey}"),
            lambda: content_text(msg.get(ckey), f"{where}.{ckey}"),
        )
        return {"role": role, "content": content}

    return check


def _role(raw_role: object, field: str) -> str:
    role = ROLE_ALIASES.get(raw_role.strip().lower()) if isinstance(raw_role, str) else None
    if role is None:
        raise RowError(
            field,
            f"role {raw_role!r} is not system, user or assistant",
            "use system/user/assistant (ShareGPT: system/human/gpt)",
        )
    return role


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


def with_system(data: dict, messages: list[dict]) -> list[dict]:
    system = optional_text(data, "system")
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
        return [{"role": "assistant", "content": content_text(value, field).strip()}]
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
