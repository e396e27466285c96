"""Chat benchmark: the studio's ChatEngine against plain `model.generate` (fp32) on the default model.

Fair by construction: every contender is warmed up before timing (so no side's first call carries
its warm-up), >= 3 prompts x >= 64 new tokens, greedy, rounds in alternating order, medians with
the spread of the rounds, and the load average beside every row. Measures steady-state decode
tokens/s (tokens after the first / time between the first and the last) and time to first token
separately: engine vs `generate` in fp32 and bf16, A/B pair (one batched step for both sides vs the
two sides one after the other), the greedy-text agreement of bf16 with fp32, and the llama.cpp
path (studio.chat.llamacpp) on the embedded GGUF when a llama.cpp binding is installed.
Knows nothing about training, data or the UI.

Run as: python -m bench.chat [--quick]   (`make install-llama-cpp` first for the llama.cpp rows)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    Row,
    Section,
    bench_home,
    bench_parser,
    interleave_samples,
    load_now,
    log,
    offline_env,
    publish,
)

PROMPTS = [
    "What is the capital of France?",
    "Give three tips for staying healthy.",
    "Explain photosynthesis in one or two sentences.",
    "Write a short poem about the sea.",
]


class _Clock:
    """A `generate` streamer that notes when each new token arrives (the first put is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _rates(start: float, times: list[float]) -> dict:
    """Time to first token, and decode tokens/s over the tokens after the first."""
    ttft = times[0] - start
    decode = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return {"ttft_s": ttft, "tok_s": decode, "tokens": len(times)}


def generate_once(model, tokenizer, prompt: str, max_new: int) -> tuple[dict, str]:
    """Plain transformers `generate`, greedy, with the chat template: (rates, text)."""
    import torch

    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    clock = _Clock()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new, do_sample=False, streamer=clock)
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    return _rates(start, clock.times), text


def engine_once(engine, prompt: str, max_new: int, adapter=None) -> tuple[dict, str]:
    """The studio engine, greedy, no repetition penalty (the same decoding as `generate`)."""
    from studio.chat.engine import GenSettings

    settings = GenSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=max_new)
    start = time.perf_counter()
    times, reply = [], None
    for reply in engine.stream([{"role": "user", "content": prompt}], adapter, settings):
        if reply.tokens > len(times):
            times.append(time.perf_counter())
    return _rates(start, times), reply.text


def pair_once(engine, prompt: str, max_new: int, adapter: str, batched: bool) -> dict:
    """A/B throughput (tokens of both sides / wall time): one batched stream, or two in a row."""
    from studio.chat.engine import GenSettings

    settings = GenSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=max_new)
    messages = [{"role": "user", "content": prompt}]
    start = time.perf_counter()
    if batched:
        *_, (a, b) = engine.stream_pair(messages, messages, None, adapter, settings)
        tokens = a.tokens + b.tokens
    else:
        tokens = sum(list(engine.stream(messages, side, settings))[-1].tokens for side in (None, adapter))
    return {"pair_tok_s": tokens / (time.perf_counter() - start)}


def make_adapter(spec: str, folder: Path) -> Path:
    """A LoRA adapter on every projection (PEFT's own init), saved like a run's adapter."""
    from peft import LoraConfig, get_peft_model

    from studio import models

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(models.load_model(spec), LoraConfig(r=16, lora_alpha=32, target_modules=targets))
    model.save_pretrained(folder)
    return folder


def _median_over_prompts(fn, prompts: list[str]) -> dict:
    import statistics

    results = [fn(p) for p in prompts]
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


def _ratio_row(samples, measure: str, ours: str, theirs: str, key: str, unit: str, target=None) -> Row:
    """A chat row of one interleaved run (a time to first token is better lower)."""
    return samples.row("chat", measure, ours, theirs, key, unit, target, key != "ttft_s")


