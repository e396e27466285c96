"""What one answer asks for and how its tokens are chosen: sampling settings (`GenSettings`), the
growing answer (`Reply`), a conversation turned into prompt ids with the model's chat template,
the device and dtype chat runs in, and picking the next token (repetition penalty, greedy or
temperature + top-p from a seeded generator), and a row's picked tokens turned into its growing
text (`_Row`, `_advance`). Knows nothing about batches, adapters, engines or the UI.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenSettings:
    """Sampling settings, shared by both sides of an A/B chat. temperature 0 means greedy."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    repetition_penalty: float = 1.1
    seed: int = 0
    system_prompt: str = ""

    def check(self) -> GenSettings:
        problems = []
        if not 0 <= self.temperature <= 5:
            problems.append(f"temperature {self.temperature} must be between 0 (greedy) and 5")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p {self.top_p} must be above 0 and at most 1")
        if not 1 <= self.max_new_tokens <= 8192:
            problems.append(f"max_new_tokens {self.max_new_tokens} must be between 1 and 8192")
        if not 0.5 <= self.repetition_penalty <= 3:
            problems.append(
                f"repetition_penalty {self.repetition_penalty} must be between 0.5 and 3 (1 = off)"
            )
        if problems:
            raise ValueError("chat settings: " + "; ".join(problems))
        return self


@dataclass
class Reply:
    """One side's answer so far. `finish` is None while it grows, then eos|length|stopped|unloaded."""

    text: str = ""
    tokens: int = 0
    elapsed: float = 0.0  # seconds since the request started, prompt reading included
    finish: str | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed if self.elapsed > 0 else 0.0

    def __str__(self) -> str:
        return self.text


def _text(content) -> str:
    """Message content as plain text; Gradio 6 may send a list of blocks instead of a string."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, list):
        return "".join(_text(block) for block in content if not isinstance(block, dict) or "text" in block)
    return "" if content is None else str(content)


def _prompt_ids(tokenizer, messages: list[dict], system_prompt: str) -> list[int]:
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise ValueError(
                f"chat message {i + 1}: needs a 'role' of system, user or assistant and a 'content'; got {message!r}"
            )
        turns.append({"role": message["role"], "content": _text(message.get("content"))})
    if system_prompt.strip() and not (turns and turns[0]["role"] == "system"):
        turns.insert(0, {"role": "system", "content": system_prompt.strip()})
    if not turns or turns[-1]["role"] != "user":
        raise ValueError("chat: the conversation must end with a user message for the model to answer")
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    else:  # a base model without a template: a plain transcript is the best it can follow
        text = "".join(f"{t['role'].capitalize()}: {t['content']}\n" for t in turns) + "Assistant:"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _device_and_dtype(dtype: str):
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        auto = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        auto = torch.float32  # bf16 greedy text drifts from fp32 here: see the module docstring
    choices = {"auto": auto, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in choices:
        raise ValueError(f"chat dtype {dtype!r} is unknown: use one of {', '.join(choices)}")
    if (
        choices[dtype] == torch.bfloat16
        and device.type == "cpu"
        and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    ):
        raise ValueError("this CPU has no native bfloat16: use dtype 'float32' (or 'auto')")
    return device, choices[dtype]


def _pick(logits, seen: set[int], settings: GenSettings, generator) -> int:
    """Next token for one row: repetition penalty, then greedy or temperature + top-p sampling."""
    import torch

    if settings.repetition_penalty != 1.0 and seen:
        index = torch.tensor(sorted(seen))
        picked = logits[index]
        penalty = settings.repetition_penalty
        logits[index] = torch.where(picked > 0, picked / penalty, picked * penalty)
    if settings.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / settings.temperature, dim=-1)
    if settings.top_p < 1:
        ordered, order = probs.sort(descending=True)
        ordered = ordered * ((ordered.cumsum(0) - ordered) < settings.top_p)  # the head that reaches top_p
        return int(order[torch.multinomial(ordered, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class _Row:
    prompt: list[int]
    generator: object
    tokens: list[int] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)  # prompt + answer tokens, for the repetition penalty
    reply: Reply = field(default_factory=Reply)
    prefix: int = 0  # incremental detokenization: tokens[prefix:read] were decoded last time
    read: int = 0


def _advance(row: _Row, tokenizer, eos: frozenset, finish: str | None, limit: int, now: float) -> None:
    """Take in the token `_step` just picked for a row: EOS, length limit, or more text."""
    reply = row.reply
    if reply.finish is not None:
        return
    if finish is None and reply.tokens < len(row.tokens):  # _step appended a token
        token = row.tokens[-1]
        if token in eos:
            row.tokens.pop()
            finish = "eos"
        else:
            reply.tokens = len(row.tokens)
            reply.text += _new_text(row, tokenizer)
            if reply.tokens >= limit:
                finish = "length"
    if finish is not None:
        reply.text = tokenizer.decode(row.tokens, skip_special_tokens=True)
    reply.elapsed, reply.finish = now, finish


def _new_text(row: _Row, tokenizer) -> str:
    """The text the newest token adds, decoding only a short window (not the whole answer per token).

    Decodes tokens[prefix:] and tokens[prefix:read] and returns what the new token appended; the
    window keeps one token of context so tokenizers that drop a leading space stay right. Waits
    (returns "") while a multi-byte character is incomplete. The final text is decoded whole.
    """
    before = tokenizer.decode(row.tokens[row.prefix : row.read], skip_special_tokens=True)
    after = tokenizer.decode(row.tokens[row.prefix :], skip_special_tokens=True)
    if len(after) <= len(before) or after.endswith("\ufffd"):
        return ""
    row.prefix, row.read = row.read, len(row.tokens)
    return after[len(before) :]
