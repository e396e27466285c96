"""QLoRA on a CUDA GPU in bf16: tokens per second, and the measured peak memory next to the estimate.

Runs the studio's own command (`python -m studio train recipes/qlora_sft.yaml`, bf16 forced on) in a
fresh run folder, then reads what the trainer recorded there: tokens_per_second per log line in
metrics.jsonl, and status.json's `peak_memory_gb` (torch.cuda.max_memory_allocated) beside
`memory_estimate_gb` (studio.memory, computed before the weights loaded). Exits with a clear message
(code 2) on a machine without CUDA. Knows nothing about the UI.

Run as: python -m bench.gpu_qlora [--model SPEC] [--steps N] [--batch-size B] [--max-length L]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cuda_problem() -> str | None:
    """Why this benchmark cannot run here (None: it can)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return (
            f"no CUDA GPU here (torch {torch.__version__}, torch.cuda.is_available() is False): run "
            "`python -m bench.gpu_qlora` on a machine with an NVIDIA GPU and a CUDA build of torch"
        )
    if not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(0)} has no bf16: this benchmark measures bf16 QLoRA (Ampere or newer)"
    return None


def train_argv(args: argparse.Namespace, run_dir: Path) -> list[str]:
    sets = {
        "model": args.model,
        "max_steps": args.steps,
        "training.bf16": "true",
        "training.batch_size": args.batch_size,
        "data.max_length": args.max_length,
        "data.eval_split": 0,
        "training.save_steps": args.steps,
        "probes.prompts": "[]",
    }
    argv = [sys.executable, "-m", "studio", "train", str(ROOT / "recipes" / "qlora_sft.yaml")]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    return [*argv, "--run-dir", str(run_dir)]


def summarize(run_dir: Path) -> dict:
    """tokens/s (median after the first, warm-up, log line) and memory, from the run folder."""
    status = json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    speeds = [row["tokens_per_second"] for row in rows if "tokens_per_second" in row][1:]
    peak, estimate = status.get("peak_memory_gb"), status.get("memory_estimate_gb")
    return {
        "state": status.get("state"),
        "error": status.get("error"),
        "tokens_per_second": round(statistics.median(speeds), 1) if speeds else None,
        "peak_memory_gb": peak,
        "memory_estimate_gb": estimate,
        "estimate_over_peak": round(estimate / peak, 2) if peak and estimate else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="default", help="model spec: default, a local folder or a cached Hub id"
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    args = parser.parse_args(argv)
    problem = cuda_problem()
    if problem:
        print(f"bench.gpu_qlora: {problem}", file=sys.stderr)
        return 2
    import torch

    run_dir = Path(tempfile.mkdtemp(prefix="gpu-qlora-")) / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    proc = subprocess.run(train_argv(args, run_dir), cwd=ROOT, env=env, text=True)
    if not (run_dir / "status.json").is_file():
        print(f"bench.gpu_qlora: the training run did not start (exit {proc.returncode})", file=sys.stderr)
        return 1
    result = summarize(run_dir)
    result.update(
        gpu=torch.cuda.get_device_name(0),
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        run_dir=str(run_dir),
    )
    print(json.dumps(result, indent=2))
    return 0 if result["state"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
