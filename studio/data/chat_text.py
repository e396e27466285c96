"""Chat conversations written as text: ChatML, Llama 3 and Anthropic-HH "Human:/Assistant:".

Holds both directions side by side so they stay each other's inverse: the Jinja chat templates
the studio offers (`TEMPLATES`: chatml, llama3, alpaca) and the parsers that turn ChatML and
Llama 3 text back into messages (render -> parse gives the same messages). Knows nothing about
files, tokenizers or trainers.
"""

from __future__ import annotations

import re

CHATML_START = "<|im_start|>"
LLAMA3_HEADER = "<|start_header_id|>"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token if bos_token == '<|begin_of_text|>' else '' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
ALPACA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% else %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)
TEMPLATES = {"chatml": CHATML_TEMPLATE, "llama3": LLAMA3_TEMPLATE, "alpaca": ALPACA_TEMPLATE}

_CHATML_TURN = re.compile(r"<\|im_start\|>([^\n<]*)\n(.*?)<\|im_end\|>", re.S)
_LLAMA3_TURN = re.compile(r"<\|start_header_id\|>(.*?)<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.S)
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_FILLER = ("<|begin_of_text|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<s>")


def _parse(text: str, turn: re.Pattern, start: str, name: str) -> list[dict]:
    messages, pos = [], 0
    for match in turn.finditer(text):
        _check_gap(text[pos : match.start()], pos, start, name)
        messages.append({"role": match.group(1).strip(), "content": match.group(2)})
        pos = match.end()
    _check_gap(text[pos:], pos, start, name)
    if not messages:
        raise ValueError(f"has no complete {name} turn")
    return messages


def _check_gap(gap: str, pos: int, start: str, name: str) -> None:
    for filler in _FILLER:
        gap = gap.replace(filler, "")
    if start in gap:
        raise ValueError(f"a {name} turn at character {pos + gap.index(start)} is not closed")
    if gap.strip():
        raise ValueError(f"text outside the {name} turns at character {pos}: {gap.strip()[:40]!r}")


def parse_chatml(text: str) -> list[dict]:
    """Messages of a ChatML conversation.

    >>> parse_chatml("<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>\\n")
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]
    """
    return _parse(text, _CHATML_TURN, CHATML_START, "ChatML")


def parse_llama3(text: str) -> list[dict]:
    """Messages of a Llama 3 chat text (<|start_header_id|>role<|end_header_id|>\\n\\n...<|eot_id|>)."""
    return _parse(text, _LLAMA3_TURN, LLAMA3_HEADER, "Llama 3")


def parse_hh(text: str) -> list[dict]:
    """Turns of an Anthropic-HH style text; [] when it has no Human:/Assistant: markers.

    >>> parse_hh("\\n\\nHuman: Hi\\n\\nAssistant: Hello!")
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]
    """
    matches = list(_HH_TURN.finditer(text))
    if not matches or text[: matches[0].start()].strip():
        return []
    turns = []
    for match, after in zip(matches, [*matches[1:], None], strict=True):
        content = text[match.end() : after.start() if after else len(text)].strip()
        turns.append({"role": "user" if match.group(1) == "Human" else "assistant", "content": content})
    return turns