def single_pane(engines: dict, models_: dict, tokenizer, prompts, max_new, rounds) -> list[Row]:
    """Engine vs `generate` in each dtype, all four contenders warmed up and interleaved."""
    contenders = {}
    for dtype, model in models_.items():
        contenders[f"generate_{dtype}"] = lambda m=model: _median_over_prompts(
            lambda p: generate_once(m, tokenizer, p, max_new)[0], prompts
        )
    for dtype, engine in engines.items():
        contenders[f"engine_{dtype}"] = lambda e=engine: _median_over_prompts(
            lambda p: engine_once(e, p, max_new)[0], prompts
        )
    s = interleave_samples(contenders, rounds)
    rows = [
        _ratio_row(
            s,
            "single pane decode, engine fp32 vs generate fp32",
            "engine_fp32",
            "generate_fp32",
            "tok_s",
            "tok/s",
            1.5,
        ),
        _ratio_row(
            s,
            "time to first token, engine fp32 vs generate fp32",
            "engine_fp32",
            "generate_fp32",
            "ttft_s",
            "s",
        ),
    ]
    if "bf16" in engines:
        rows += [
            _ratio_row(
                s,
                "single pane decode, engine bf16 vs generate bf16",
                "engine_bf16",
                "generate_bf16",
                "tok_s",
                "tok/s",
            ),
            _ratio_row(
                s,
                "single pane decode, engine bf16 vs engine fp32",
                "engine_bf16",
                "engine_fp32",
                "tok_s",
                "tok/s",
            ),
            _ratio_row(
                s,
                "time to first token, engine bf16 vs engine fp32",
                "engine_bf16",
                "engine_fp32",
                "ttft_s",
                "s",
            ),
        ]
    return rows


def agreement(engine16, model, tokenizer, prompts, max_new) -> str:
    """How many prompts give the same greedy text in bf16 (engine) as in fp32 (`generate`)."""
    same, first_diff = 0, []
    for p in prompts:
        ref = generate_once(model, tokenizer, p, max_new)[1]
        got = engine_once(engine16, p, max_new)[1]
        same += ref == got
        if ref != got:
            n = next(
                (i for i, (a, b) in enumerate(zip(ref, got, strict=False)) if a != b), min(len(ref), len(got))
            )
            first_diff.append(f"{p!r} differs from character {n} of {len(ref)}")
    return (
        f"bf16 greedy text equals fp32 `generate` on {same}/{len(prompts)} prompts ({max_new} new tokens)"
        + (f"; {'; '.join(first_diff)}" if first_diff else "")
    )


def _llama_engine(gguf: Path | None = None):
    """A chat engine serving the default model on llama.cpp: its own 16-bit GGUF (what the Chat tab
    uses), or another GGUF of the same weights (the embedded 4-bit file as it ships)."""
    from studio.chat import llamacpp
    from studio.chat.engine import ChatEngine

    engine = ChatEngine()
    engine.load("default", dtype="float32", llama_cpp=True)
    if gguf is not None:  # the same engine, another file of the same model
        engine._llama.close()
        engine._llama = llamacpp.LlamaCppBase(gguf, n_ctx=4096, threads=engine._llama.threads)
    return engine


def same_text(engine, reference, prompts, max_new: int) -> str:
    """'4/5' prompts whose greedy text is the same on `engine` as on `reference`, first difference."""
    same, parted = 0, []
    for p in prompts:
        ours, theirs = engine_once(engine, p, max_new)[1], engine_once(reference, p, max_new)[1]
        same += ours == theirs
        if ours != theirs:
            at = next((i for i, (x, y) in enumerate(zip(ours, theirs, strict=False)) if x != y), 0)
            parted.append(f"character {at}")
    return f"{same}/{len(prompts)}" + (f" (others part at {', '.join(parted)})" if parted else "")


