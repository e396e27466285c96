"""On the real default model: the adapter from the quick plan's sample run answers differently from the
base in the A/B view, and the base side of the pair is exactly the base model's own answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.chat import engine as chat

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_tuned_adapter_answers_differently_from_the_base_in_ab(default_model, default_tuned_run):
    prompts = [
        p for p in (ROOT / "sample_data" / "heldout_prompts.txt").read_text().splitlines() if p.strip()
    ]
    engine = chat.ChatEngine()
    engine.load(default_model)
    adapter = engine.add_adapter(default_tuned_run)  # the run folder: its adapter/ is found
    settings = chat.GenSettings(temperature=0.0, max_new_tokens=24, repetition_penalty=1.0)
    differ = 0
    try:
        for prompt in prompts[:3]:
            messages = [{"role": "user", "content": prompt}]
            *_, (base, tuned) = engine.stream_pair(messages, messages, None, adapter, settings)
            *_, (alone,) = ((reply,) for reply in engine.stream(messages, None, settings))
            assert base.text == alone.text  # the base side is the base model, adapter off
            assert base.text and tuned.text
            differ += base.text != tuned.text
    finally:
        engine.unload()
    assert differ >= 2, "the tuned adapter should change most answers"
