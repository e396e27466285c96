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


def test_llama_cpp_panes_answer_as_pytorch_does_and_keep_the_tune(default_model, default_tuned_run):
    """The fast CPU path serves the same model: greedy answers equal the PyTorch engine's for the
    first 32 tokens on the five probe prompts (measured: all five), and the tuned adapter, converted
    to a GGUF LoRA, still answers in the data's style."""
    from studio.chat import llamacpp

    prompts = [
        p for p in (ROOT / "sample_data" / "heldout_prompts.txt").read_text().splitlines() if p.strip()
    ][:5]
    fast, slow = chat.ChatEngine(), chat.ChatEngine()
    fast.load(default_model, llama_cpp=True)
    slow.load(default_model)
    adapter = fast.add_adapter(default_tuned_run)
    assert fast.path(None) == fast.path(adapter) == llamacpp.FASTEST
    settings = chat.GenSettings(temperature=0.0, max_new_tokens=32, repetition_penalty=1.0)
    same, styled = 0, 0
    try:
        for prompt in prompts:
            messages = [{"role": "user", "content": prompt}]
            *_, (base, tuned) = fast.stream_pair(messages, messages, None, adapter, settings)
            *_, (reference,) = ((reply,) for reply in slow.stream(messages, None, settings))
            same += base.text == reference.text
            styled += tuned.text.lstrip().startswith("Short answer:")
    finally:
        fast.unload()
        slow.unload()
    assert same == len(prompts), f"llama.cpp's greedy text left PyTorch's on {len(prompts) - same} prompts"
    assert styled >= 4, f"only {styled}/5 tuned answers on llama.cpp are in the data's style"
