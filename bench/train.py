"""Training benchmark: tokens/s and peak memory of the studio's LoRA/QLoRA SFT recipes vs plain TRL.

Studio: `python -m studio train recipes/<recipe>.yaml --set max_steps=N` as a subprocess,
tokens/s read from its metrics.jsonl (median over log steps, the first one dropped as warm-up).
Baseline: bench/trl_sft.py (TRL's SFTTrainer with its own defaults, same model, data and LoRA).
Peak memory: the process tree's resident memory, polled with psutil. Knows nothing about the UI.

Run as: python -m bench.train [--quick]
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    ROOT,
    Row,
    Samples,
    Section,
    bench_home,
    bench_parser,
    interleave_samples,
    log,
    offline_env,
    publish,
)


def run_polled(cmd: list[str], log_file: Path, timeout: float = 1800) -> int:
    """Run `cmd`, polling the peak RSS of it and its children; returns that peak in bytes."""
    import psutil

    with log_file.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
        parent, peak, deadline = psutil.Process(proc.pid), 0, time.monotonic() + timeout
        while proc.poll() is None:
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.2)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{log_file.read_text()[-2000:]}")
    return peak


def long_tailed(path: Path, rows: int = 256, seed: int = 0) -> Path:
    """Alpaca rows whose answers run from ~10 to ~500 tokens, most of them short (log-uniform):
    the kind of data where batches padded to their longest row waste the most."""
    import math
    import random

    rng = random.Random(seed)
    words = (ROOT / "sample_data" / "alpaca.jsonl").read_text().replace('"', " ").split()
    lines = []
    for i in range(rows):
        n = int(math.exp(rng.uniform(math.log(8), math.log(380))))
        answer = " ".join(rng.choice(words) for _ in range(n))
        lines.append(
            json.dumps({"instruction": f"Question {i}: {' '.join(rng.sample(words, 6))}", "output": answer})
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def equal_length(path: Path, model_dir: str, rows: int = 64, words: int = 200, seed: int = 0) -> Path:
    """Alpaca rows that all tokenize to the same length: each question and answer is made of words
    the model's tokenizer reads as one token each (with the space before them), digits one each."""
    import random

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = (ROOT / "sample_data" / "alpaca.jsonl").read_text().replace('"', " ")
    vocab = sorted({w for w in text.split() if w.isalpha() and len(tokenizer(" " + w)["input_ids"]) == 1})
    rng = random.Random(seed)
    lines = [
        json.dumps(
            {
                "instruction": f"Question {i:03d}: {' '.join(rng.choices(vocab, k=6))}",
                "output": " ".join(rng.choices(vocab, k=words)),
            }
        )
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def studio_once(recipe: str, steps: int, tmp: Path, sets: tuple[str, ...] = ()) -> dict:
    run_dir = tmp / f"studio-{time.monotonic_ns()}"
    cmd = [
        sys.executable,
        "-m",
        "studio",
        "train",
        f"recipes/{recipe}.yaml",
        "--run-dir",
        str(run_dir),
        "--set",
        f"max_steps={steps}",
        "--set",
        "save_steps=100000",
        "--set",
        "eval_steps=100000",
        "--set",
        "logging_steps=1",
        "--set",
        "data.eval_split=0",
        "--set",
        "probes.prompts=[]",
        *(arg for item in sets for arg in ("--set", item)),
    ]
    peak = run_polled(cmd, tmp / f"{run_dir.name}.log")
    plan = re.search(
        r"precision: (\w+); gradient checkpointing: (\w+)", (tmp / f"{run_dir.name}.log").read_text()
    )
    if plan and recipe == "lora_sft" and not sets:
        STUDIO_SETTINGS.update(precision=plan[1], gradient_checkpointing=plan[2])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rates = [json.loads(x)["tokens_per_second"] for x in lines if "tokens_per_second" in x]
    return {"tok_s": statistics.median(rates[1:] or rates), "peak_mb": peak / 2**20}


TRL_SETTINGS: dict = {}  # what SFTConfig's defaults were in the baseline's last run, for the notes
STUDIO_SETTINGS: dict = {}  # what the studio's lora_sft plan chose, read from its log


def trl_once(model_dir: str, steps: int, tmp: Path, qlora: bool, data: Path | None = None) -> dict:
    out = tmp / f"trl-{time.monotonic_ns()}"
    cmd = [sys.executable, str(ROOT / "bench" / "trl_sft.py"), model_dir, str(out), "--max-steps", str(steps)]
    cmd += ["--data", str(data)] if data else []
    log_file = tmp / f"{out.name}.log"
    peak = run_polled(cmd + (["--qlora"] if qlora else []), log_file)
    result = json.loads(log_file.read_text().strip().splitlines()[-1])
    TRL_SETTINGS.update({k: result.get(k) for k in ("batch_size", "bf16", "gradient_checkpointing")})
    return {"tok_s": result["tokens_per_second"], "peak_mb": peak / 2**20}


def _speed_and_memory(
    s: Samples,
    ours: str,
    theirs: str,
    measure: str,
    targets: tuple[float | None, float | None] = (None, None),
) -> list[Row]:
    """Two rows for one interleaved pair: tokens/s (higher is better) and peak RSS (lower is better;
    its target reads baseline / studio, so 1.25 means at most 0.8x the baseline's memory)."""
    return [
        s.row("train", measure.format("tokens/s"), ours, theirs, "tok_s", "tok/s", targets[0]),
        s.row("train", measure.format("peak RSS"), ours, theirs, "peak_mb", "MB", targets[1], False),
    ]


def _pair(contenders: dict, rounds: int) -> Samples:
    """Each side once per round, alternating; no extra warm-up round, since every run is a fresh
    process whose first logged step is dropped (studio_once, trl_once)."""
    return interleave_samples(contenders, rounds, warmup=False)


def run(quick: bool) -> Section:
    offline_env()
    bench_home()
    from studio import models

    steps, rounds = (3, 2) if quick else (8, 3)  # the first log step is dropped as warm-up
    model_dir = str(models.default_model_dir())
    section = Section("training")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for recipe, qlora in (("lora_sft", False), ("qlora_sft", True)):
            log(f"train: {recipe} vs TRL defaults, {steps} steps, {rounds} round(s)")
            m = _pair(
                {
                    "studio": lambda r=recipe: studio_once(r, steps, tmp),
                    "trl": lambda q=qlora: trl_once(model_dir, steps, tmp, q),
                },
                rounds,
            )
            # on stderr too, in case a later recipe times out
            log(f"train: {recipe}: {m.medians()}")
            section.rows += _speed_and_memory(
                m, "studio", "trl", f"{recipe} {{}} vs TRL defaults", (1.5, 1.0)
            )
        equal = equal_length(tmp / "equal_length.jsonl", model_dir)
        log(f"train: lora_sft vs TRL defaults on {equal.name}, {steps} steps, {rounds} round(s)")
        m = _pair(
            {
                "studio": lambda: studio_once("lora_sft", steps, tmp, (f"dataset={equal}",)),
                "trl": lambda: trl_once(model_dir, steps, tmp, False, equal),
            },
            rounds,
        )
        log(f"train: equal-length rows: {m.medians()}")
        section.rows += _speed_and_memory(
            m, "studio", "trl", "lora_sft {} vs TRL defaults, equal-length rows", (2.0, 1.25)
        )
        log(f"train: lora_sft 16-bit base (bf16) vs fp32, {steps} steps, {rounds} round(s)")
        m = _pair(
            {
                "bf16": lambda: studio_once("lora_sft", steps, tmp, ("training.bf16=true",)),
                "fp32": lambda: studio_once("lora_sft", steps, tmp, ("training.bf16=false",)),
            },
            rounds,
        )
        section.rows += _speed_and_memory(m, "bf16", "fp32", "lora_sft {}, bf16 base vs fp32")
        data = long_tailed(tmp / "long_tailed.jsonl")
        packed_steps = max(3, steps // 2)  # a packed step reads 4 x 512 tokens
        log(
            f"train: packed ({packed_steps} steps) vs length-grouped ({steps}) on {data.name}, {rounds} round(s)"
        )
        on = (f"dataset={data}",)
        m = _pair(
            {
                "packed": lambda: studio_once("lora_sft", packed_steps, tmp, (*on, "training.packing=true")),
                "grouped": lambda: studio_once("lora_sft", steps, tmp, on),
            },
            rounds,
        )
        log(f"train: packed vs grouped: {m.medians()}")
        section.rows += _speed_and_memory(
            m, "packed", "grouped", "LoRA SFT {}, packed vs length-grouped, long-tailed lengths"
        )
    section.notes += [
        "TRL defaults as the baseline ran them (SFTConfig): "
        + ", ".join(f"{k} {v}" for k, v in TRL_SETTINGS.items())
        + "; the studio's lora_sft as shipped: batch 4, "
        + ", ".join(f"{k} {v}" for k, v in STUDIO_SETTINGS.items())
        + " (checkpointing is on only when the memory estimate is tight)",
        "equal-length rows: 64 Alpaca-shaped rows of a 6-word question and a 200-word answer, every word "
        "one token alone (answers 200-202 tokens with the default tokenizer), so batches barely pad (the target is 2x TRL's tokens/s at 0.8x its peak memory: "
        "the memory row's target reads TRL / studio >= 1.25)",
        "packed vs grouped: 256 rows, answers ~10-500 tokens (log-uniform), lora_sft as shipped (batch 4, "
        "max_length 512): a packed step holds 4 rows of up to 512 tokens, a grouped step 4 examples",
        "the studio's SFT batches are grouped by length (training.group_by_length) and padded per batch, "
        "packing (training.packing) is off by default; tokenized rows are cached by content hash",
        "tokens/s counts every token read, padding excluded (attention mask), per log step, median; "
        "the studio's runs skip evaluation and probes (data.eval_split=0, probes.prompts=[]) as the baseline has none",
    ]
    return section


def main(argv: list[str] | None = None) -> int:
    args = bench_parser(__doc__).parse_args(argv)
    return publish([run(args.quick)], args.quick, "Training", not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
