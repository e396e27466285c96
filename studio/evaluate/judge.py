"""The pairwise judge: a model shown a question and two answers says which is better.

Two kinds of judge: any model the studio can load (answering on the chat engine, greedily), or any
OpenAI-compatible endpoint (`POST <url>/chat/completions`, e.g. a local vLLM or llama.cpp server or
a hosted API) with a URL and a key. The key is sent in the Authorization header and never written
to disk. Every prompt is judged in both orders by the caller (stats.both_orders); this module
fills the judging prompt, asks, and reads the verdict. Knows nothing about files or the UI.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

_VERDICT = re.compile(r"\[\[\s*(1|2|tie)\s*\]\]", re.IGNORECASE)
_LOOSE = re.compile(r"\b(?:answer|response|assistant)\s*#?\s*([12])\b", re.IGNORECASE)
JUDGE_MAX_TOKENS = 64


def is_url(spec: str) -> bool:
    return spec.strip().lower().startswith(("http://", "https://"))


def fill(template: str, question: str, answer_1: str, answer_2: str) -> str:
    """The judging prompt with its placeholders replaced (no str.format: answers may hold braces)."""
    return (
        template.replace("{question}", question)
        .replace("{answer_1}", answer_1)
        .replace("{answer_2}", answer_2)
    )


def parse(text: str) -> tuple[str, bool]:
    """("1" | "2" | "tie", whether the verdict was given in the asked form).

    "[[1]]" / "[[2]]" / "[[tie]]" first; else the first "Answer 1/2" named; else a tie (unreadable).

    >>> parse("Answer 2 is clearer. [[2]]"), parse("I prefer answer 1."), parse("hmm")
    (('2', True), ('1', False), ('tie', False))
    """
    found = _VERDICT.search(text or "")
    if found:
        return found[1].lower(), True
    loose = _LOOSE.search(text or "")
    return (loose[1], False) if loose else ("tie", False)


def to_model(choice: str, a_first: bool) -> str:
    """A verdict about positions ("1"/"2"/"tie") as one about models ("A"/"B"/"tie")."""
    if choice == "tie":
        return "tie"
    first, second = ("A", "B") if a_first else ("B", "A")
    return first if choice == "1" else second


@dataclass
class EndpointJudge:
    """An OpenAI-compatible chat-completions endpoint. url: the API root (".../v1") or the full
    ".../chat/completions" route."""

    url: str
    key: str = ""
    model: str = ""
    seed: int = 0
    timeout_s: float = 120.0

    @property
    def label(self) -> str:
        # no URL: the label reaches the model card, and a local address is nobody's business
        return f"{self.model or 'the served model'} (OpenAI-compatible endpoint)"

    def ask(self, texts: list[str], stop: threading.Event | None = None) -> list[str]:
        """One greedy, seeded answer per text, through the studio's OpenAI-compatible client (the
        same one that talks to `python -m studio serve`)."""
        from studio.serve import client

        out = []
        for text in texts:
            if stop is not None and stop.is_set():
                break
            messages = [{"role": "user", "content": text}]
            settings = {"temperature": 0, "max_tokens": JUDGE_MAX_TOKENS, "seed": self.seed}
            try:
                out.append(
                    client.complete(
                        self.url,
                        self.key or None,
                        self.model or "default",
                        messages,
                        self.timeout_s,
                        **settings,
                    )
                )
            except ValueError as exc:  # EndpointError, or an answer that is not JSON
                raise ValueError(f"judge: {exc}") from None
        return out


@dataclass
class ModelJudge:
    """A model loaded on a chat engine (its base weights, no adapter), answering greedily."""

    engine: object
    spec: str
    seed: int = 0

    @property
    def label(self) -> str:
        return Path(self.spec).name if Path(self.spec).expanduser().exists() else self.spec

    def ask(self, texts: list[str], stop: threading.Event | None = None) -> list[str]:
        from studio.chat.engine import GenSettings

        settings = GenSettings(
            temperature=0.0, max_new_tokens=JUDGE_MAX_TOKENS, repetition_penalty=1.0, seed=self.seed
        )
        requests = [([{"role": "user", "content": text}], None) for text in texts]
        last = deque(self.engine.stream_batch(requests, settings, stop), maxlen=1)  # decode to the end
        replies = last[0] if last else ()
        if any(r.finish in ("stopped", "unloaded") for r in replies):
            return []
        return [r.text for r in replies]
