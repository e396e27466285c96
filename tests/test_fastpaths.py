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


def _random_adapter(spec: str, folder, **extra):
    """A LoRA adapter whose weights are NOT zero, so the adapter side really answers differently."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]}
    config = LoraConfig(**{**settings, **extra}, init_lora_weights=False)
    model = get_peft_model(models.load_model(spec), config)
    if extra.get("lora_bias"):
        with torch.no_grad():  # PEFT starts the bias at zero: make it matter
            for name, param in model.named_parameters():
                if "lora_B" in name and name.endswith(".bias"):
                    param.normal_(0, 0.5)
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


def _count_calls(engine, monkeypatch) -> dict:
    """Count forwards through PEFT's adapter layers, PEFT's per-call hook registration, and the
    LoRA products the lean copy adds."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora import model as lora_model

    calls = {"peft_layer": 0, "peft_hooks": 0, "lean_products": 0}

    def count(key):
        return lambda *args, **kwargs: calls.__setitem__(key, calls[key] + 1)

    for module in engine._adapters.peft.modules():
        if isinstance(module, LoraLayer):
            module.register_forward_pre_hook(count("peft_layer"))
    real_hook = lora_model._adapter_names_pre_forward_hook
    monkeypatch.setattr(
        lora_model,
        "_adapter_names_pre_forward_hook",
        lambda *args, **kwargs: (count("peft_hooks")(), real_hook(*args, **kwargs))[1],
    )
    real_plan = engine._adapters.lean._plan

    def plan(names):
        made = real_plan(names)
        for weights, _mask in made:
            calls["lean_products"] += len(weights)
        return made

    monkeypatch.setattr(engine._adapters.lean, "_plan", plan)
    return calls


def test_base_rows_skip_the_adapter_layers_and_lora_rows_skip_peft_layers(
    lively_model, tmp_path, monkeypatch
):
    """With a LoRA loaded, rows that all run the base go through no adapter layer (PEFT's per-layer
    work made such a decode step 1.5x slower); the adapter alone and an A/B batch run the lean copy,
    which adds each row's LoRA product in one hook per layer, through none of PEFT's layers or
    per-call hooks; answers stay exactly those of each side alone."""
    engine = ChatEngine()
    engine.load(str(lively_model), dtype="float32")
    before = _answer(engine, PROMPTS[0])
    name = engine.add_adapter(_random_adapter(str(lively_model), tmp_path / "adapter"))
    calls = _count_calls(engine, monkeypatch)
    assert _answer(engine, PROMPTS[0]) == before
    assert calls == {"peft_layer": 0, "peft_hooks": 0, "lean_products": 0}, "the base alone ran adapter work"
    alone = _answer(engine, PROMPTS[0], name)
    assert alone != before and calls["lean_products"] > 0, "the adapter side did not run its adapter"
    messages = [{"role": "user", "content": PROMPTS[0]}]
    a, b = list(engine.stream_pair(messages, messages, None, name, GREEDY))[-1]
    assert (a.text, b.text) == (before, alone)
    assert calls["peft_layer"] == calls["peft_hooks"] == 0, "a LoRA row went through PEFT's layers"


def test_lean_lora_rows_equal_peft_own_layers(lively_model, tmp_path):
    """The lean copy's logits equal PEFT's for an adapter alone, two adapters and the base mixed in
    one batch (PEFT's mixed batch), within float rounding; greedy answers are the same."""
    engine = ChatEngine()
    engine.load(str(lively_model), dtype="float32")
    first = engine.add_adapter(_random_adapter(str(lively_model), tmp_path / "one"))
    second = engine.add_adapter(_random_adapter(str(lively_model), tmp_path / "two", r=8, use_rslora=True))
    loaded = engine._adapters
    assert set(loaded.lean.weights) == {first, second}
    ids = torch.tensor([engine.prompt_ids([{"role": "user", "content": PROMPTS[1]}])] * 3)
    lean_answers = [_answer(engine, PROMPTS[1], adapter) for adapter in (first, second)]
    lean = {
        rows: engine.forward(list(rows), input_ids=ids[: len(rows)]).logits
        for rows in [(first,), (None, first, second), (second, second)]
    }
    lean_weights, loaded.lean.weights = loaded.lean.weights, {}  # PEFT's own layers from here on
    assert [_answer(engine, PROMPTS[1], adapter) for adapter in (first, second)] == lean_answers
    for rows, logits in lean.items():
        peft = engine.forward(list(rows), input_ids=ids[: len(rows)]).logits
        assert torch.allclose(logits, peft, atol=1e-5, rtol=1e-4), rows
    loaded.lean.weights = lean_weights
    assert lean_answers[0] != lean_answers[1] != _answer(engine, PROMPTS[1]), "the adapters change nothing"


