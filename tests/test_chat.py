"""Chat engine: streaming, A/B in one batch, stop, adapters (LoRA, DoRA merged), unload."""

from __future__ import annotations

import gc
import json
import threading
import weakref
from collections import deque
from pathlib import Path

import pytest
import torch

from studio.chat import adapters
from studio.chat import engine as chat

GREEDY = chat.GenSettings(temperature=0, max_new_tokens=12, repetition_penalty=1.0)
ASK = [{"role": "user", "content": "What is the capital of France?"}]
OTHER = [{"role": "user", "content": "Write a haiku about the sea. Summarize this text in one line."}]
TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj"]


def make_adapter(base: Path | str, out: Path, dora: bool = False, seed: int = 1, targets=TARGETS) -> Path:
    """Save a LoRA (or DoRA) adapter with random, non-zero A and B, so it changes the answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, use_dora=dora)
    peft = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_magnitude_vector" in name:  # else DoRA at init equals plain LoRA
                param.mul_(1 + 0.5 * torch.rand_like(param))
    peft.save_pretrained(out)
    return out


def last(stream):
    """The final step of a stream."""
    return deque(stream, maxlen=1)[0]


def plain_greedy(model, folder: Path | str, messages: list[dict], max_new_tokens: int) -> str:
    """What `generate` says greedily, without the engine (model: a base or a PeftModel)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> Path:
    """A runs folder: a LoRA run with a checkpoint, a DoRA run, and a run still training."""
    root = tmp_path_factory.mktemp("runs")
    make_adapter(tiny_model, root / "lora-run" / "adapter")
    make_adapter(tiny_model, root / "lora-run" / "checkpoints" / "checkpoint-5", seed=5)
    make_adapter(tiny_model, root / "dora-run" / "adapter", dora=True, seed=2)
    make_adapter(tiny_model, root / "busy.run" / "checkpoints" / "checkpoint-10", seed=3)
    return root


@pytest.fixture
def engine(tiny_model):
    torch.set_num_threads(1)
    engine = chat.ChatEngine()
    engine.load(str(tiny_model))
    yield engine
    engine.unload()


def count_forwards(*modules) -> list[int]:
    calls = [0]
    for module in modules:
        module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_stream_yields_growing_text_with_speed(engine):
    steps = list(engine.stream(ASK, None, chat.GenSettings(max_new_tokens=10, seed=3)))
    assert [s.tokens for s in steps] == list(range(1, 11))
    texts = [s.text for s in steps]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False)) and len(texts[-1]) > len(
        texts[0]
    )
    assert [s.finish for s in steps] == [None] * 9 + ["length"]
    assert steps[-1].tokens_per_s > 0 and steps[-1].elapsed >= steps[0].elapsed
    assert str(steps[-1]) == texts[-1]


def test_pair_runs_in_one_batch_and_equals_each_side_alone(engine, runs):
    lora = engine.add_adapter(runs / "lora-run")
    base_alone = last(engine.stream(ASK, None, GREEDY)).text
    lora_alone = last(engine.stream(OTHER, lora, GREEDY)).text
    assert base_alone != last(engine.stream(ASK, lora, GREEDY)).text  # the adapter matters
    loaded = engine._adapters  # any of the three models that can run a batch of rows
    forwards = count_forwards(loaded.peft, loaded.plain, loaded.lean.model)
    steps = list(engine.stream_pair(ASK, OTHER, None, lora, GREEDY))  # prompts of unequal length: padding
    assert forwards[0] == len(steps) == GREEDY.max_new_tokens  # ONE forward per step for both sides
    a, b = steps[-1]
    assert (a.text, b.text) == (base_alone, lora_alone)
    assert a.tokens == b.tokens == GREEDY.max_new_tokens


