"""GPU benchmarks in one call: training and chat on a CUDA GPU (bf16; Liger kernels when installed).

Runs the chat benchmark (the engine picks bf16 on CUDA by itself: dtype "auto") and the training
benchmark (the recipes' `bf16: auto` turns bf16 on), then appends the results to RESULTS.md. The
TRL baseline turns on `use_liger_kernel` when `liger-kernel` is importable; the studio's recipes have
no Liger field yet, so the table says which side ran with Liger.
Exits with a clear message on a machine without CUDA. Knows nothing about the UI.

Run as: python -m bench.gpu [--quick]
"""

from __future__ import annotations

import importlib.util
import sys

from bench.common import bench_parser, offline_env, publish


def cuda_problem() -> str | None:
    """Why the GPU benchmarks cannot run here (None: they can)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return (
            "no CUDA GPU here (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}): run `python -m bench.gpu` on a machine with an NVIDIA GPU and a CUDA "
            "build of torch; on this machine use `python -m bench`"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    args = bench_parser(__doc__).parse_args(argv)
    problem = cuda_problem()
    if problem:
        print(f"bench.gpu: {problem}", file=sys.stderr)
        return 2
    offline_env()
    import torch

    from bench import chat, train

    liger = importlib.util.find_spec("liger_kernel") is not None
    sections = [chat.run(args.quick), train.run(args.quick)]
    sections[-1].notes.append(
        f"GPU: {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}, Liger kernels "
        f"{'installed' if liger else 'not installed (pip install liger-kernel)'}"
    )
    return publish(sections, args.quick, "GPU run", not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