def test_adapters_the_lean_copy_cannot_run_stay_in_peft_layers(lively_model, tmp_path, monkeypatch):
    """A LoRA with a bias on its B matrix is not x·Aᵀ·Bᵀ·scale: it runs in PEFT's layers, alone and
    in a batch with a lean one, and answers as PEFT computes it."""
    engine = ChatEngine()
    engine.load(str(lively_model), dtype="float32")
    plain = engine.add_adapter(_random_adapter(str(lively_model), tmp_path / "plain"))
    biased = engine.add_adapter(_random_adapter(str(lively_model), tmp_path / "biased", lora_bias=True))
    assert set(engine._adapters.lean.weights) == {plain}
    messages = [{"role": "user", "content": PROMPTS[0]}]
    calls = _count_calls(engine, monkeypatch)
    alone = _answer(engine, PROMPTS[0], biased)
    assert calls["peft_layer"] > 0 and calls["lean_products"] == 0
    a, b = list(engine.stream_pair(messages, messages, plain, biased, GREEDY))[-1]
    assert (a.text, b.text) == (_answer(engine, PROMPTS[0], plain), alone)
    peft = engine._adapters.peft
    peft.set_adapter(biased)
    ids = torch.tensor([engine.prompt_ids(messages)])
    with torch.no_grad():
        want = peft(input_ids=ids).logits
    assert torch.allclose(engine.forward([biased], input_ids=ids).logits, want, atol=1e-5)
    with peft.disable_adapter(), torch.no_grad():
        assert not torch.allclose(peft(input_ids=ids).logits, want, atol=1e-3), "the bias adapter is a no-op"


@pytest.mark.parametrize("why", ["quantized", "cannot be rebuilt"])
def test_without_a_plain_copy_rows_run_in_peft_layers(lively_model, tmp_path, why):
    """A quantized base, or a model class the copy cannot rebuild, has neither the plain nor the
    lean copy: its base rows run in PEFT's layers as a mixed batch of base rows, its LoRA rows in
    PEFT's layers, and each side still answers as it does alone."""
    engine = ChatEngine()
    engine.load(str(lively_model), dtype="float32")
    before = _answer(engine, PROMPTS[1])
    loaded = engine._adapters
    if why == "quantized":
        loaded.model.config.quantization_config = {"quant_method": "bitsandbytes"}  # as 4-bit loads say
    else:
        loaded._copy_sharing_weights = lambda replaced: (_ for _ in ()).throw(ValueError("unknown class"))
    name = engine.add_adapter(_random_adapter(str(lively_model), tmp_path / "adapter"))
    assert loaded.plain is None and loaded.lean is None
    assert _answer(engine, PROMPTS[1]) == before
    alone = _answer(engine, PROMPTS[1], name)
    assert alone != before
    messages = [{"role": "user", "content": PROMPTS[1]}]
    assert [r.text for r in list(engine.stream_pair(messages, messages, None, name, GREEDY))[-1]] == [
        before,
        alone,
    ]


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


@pytest.mark.slow
def test_training_bench_equal_length_rows_are_equal_length(default_model, tmp_path):
    """The SFT target is measured on equal-length rows: the bench's rows must really be, as the
    model's own chat template and tokenizer read them (else batches pad and the ratio means less)."""
    from bench import train

    path = train.equal_length(tmp_path / "equal.jsonl", default_model)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    tokenizer = models.load_tokenizer(default_model)
    lengths = [
        len(
            tokenizer.apply_chat_template(
                [
                    {"role": "user", "content": r["instruction"]},
                    {"role": "assistant", "content": r["output"]},
                ],
                tokenize=True,
                return_dict=True,
            )["input_ids"]
        )
        for r in rows
    ]
    assert len(rows) == 64 and len({r["output"] for r in rows}) == 64
    assert max(lengths) - min(lengths) <= 0.02 * max(lengths), (min(lengths), max(lengths))
    assert min(lengths) > 200


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


def test_training_bench_rows_carry_medians_spread_and_load():
    from bench import train

    runs = {
        "studio": iter([(100.0, 900.0), (120.0, 950.0), (110.0, 990.0)]),
        "trl": iter([(50.0, 1000.0)] * 3),
    }
    calls: list[str] = []

    def side(name):
        def once():
            calls.append(name)
            tok_s, peak_mb = next(runs[name])
            return {"tok_s": tok_s, "peak_mb": peak_mb}

        return once

    samples = train._pair({"studio": side("studio"), "trl": side("trl")}, rounds=3)
    speed, memory = train._speed_and_memory(samples, "studio", "trl", "lora_sft {} vs TRL", (2.0, 1.25))
    assert calls == ["studio", "trl", "trl", "studio", "studio", "trl"]  # no untimed warm-up run
    assert (speed.ours, speed.theirs, speed.ratio, speed.verdict) == (110.0, 50.0, 2.2, "met")
    assert (memory.ours, memory.measure, memory.verdict) == (950.0, "lora_sft peak RSS vs TRL", "MISSED")
    assert speed.spread == "100-120 / 50-50" and memory.spread == "900-990 / 1e+03-1e+03"
    assert speed.load and memory.load == speed.load


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