def test_each_side_stops_at_its_own_eos(engine, runs):
    lora = engine.add_adapter(runs / "lora-run")
    settings = chat.GenSettings(temperature=0, max_new_tokens=8, repetition_penalty=1.0)
    base_text = last(engine.stream(ASK, None, settings)).text
    lora_text = last(engine.stream(ASK, lora, settings)).text
    stop_word = next(ch for ch in base_text if ch not in lora_text)
    engine._eos.add(engine._tokenizer.convert_tokens_to_ids(engine._tokenizer.tokenize(stop_word))[0])
    a, b = last(engine.stream_pair(ASK, ASK, None, lora, settings))
    assert a.finish == "eos" and a.tokens < settings.max_new_tokens and base_text.startswith(a.text)
    assert (b.finish, b.text) == ("length", lora_text)


def test_stop_event_halts_within_a_token(engine):
    stop = threading.Event()
    threads_before = set(threading.enumerate())
    seen = []
    for reply in engine.stream(ASK, None, chat.GenSettings(max_new_tokens=400), stop):
        seen.append(reply)
        if len(seen) == 5:
            stop.set()
    assert seen[-1].finish == "stopped"
    assert seen[-1].tokens - 5 <= 1 and len(seen) <= 6
    started = [t for t in threading.enumerate() if t not in threads_before]
    assert started == []  # no generation thread left behind (others may end meanwhile)


def test_stop_from_another_thread_and_closing_the_stream(engine, runs):
    lora = engine.add_adapter(runs / "lora-run")
    stop = threading.Event()
    pair = engine.stream_pair(ASK, OTHER, None, lora, chat.GenSettings(max_new_tokens=400), stop)
    next(pair)
    setter = threading.Thread(target=stop.set)
    setter.start()
    setter.join()
    a, b = last(pair)
    assert a.finish == b.finish == "stopped" and a.tokens <= 3
    abandoned = engine.stream(ASK, None, GREEDY)  # the page went away: Gradio closes the generator
    next(abandoned)
    abandoned.close()
    assert last(engine.stream(ASK, None, GREEDY)).tokens == GREEDY.max_new_tokens


def test_base_with_adapters_loaded_equals_the_plain_base_model(engine, tiny_model, runs):
    from transformers import AutoModelForCausalLM

    engine.add_adapter(runs / "lora-run")
    engine.add_adapter(runs / "dora-run")
    plain = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    expected = plain_greedy(plain, tiny_model, ASK, GREEDY.max_new_tokens)
    assert last(engine.stream(ASK, None, GREEDY)).text == expected


def test_dora_is_merged_and_answers_like_unmerged_peft(engine, tiny_model, runs, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    unmerged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), runs / "dora-run/adapter"
    )
    expected = plain_greedy(unmerged.eval(), tiny_model, OTHER, GREEDY.max_new_tokens)
    dora = engine.add_adapter(runs / "dora-run")
    assert engine.serving(dora) == "DoRA merged"
    merged = engine._adapters.routes[dora].model
    shared = merged.model.embed_tokens.weight.data_ptr() == engine._model.model.embed_tokens.weight.data_ptr()
    assert (
        shared
        and merged.model.layers[0].self_attn.k_proj.weight
        is engine._adapters.params["model.layers.0.self_attn.k_proj.weight"]
    )
    assert last(engine.stream(OTHER, dora, GREEDY)).text == expected
    lora = engine.add_adapter(runs / "lora-run")
    a, b = last(engine.stream_pair(OTHER, ASK, dora, lora, GREEDY))  # two weight sets: two forwards
    assert (a.text, b.text) == (expected, last(engine.stream(ASK, lora, GREEDY)).text)

    engine.remove_adapter(dora)
    monkeypatch.setattr(adapters, "can_afford", lambda nbytes, device: False)
    slow = engine.add_adapter(runs / "dora-run")
    assert engine.serving(slow) == "DoRA unmerged (slow)"
    a, b = last(engine.stream_pair(OTHER, ASK, slow, lora, GREEDY))
    assert a.text == expected and b.text == last(engine.stream(ASK, lora, GREEDY)).text


