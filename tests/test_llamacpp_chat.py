"""Chat panes served by llama.cpp: the base written as a 16-bit GGUF and a PEFT LoRA converted to a
GGUF LoRA give the logits the PyTorch model gives; the engine's own loop drives the contexts (same
sampler and seeds, stop, contexts lent back); DoRA and an absent binding fall back to PyTorch, and
each pane says which path serves it. Needs the binding (`make install-dev` builds it)."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
import pytest
import torch

from studio.chat import llamacpp
from studio.chat.engine import ChatEngine, GenSettings
from tests.test_llamacpp_path import _random_lora

ASK = [{"role": "user", "content": "Name three colours."}]


def _last(stream):
    return deque(stream, maxlen=1)[0]


@pytest.fixture(scope="module")
def tiny_pair(tiny_model, tmp_path_factory):
    """A random LoRA of the tiny model, and a DoRA one."""
    folder = tmp_path_factory.mktemp("adapters")
    return _random_lora(str(tiny_model), folder / "lora"), _random_lora(
        str(tiny_model), folder / "dora", use_dora=True
    )


def test_llama_cpp_logits_match_pytorch_for_the_base_and_a_lora(tiny_model, tiny_pair):
    from peft import PeftModel

    from studio import models

    lora, _ = tiny_pair
    engine = ChatEngine()
    engine.load(str(tiny_model), dtype="float32", llama_cpp=True)
    name = engine.add_adapter(lora)
    assert engine.path(None) == engine.path(name) == llamacpp.FASTEST
    ids = engine.prompt_ids(ASK)
    base = models.load_model(str(tiny_model)).eval()
    tuned = PeftModel.from_pretrained(models.load_model(str(tiny_model)), str(lora)).eval()
    for adapter, model in ((None, base), (name, tuned)):
        context = engine._llama.borrow(adapter)
        try:
            ours = context.prefill(ids)
            with torch.inference_mode():
                theirs = model(torch.tensor([ids])).logits[0, -1].numpy()
            # 16-bit weights: close, not equal; a wrong q/k order or LoRA scale is off by far more
            assert np.abs(ours - theirs).max() < 0.02 * np.abs(theirs).max(), adapter
            step = context.feed(int(theirs.argmax()))
            with torch.inference_mode():
                theirs = model(torch.tensor([[*ids, int(theirs.argmax())]])).logits[0, -1].numpy()
            assert np.abs(step - theirs).max() < 0.02 * np.abs(theirs).max(), adapter
        finally:
            context.close()
    with torch.inference_mode():
        lora_shift = np.abs(
            tuned(torch.tensor([ids])).logits[0, -1].numpy() - base(torch.tensor([ids])).logits[0, -1].numpy()
        )
    assert lora_shift.max() > 0.1 * np.abs(theirs).max()  # the LoRA matters: the check above could tell
    engine.unload()


def test_streams_on_llama_cpp_keep_seeds_stop_and_lend_contexts_back(tiny_model, tiny_pair):
    lora, dora = tiny_pair
    engine = ChatEngine()
    engine.load(str(tiny_model), dtype="float32", llama_cpp=True)
    lora_name, dora_name = engine.add_adapter(lora), engine.add_adapter(dora)
    assert engine.path(dora_name) == llamacpp.PathChoice(llamacpp.TORCH, "DoRA adapters run on PyTorch only")
    sampled = GenSettings(temperature=0.9, top_p=0.95, max_new_tokens=12, seed=7)
    first = _last(engine.stream(ASK, lora_name, sampled))
    again = _last(engine.stream(ASK, lora_name, sampled))
    other = _last(
        engine.stream(ASK, lora_name, GenSettings(temperature=0.9, top_p=0.95, max_new_tokens=12, seed=8))
    )
    assert first.text and first.text == again.text and first.tokens == 12 and first.finish == "length"
    assert other.text != first.text  # the seed matters
    # A/B across paths: the LoRA side on llama.cpp, the DoRA side on PyTorch, each as it answers alone
    a, b = _last(engine.stream_pair(ASK, ASK, lora_name, dora_name, sampled))
    assert a.text == first.text and b.text == _last(engine.stream(ASK, dora_name, sampled)).text
    stop = threading.Event()
    stream = engine.stream(ASK, None, GenSettings(max_new_tokens=200), stop)
    next(stream), next(stream)
    assert sum(map(len, engine._llama._idle.values())) <= 2 + 1  # one context is lent out
    lent = sum(map(len, engine._llama._idle.values()))
    stop.set()
    stopped = _last(stream)
    assert stopped.finish == "stopped" and stopped.tokens <= 2
    assert sum(map(len, engine._llama._idle.values())) == lent + 1  # given back
    abandoned = engine.stream(ASK, lora_name, GenSettings(max_new_tokens=200))
    next(abandoned)
    abandoned.close()  # the page went away
    assert engine._llama._idle[lora_name]
    from studio.ui.chat_tab import paths_text

    assert paths_text(engine, (None, dora_name)) == (
        "Model A answers with **llama.cpp** (fastest on this CPU) · "
        "Model B answers with **PyTorch** (DoRA adapters run on PyTorch only)"
    )
    engine.remove_adapter(lora_name)
    assert engine.path(lora_name).path == llamacpp.TORCH
    engine.unload()
    assert engine.path(None).reason == "no model is loaded"


def test_without_the_binding_chat_says_pytorch_and_why(tiny_model, monkeypatch):
    monkeypatch.setenv("STUDIO_CHAT_PATH", "pytorch")
    engine = ChatEngine()
    engine.load(str(tiny_model), dtype="float32", llama_cpp=True)
    assert engine.path(None).label() == "PyTorch (STUDIO_CHAT_PATH=pytorch asks for the PyTorch engine)"
    assert _last(engine.stream(ASK, None, GenSettings(max_new_tokens=4))).tokens == 4
    engine.unload()
