"""Every fast path gives the same answers as the plain one.

The chat engine's own decode loop (KV cache, left padding) == `model.generate`, greedy; a batched
A/B pair == each side alone; the data layer's batch tokenization == one record at a time and ==
`apply_chat_template(tokenize=True)`; and the benchmark harness itself (ratios, interleaving,
the GPU bench's refusal without CUDA).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from studio import models
from studio.chat.engine import ChatEngine, GenSettings
from studio.data import templates

GREEDY = GenSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=24)
PROMPTS = ["What is the capital of France?", "Write a haiku about the sea, please, in three lines."]
RECORDS = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]},
    {
        "messages": [
            {"role": "system", "content": "Answer briefly and politely."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
            {"role": "user", "content": "And of Spain?"},
            {"role": "assistant", "content": "Madrid. ¿Algo más? 🙂"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Summarize: " + "waves " * 80},
            {"role": "assistant", "content": "Waves."},
        ]
    },
]


@pytest.fixture(scope="module")
def lively_model(tiny_model, tmp_path_factory):
    """The tiny model with large random weights: greedy text varies (the plain one repeats a newline)."""
    folder = tmp_path_factory.mktemp("lively") / "lively-llama"
    model = models.load_model(str(tiny_model))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(folder)
    models.load_tokenizer(str(tiny_model)).save_pretrained(folder)
    return folder


def _generate_text(model, tokenizer, prompt: str, max_new: int) -> str:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def _answer(engine: ChatEngine, prompt: str, adapter=None, settings: GenSettings = GREEDY) -> str:
    return list(engine.stream([{"role": "user", "content": prompt}], adapter, settings))[-1].text


def _check_engine_equals_generate(spec: str, max_new: int) -> None:
    engine = ChatEngine()
    engine.load(spec, dtype="float32")
    model = models.load_model(spec, dtype=torch.float32).eval()
    tokenizer = models.load_tokenizer(spec)
    settings = GenSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=max_new)
    for prompt in PROMPTS:
        expected = _generate_text(model, tokenizer, prompt, max_new)
        assert len(set(expected)) > 3, f"generate repeats itself ({expected!r}): the comparison proves little"
        assert _answer(engine, prompt, settings=settings) == expected, prompt


def test_engine_greedy_equals_generate_tiny(lively_model):
    _check_engine_equals_generate(str(lively_model), 24)


@pytest.mark.slow
def test_engine_greedy_equals_generate_default_model(default_model):
    _check_engine_equals_generate(default_model, 32)


def test_padded_batch_of_unequal_prompts_equals_each_alone(lively_model):
    """Rows of different lengths go through the preallocated left-padded mask: same text as alone."""
    engine = ChatEngine()
    engine.load(str(lively_model), dtype="float32")
    prompts = ["Hi", "Write a haiku about the sea, please, in three lines.", PROMPTS[0]]
    requests = [([{"role": "user", "content": p}], None) for p in prompts]
    together = [r.text for r in list(engine.stream_batch(requests, GREEDY))[-1]]
    assert together == [_answer(engine, p) for p in prompts]
    assert len(set(together)) == 3


def test_incremental_detokenization_equals_decoding_the_whole_answer(tiny_model):
    """The engine decodes a short window per token; the text it shows equals decoding everything."""
    from studio.chat.decoding import _new_text, _Row

    tokenizer = models.load_tokenizer(str(tiny_model))
    text = "Madrid. ¿Algo más? 🙂 Naïve café —  spaced\n\nnew line, 北京 and done."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    row, shown, waited = _Row(prompt=[], generator=None), "", 0
    for i, token in enumerate(ids):
        row.tokens.append(token)
        piece = _new_text(row, tokenizer)
        shown += piece
        whole = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        if whole.endswith("\ufffd"):
            waited += 1
            assert whole.startswith(shown), (i, shown, whole)
        else:
            assert shown == whole, (i, shown, whole)
    assert shown == text
    assert waited > 0, "no multi-byte character was split across tokens: the test proves less"


def _random_adapter(spec: str, folder):
    """A LoRA adapter whose weights are NOT zero, so the adapter side really answers differently."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False
    )
    model = get_peft_model(models.load_model(spec), config)
    model.save_pretrained(folder)
    return folder