def test_unload_frees_the_model(engine, runs):
    engine.add_adapter(runs / "lora-run")
    dora = engine.add_adapter(runs / "dora-run")
    loaded = engine._adapters
    refs = [weakref.ref(loaded.model), weakref.ref(loaded.peft), weakref.ref(loaded.routes[dora].model)]
    del loaded
    last(engine.stream(ASK, None, GREEDY))
    engine.unload()
    gc.collect()
    assert [ref() for ref in refs] == [None, None, None]
    assert not engine.loaded and engine.adapters == {}
    usage = chat.ChatEngine.memory()
    assert usage["rss_mb"] > 0 and ("accelerator_mb" in usage)
    with pytest.raises(ValueError, match="no base model is loaded"):
        next(engine.stream(ASK, None, GREEDY))


def test_unload_ends_open_streams(engine):
    stream = engine.stream(ASK, None, chat.GenSettings(max_new_tokens=100))
    next(stream)
    engine.unload()
    assert next(stream).finish == "unloaded"


def test_removing_the_last_adapter_mid_stream_keeps_the_base_answering(engine, runs):
    expected = last(engine.stream(ASK, None, GREEDY)).text
    lora = engine.add_adapter(runs / "lora-run")
    stream = engine.stream(ASK, None, GREEDY)
    next(stream)
    engine.remove_adapter(lora)
    assert engine._adapters.peft is None and engine.adapters == {}  # adapter layers taken out again
    assert last(stream).text == expected


def test_conversation_longer_than_the_model_reads_is_refused(engine):
    long = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 200}]
    with pytest.raises(ValueError, match=r"reads at most 512; start a new chat"):
        engine.stream(long, None, GREEDY)
    almost = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 22}]
    final = last(engine.stream(almost, None, chat.GenSettings(temperature=0, max_new_tokens=500)))
    assert (
        final.finish in ("eos", "length")
        and len(chat._prompt_ids(engine._tokenizer, almost, "")) + final.tokens <= 512
    )


def test_adapter_names_and_checks(engine, runs, tmp_path):
    assert engine.add_adapter(runs / "lora-run") == "lora-run"
    assert engine.add_adapter(runs / "lora-run" / "adapter") == "lora-run"  # same folder, same name
    checkpoint = runs / "lora-run" / "checkpoints" / "checkpoint-5"
    assert engine.add_adapter(checkpoint) == "lora-run-checkpoint-5"
    assert set(engine.adapters) == {"lora-run", "lora-run-checkpoint-5"}
    assert adapters.list_adapters(runs)[:3] == [
        runs / "busy.run/checkpoints/checkpoint-10",
        runs / "dora-run/adapter",
        runs / "lora-run/adapter",
    ]
    with pytest.raises(ValueError, match=r"no final adapter yet.*checkpoint-10"):
        engine.add_adapter(runs / "busy.run")
    assert engine.add_adapter(runs / "busy.run/checkpoints/checkpoint-10") == "busy_run-checkpoint-10"
    with pytest.raises(ValueError, match="holds no adapter"):
        engine.add_adapter(tmp_path)
    with pytest.raises(ValueError, match="is not loaded"):
        next(engine.stream(ASK, "nope", GREEDY))


def test_adapter_for_another_base_is_refused(engine, runs, tmp_path):
    from tests.support.tinymodel import build_tiny_model

    other = make_adapter(
        build_tiny_model(tmp_path / "wide-llama", hidden=64), tmp_path / "wide-run" / "adapter"
    )
    with pytest.raises(ValueError, match="trained on 'other-org/other-model'"):
        renamed = tmp_path / "renamed"
        renamed.mkdir()
        config = json.loads((runs / "lora-run/adapter/adapter_config.json").read_text())
        (renamed / "adapter_config.json").write_text(
            json.dumps({**config, "base_model_name_or_path": "other-org/other-model"})
        )
        engine.add_adapter(renamed)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": ""}))
    with pytest.raises(ValueError, match=r"does not match .* trained on another base"):
        engine.add_adapter(other)
    assert engine.adapters == {} and last(engine.stream(ASK, None, GREEDY)).tokens > 0


