"""Chat benchmark: the studio's ChatEngine against plain `model.generate` (fp32) on the default model.

Measures decode tokens/s and time to first token, single pane (engine fp32 and bf16) and A/B pair
(one batched step for both sides vs the two sides one after the other), the greedy-text agreement
of bf16 with fp32, and llama.cpp on the same GGUF when `llama-cpp-python` is installed.
Knows nothing about training, data or the UI.

Run as: python -m bench.chat [--quick] [--install-llama-cpp]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Row, Section, bench_home, bench_parser, interleave, log, offline_env, publish

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


def single_pane(
    engine32, engine16, model, tokenizer, prompts, max_new, rounds
) -> tuple[list[Row], list[str]]:
    contenders = {
        "generate": lambda: _median_over_prompts(
            lambda p: generate_once(model, tokenizer, p, max_new)[0], prompts
        ),
        "engine32": lambda: _median_over_prompts(lambda p: engine_once(engine32, p, max_new)[0], prompts),
    }
    if engine16 is not None:
        contenders["engine16"] = lambda: _median_over_prompts(
            lambda p: engine_once(engine16, p, max_new)[0], prompts
        )
    m = interleave(contenders, rounds)
    g = m["generate"]
    rows = [
        Row(
            "chat",
            "single pane decode, engine fp32 vs generate fp32",
            m["engine32"]["tok_s"],
            g["tok_s"],
            "tok/s",
        ),
        Row(
            "chat", "time to first token, engine fp32", m["engine32"]["ttft_s"], g["ttft_s"], "s", None, False
        ),
    ]
    if engine16 is not None:
        rows += [
            Row(
                "chat",
                "single pane decode, engine bf16 vs generate fp32",
                m["engine16"]["tok_s"],
                g["tok_s"],
                "tok/s",
                1.5,
            ),
            Row(
                "chat",
                "time to first token, engine bf16",
                m["engine16"]["ttft_s"],
                g["ttft_s"],
                "s",
                None,
                False,
            ),
        ]
    return rows, []


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


def llama_cpp_rows(tokenizer, prompts, max_new, rounds, engine16) -> tuple[list[Row], list[str]]:
    try:
        from llama_cpp import Llama
    except ImportError:
        return [], [
            "llama.cpp: `llama-cpp-python` is not installed (run with --install-llama-cpp); not compared"
        ]
    import os

    from studio import models

    llm = Llama(model_path=str(models.gguf_path()), n_ctx=1024, n_threads=os.cpu_count(), verbose=False)

    def llama_once(prompt: str) -> dict:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        start, times = time.perf_counter(), []
        for _ in llm.create_completion(text, max_tokens=max_new, temperature=0.0, stream=True):
            times.append(time.perf_counter())
        return _rates(start, times)

    m = interleave(
        {
            "llama": lambda: _median_over_prompts(llama_once, prompts),
            "engine16": lambda: _median_over_prompts(lambda p: engine_once(engine16, p, max_new)[0], prompts),
        },
        rounds,
    )
    row = Row(
        "chat",
        "decode, engine bf16 vs llama.cpp (Q4_1 GGUF)",
        m["engine16"]["tok_s"],
        m["llama"]["tok_s"],
        "tok/s",
    )
    return [row], ["llama.cpp runs the 4-bit GGUF with hand-written kernels; the engine runs PyTorch eager"]


def run(quick: bool) -> Section:
    offline_env()
    bench_home()
    import torch

    from studio import models
    from studio.chat.engine import ChatEngine

    torch.manual_seed(0)
    prompts = PROMPTS[:1] if quick else PROMPTS
    max_new, rounds = (16, 2) if quick else (64, 3)
    log(f"chat: {len(prompts)} prompt(s), {max_new} new tokens, {rounds} rounds")
    tokenizer = models.load_tokenizer("default")
    model = models.load_model("default", dtype=torch.float32).eval()
    engine32 = ChatEngine()
    engine32.load("default", dtype="float32")
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    engine16 = None
    if bf16:
        engine16 = ChatEngine()
        engine16.load("default", dtype="bfloat16")
    section = Section("chat")
    rows, notes = single_pane(engine32, engine16, model, tokenizer, prompts, max_new, rounds)
    section.rows += rows
    section.notes += notes
    if engine16 is not None:
        log("chat: bf16 vs fp32 greedy agreement")
        agree_prompts, agree_new = (PROMPTS[:2], 32) if quick else (PROMPTS, 64)
        section.notes.append(agreement(engine16, model, tokenizer, agree_prompts, agree_new))
    else:
        section.notes.append("this CPU has no native bf16: bf16 not measured")
    ab = engine16 or engine32
    log("chat: A/B pair")
    with tempfile.TemporaryDirectory() as tmp:
        name = ab.add_adapter(make_adapter("default", Path(tmp) / "adapter"))
        m = interleave(
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
        Row(
            "chat",
            f"A/B pair base+LoRA ({ab.dtype}), batched vs one after the other",
            m["batched"]["pair_tok_s"],
            m["one_by_one"]["pair_tok_s"],
            "tok/s",
            1.6,
        )
    )
    section.notes.append(
        "A/B: base (adapter off) and a rank-16 LoRA on every projection, in one PEFT mixed-adapter batch"
    )
    if engine16 is not None:
        rows, notes = llama_cpp_rows(tokenizer, prompts, max_new, rounds, engine16)
        section.rows += rows
        section.notes += notes
    return section


def install_llama_cpp() -> None:
    print("building llama-cpp-python from source (several minutes)...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "llama-cpp-python"], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--install-llama-cpp", action="store_true")
    args = parser.parse_args(argv)
    if args.install_llama_cpp:
        install_llama_cpp()
    return publish([run(args.quick)], args.quick, "Chat", not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