def test_batched_pair_equals_each_side_alone(lively_model, tmp_path):
    engine = ChatEngine()
    engine.load(str(lively_model), dtype="float32")
    name = engine.add_adapter(_random_adapter(str(lively_model), tmp_path / "adapter"))
    short, long = [{"role": "user", "content": PROMPTS[0]}], [{"role": "user", "content": PROMPTS[1]}]
    # prompts of different lengths: the shorter one is left-padded in the batch
    a, b = list(engine.stream_pair(short, long, None, name, GREEDY))[-1]
    alone_a = _answer(engine, PROMPTS[0])
    alone_b = _answer(engine, PROMPTS[1], name)
    assert a.text == alone_a
    assert b.text == alone_b
    assert _answer(engine, PROMPTS[1]) != alone_b, "the adapter changes nothing: the A/B test proves nothing"


def test_base_rows_skip_the_adapter_layers_and_pairs_skip_peft_per_call_hooks(
    lively_model, tmp_path, monkeypatch
):
    """With a LoRA loaded, rows that all run the base go through no adapter layer (PEFT's per-layer
    work made such a decode step 1.5x slower), and an A/B batch hands the rows' adapters to the
    layers without PEFT's per-call hook registration (a walk over every module, each step);
    answers stay exactly those of each side alone."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora import model as lora_model

    engine = ChatEngine()
    engine.load(str(lively_model), dtype="float32")
    before = _answer(engine, PROMPTS[0])
    name = engine.add_adapter(_random_adapter(str(lively_model), tmp_path / "adapter"))
    calls = {"layer": 0, "peft_hooks": 0}

    def count(key):
        return lambda *args, **kwargs: calls.__setitem__(key, calls[key] + 1)

    for module in engine._adapters.peft.modules():
        if isinstance(module, LoraLayer):
            module.register_forward_pre_hook(count("layer"))
    real = lora_model._adapter_names_pre_forward_hook
    monkeypatch.setattr(
        lora_model,
        "_adapter_names_pre_forward_hook",
        lambda *args, **kwargs: (count("peft_hooks")(), real(*args, **kwargs))[1],
    )
    assert _answer(engine, PROMPTS[0]) == before
    assert calls["layer"] == 0, "the base alone ran PEFT's adapter layers"
    alone = _answer(engine, PROMPTS[0], name)
    assert calls["layer"] > 0 and alone != before, "the adapter side did not run its adapter"
    messages = [{"role": "user", "content": PROMPTS[0]}]
    a, b = list(engine.stream_pair(messages, messages, None, name, GREEDY))[-1]
    assert (a.text, b.text) == (before, alone)
    assert calls["peft_hooks"] == 0, "the A/B batch went through PEFT's per-call hooks"


@pytest.mark.parametrize("why", ["quantized", "cannot be rebuilt"])
def test_without_a_plain_copy_base_rows_run_the_adapter_layers_switched_off(lively_model, tmp_path, why):
    """A quantized base, or a model class the copy cannot rebuild, has no plain copy: its base rows
    run in PEFT's layers as a mixed batch of base rows, and still answer as the base does."""
    engine = ChatEngine()
    engine.load(str(lively_model), dtype="float32")
    before = _answer(engine, PROMPTS[1])
    name = engine.add_adapter(_random_adapter(str(lively_model), tmp_path / "adapter"))
    loaded = engine._adapters
    if why == "quantized":
        loaded.model.config.quantization_config = {"quant_method": "bitsandbytes"}  # as 4-bit loads say
    else:
        loaded._copy_sharing_weights = lambda replaced: (_ for _ in ()).throw(ValueError("unknown class"))
    assert loaded.plain is None
    assert _answer(engine, PROMPTS[1]) == before
    assert _answer(engine, PROMPTS[1], name) != before


def test_sampled_pair_equals_each_side_alone(lively_model):
    engine = ChatEngine()
    engine.load(str(lively_model), dtype="float32")
    sampled = GenSettings(temperature=0.9, top_p=0.9, max_new_tokens=16, seed=3)
    messages = [{"role": "user", "content": PROMPTS[0]}]
    a, b = list(engine.stream_pair(messages, messages, None, None, sampled))[-1]
    assert a.text == b.text == _answer(engine, PROMPTS[0], settings=sampled)


def _check_batch_equals_one_by_one(tokenizer) -> None:
    batch = templates.tokenize_sft_batch(RECORDS, tokenizer, max_length=64)
    single = [templates.tokenize_sft(r, tokenizer, max_length=64) for r in RECORDS]
    assert batch == single
    assert any(t.truncated for t in batch), "no record was truncated: the max_length path went untested"
    for rec, tok in zip(RECORDS, templates.tokenize_sft_batch(RECORDS, tokenizer), strict=True):
        reference = tokenizer.apply_chat_template(rec["messages"], tokenize=True, return_dict=True)
        assert tok.input_ids == list(reference["input_ids"])