def test_sampling_is_seeded_per_side(engine, runs):
    lora = engine.add_adapter(runs / "lora-run")
    settings = chat.GenSettings(temperature=1.0, top_p=0.9, max_new_tokens=10, seed=7)
    alone = last(engine.stream(OTHER, lora, settings)).text
    assert last(engine.stream(OTHER, lora, settings)).text == alone
    a, b = last(engine.stream_pair(ASK, OTHER, None, lora, settings))
    assert b.text == alone  # the other side's draws do not shift this side's random stream
    other_seed = chat.GenSettings(temperature=1.0, top_p=0.9, max_new_tokens=10, seed=8)
    assert last(engine.stream(OTHER, lora, other_seed)).text != alone


def test_messages_settings_and_templates(engine, tiny_model_no_template):
    blocks = [{"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}]
    assert last(engine.stream(blocks, None, GREEDY)).text == last(engine.stream(ASK, None, GREEDY)).text
    with_system = chat.GenSettings(
        temperature=0, max_new_tokens=12, repetition_penalty=1.0, system_prompt="Be brief."
    )
    assert chat._prompt_ids(engine._tokenizer, ASK, "Be brief.") != chat._prompt_ids(
        engine._tokenizer, ASK, ""
    )
    assert last(engine.stream(ASK, None, with_system)).tokens > 0
    with pytest.raises(ValueError, match="top_p"):
        next(engine.stream(ASK, None, chat.GenSettings(top_p=0)))
    with pytest.raises(ValueError, match="must end with a user message"):
        next(engine.stream([{"role": "assistant", "content": "hi"}], None, GREEDY))
    with pytest.raises(ValueError, match="chat message 1"):
        next(engine.stream([{"content": "no role"}], None, GREEDY))
    engine.load(str(tiny_model_no_template))
    assert last(engine.stream(ASK, None, GREEDY)).tokens > 0


@pytest.mark.slow
def test_default_model_answers_paris_and_pairs_equal_alone(default_model, tmp_path):
    torch.set_num_threads(2)
    adapter = make_adapter(default_model, tmp_path / "real-run" / "adapter", targets=["q_proj", "v_proj"])
    engine = chat.get_engine(default_model)
    try:
        settings = chat.GenSettings(temperature=0, max_new_tokens=16, repetition_penalty=1.0)
        assert "Paris" in last(engine.stream(ASK, None, settings)).text
        lora = engine.add_adapter(adapter)
        question = [{"role": "user", "content": "List three fruits."}]
        base_alone = last(engine.stream(question, None, settings)).text
        lora_alone = last(engine.stream(ASK, lora, settings)).text
        assert lora_alone != last(engine.stream(ASK, None, settings)).text  # the adapter matters
        a, b = last(engine.stream_pair(question, ASK, None, lora, settings))
        assert (a.text, b.text) == (base_alone, lora_alone)
    finally:
        engine.unload()


@pytest.mark.slow
def test_cpu_dtype_follows_the_bf16_greedy_check(default_model):
    """bf16 is used on the CPU only if it says exactly what fp32 says (it does not, here)."""
    torch.set_num_threads(2)
    settings = chat.GenSettings(temperature=0, max_new_tokens=40, repetition_penalty=1.0)
    prompts = [
        [{"role": "user", "content": q}] for q in ("List three fruits.", "What is the capital of France?")
    ]
    answers = {}
    for dtype in ("float32", "bfloat16"):
        engine = chat.ChatEngine()
        engine.load(default_model, dtype=dtype)
        answers[dtype] = [last(engine.stream(p, None, settings)).text for p in prompts]
        engine.unload()
    assert "Paris" in answers["bfloat16"][1]
    device, auto = chat._device_and_dtype("auto")
    if device.type == "cpu":
        same = answers["float32"] == answers["bfloat16"]
        assert auto == (torch.bfloat16 if same else torch.float32)