def llama_cpp_rows(
    engine32, model, tokenizer, prompts, max_new, rounds, adapter
) -> tuple[list[Row], list[str]]:
    """The llama.cpp path (studio.chat.llamacpp) vs `generate` fp32 and the PyTorch engine: one pane,
    and the A/B pair (base + LoRA) as the Chat tab serves it on each path."""
    from studio import models
    from studio.chat import llamacpp

    problem = llamacpp.unavailable()
    if problem:
        return [], [f"llama.cpp: {problem}; not compared"]
    f16, q4 = _llama_engine(), _llama_engine(models.gguf_path())
    name = f16.add_adapter(adapter)
    contenders = {
        "llama_f16": lambda: _median_over_prompts(lambda p: engine_once(f16, p, max_new)[0], prompts),
        "llama_q4": lambda: _median_over_prompts(lambda p: engine_once(q4, p, max_new)[0], prompts),
        "engine_fp32": lambda: _median_over_prompts(lambda p: engine_once(engine32, p, max_new)[0], prompts),
        "generate_fp32": lambda: _median_over_prompts(
            lambda p: generate_once(model, tokenizer, p, max_new)[0], prompts
        ),
    }
    s = interleave_samples(contenders, rounds)
    rows = [
        _ratio_row(
            s,
            "decode, llama.cpp (chat's 16-bit GGUF) vs generate fp32",
            "llama_f16",
            "generate_fp32",
            "tok_s",
            "tok/s",
            3.0,
        ),
        _ratio_row(
            s,
            "time to first token, llama.cpp 16-bit vs generate fp32",
            "llama_f16",
            "generate_fp32",
            "ttft_s",
            "s",
        ),
        _ratio_row(
            s, "decode, llama.cpp 16-bit vs engine fp32", "llama_f16", "engine_fp32", "tok_s", "tok/s"
        ),
        _ratio_row(
            s,
            "decode, llama.cpp on the shipped 4-bit GGUF vs generate fp32",
            "llama_q4",
            "generate_fp32",
            "tok_s",
            "tok/s",
        ),
    ]
    engine_name = engine32.add_adapter(adapter)
    pairs = interleave_samples(
        {
            "llama": lambda: _median_over_prompts(lambda p: pair_once(f16, p, max_new, name, True), prompts),
            "torch": lambda: _median_over_prompts(
                lambda p: pair_once(engine32, p, max_new, engine_name, True), prompts
            ),
        },
        rounds,
    )
    rows.append(
        _ratio_row(
            pairs, "A/B pair base+LoRA, llama.cpp vs PyTorch batched", "llama", "torch", "pair_tok_s", "tok/s"
        )
    )
    notes = [
        f"greedy text ({max_new} tokens) equal to the PyTorch engine fp32: llama.cpp 16-bit "
        f"{same_text(f16, engine32, prompts, max_new)}, 4-bit as shipped {same_text(q4, engine32, prompts, max_new)}",
        f"llama.cpp: the Chat tab's path is the 16-bit GGUF written from the model's safetensors; the 4-bit "
        f"row runs {models.gguf_path().name} (4-bit weights times 8-bit activations) as it ships",
    ]
    for engine in (f16, q4):
        engine.unload()
    return rows, notes


def run(quick: bool) -> Section:
    offline_env()
    bench_home()
    import torch

    from studio import models
    from studio.chat.engine import ChatEngine

    torch.manual_seed(0)
    prompts = PROMPTS[:3] if quick else PROMPTS
    max_new, rounds = (64, 2) if quick else (96, 3)
    log(f"chat: {len(prompts)} prompts, {max_new} new tokens, {rounds} rounds, load {load_now():.1f}")
    tokenizer = models.load_tokenizer("default")
    dtypes = {"fp32": torch.float32}
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        dtypes["bf16"] = torch.bfloat16
    models_, engines = {}, {}
    for name, dtype in dtypes.items():
        models_[name] = models.load_model("default", dtype=dtype).eval()
        engines[name] = ChatEngine()
        engines[name].load("default", dtype={"fp32": "float32", "bf16": "bfloat16"}[name])
    section = Section("chat")
    section.rows += single_pane(engines, models_, tokenizer, prompts, max_new, rounds)
    if "bf16" in engines:
        log("chat: bf16 vs fp32 greedy agreement")
        section.notes.append(agreement(engines["bf16"], models_["fp32"], tokenizer, prompts, max_new))
    else:
        section.notes.append("this CPU has no native bf16: bf16 not measured")
    ab = engines["fp32"]  # the dtype chat uses on this CPU
    log(f"chat: A/B pair, load {load_now():.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        adapter = make_adapter("default", Path(tmp) / "adapter")
        name = ab.add_adapter(adapter)
        s = interleave_samples(
            {
                "batched": lambda: _median_over_prompts(
                    lambda p: pair_once(ab, p, max_new, name, True), prompts
                ),
                "one_by_one": lambda: _median_over_prompts(
                    lambda p: pair_once(ab, p, max_new, name, False), prompts
                ),
            },
            rounds,
        )
        section.rows.append(
            _ratio_row(
                s,
                "A/B pair base+LoRA (fp32), batched vs one after the other",
                "batched",
                "one_by_one",
                "pair_tok_s",
                "tok/s",
                1.6,
            )
        )
        section.notes.append(
            "A/B: the base and a rank-16 LoRA on every projection, in one forward per step (the lean copy: each row's LoRA product added in one hook per layer, a 0/1 row mask for the base row)"
        )
        log(f"chat: llama.cpp, load {load_now():.1f}")
        rows, notes = llama_cpp_rows(ab, models_["fp32"], tokenizer, prompts, max_new, rounds, adapter)
    section.rows += rows
    section.notes += notes
    return section


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    args = parser.parse_args(argv)
    return publish([run(args.quick)], args.quick, "Chat", not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