def test_batch_tokenization_equals_one_by_one_tiny(tiny_model):
    _check_batch_equals_one_by_one(models.load_tokenizer(str(tiny_model)))


@pytest.mark.slow
def test_batch_tokenization_equals_one_by_one_default_model(default_model):
    _check_batch_equals_one_by_one(models.load_tokenizer(default_model))


def test_data_bench_pipelines_agree(tiny_model, tmp_path):
    from bench import data

    tokenizer = models.load_tokenizer(str(tiny_model))
    path = data.write_alpaca(tmp_path / "alpaca.jsonl", 50)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len({x["instruction"] for x in lines}) == 50, "rows repeat: the loader would drop duplicates"
    assert data.studio_pipeline(path, tokenizer, 512) == 50
    assert data.datasets_pipeline(path, tokenizer, 512) == 50


def test_interleave_alternates_order_and_takes_medians():
    from bench.common import Row, interleave

    calls: list[str] = []
    values = {"a": iter([1.0, 5.0, 3.0]), "b": iter([2.0, 2.0, 9.0])}

    def contender(name):
        return lambda: calls.append(name) or {"x": next(values[name])}

    medians = interleave({"a": contender("a"), "b": contender("b")}, rounds=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert medians == {"a": {"x": 3.0}, "b": {"x": 2.0}}
    assert Row("t", "m", 3.0, 2.0, "tok/s", 1.5).verdict == "met"
    assert Row("t", "m", 4.0, 2.0, "s", 1.0, higher_is_better=False).verdict == "MISSED"


def test_chat_bench_warms_up_and_reports_spread_and_load(lively_model, monkeypatch):
    from bench import chat
    from bench.common import table

    engine = ChatEngine()
    engine.load(str(lively_model), dtype="float32")
    model = models.load_model(str(lively_model), dtype=torch.float32).eval()
    tokenizer = models.load_tokenizer(str(lively_model))
    calls = []
    real = chat.generate_once
    monkeypatch.setattr(chat, "generate_once", lambda *a: calls.append(a[2]) or real(*a))
    rows = chat.single_pane({"fp32": engine}, {"fp32": model}, tokenizer, ["Hi", "Sea?"], 6, 2)
    assert len(calls) == 2 * 3, "one warm-up round and two timed rounds per prompt"
    assert [r.measure.split(",")[0] for r in rows] == ["single pane decode", "time to first token"]
    assert all(r.ours > 0 and r.theirs > 0 and "-" in r.spread and r.load for r in rows)
    assert "| spread (studio / baseline) | load |" in table([chat.Section("chat", rows)])
    monkeypatch.setenv("STUDIO_CHAT_PATH", "pytorch")
    assert chat.llama_cpp_rows(engine, model, tokenizer, ["Hi"], 4, 1, None)[0] == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no CUDA")
def test_gpu_bench_refuses_clearly_without_cuda(capsys):
    from bench import gpu

    assert gpu.main(["--no-write"]) == 2
    assert "no CUDA GPU here" in capsys.readouterr().err


def test_bench_cli_names_unknown_bench(capsys):
    from bench import __main__ as bench_main

    with pytest.raises(SystemExit):
        bench_main.main(["--only", "chat,nope", "--no-write"])
    assert "unknown bench nope" in capsys.readouterr().err
    assert sys.modules["bench.common"].RESULTS.name == "RESULTS.md"


def _segments_one_by_one(text, offsets, trained, truncated):
    """The plain definition: walk token by token, cut where the trained flag changes."""
    cuts, flags = [0], [trained[0]]
    for (start, _), flag in zip(offsets[1:], trained[1:], strict=True):
        if flag != flags[-1]:
            cuts.append(max(start, cuts[-1]))
            flags.append(flag)
    cuts.append(offsets[-1][1] if truncated else len(text))
    return [(text[a:b], f) for a, b, f in zip(cuts, cuts[1:], flags, strict=False) if b > a]


def test_preview_segments_fast_path_equals_token_walk(tiny_model):
    tokenizer = models.load_tokenizer(str(tiny_model))
    for record in RECORDS:
        for max_length in (None, 20):
            tok = templates.tokenize_sft(record, tokenizer, max_length=max_length)
            text = "".join(piece for piece, _ in tok.segments)
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            offsets = enc["offset_mapping"][: len(tok.input_ids)]
            trained = [label != templates.IGNORE_INDEX for label in tok.labels]
            expected = _segments_one_by_one(text, offsets, trained, tok.truncated)
            assert templates._segments(text, offsets, trained, tok.truncated) == expected
            if max_length is None:  # both kinds of piece: the walk really cut somewhere
                assert any(f for _, f in expected) and any(not f for _, f in expected)
