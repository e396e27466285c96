"""Run every benchmark (chat, training, data, app), print one table, append it to bench/RESULTS.md.

Each number is a ratio of two contenders measured interleaved in this run (medians of rounds).
`--quick` is CI-sized; the full run takes a long time on a small CPU: run it when the machine is idle.

Run as: python -m bench [--quick] [--only chat,data,train,app] [--install-llama-cpp] [--no-write]
"""

from __future__ import annotations

import argparse
import sys

from bench import app, chat, data, train
from bench.common import append_results, report

BENCHES = {"data": data.run, "chat": chat.run, "app": app.run, "train": train.run}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized runs (fewer rows, steps, rounds)")
    parser.add_argument(
        "--only", default=",".join(BENCHES), help="comma-separated subset of " + ", ".join(BENCHES)
    )
    parser.add_argument(
        "--install-llama-cpp",
        action="store_true",
        help="pip-install llama-cpp-python first (builds from source)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCHES]
    if unknown:
        parser.error(f"--only: unknown bench {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    if args.install_llama_cpp:
        chat.install_llama_cpp()
    sections = [BENCHES[name](args.quick) for name in chosen]
    text = report(sections, "quick" if args.quick else "full", "CPU run")
    print(text)
    if not args.no_write:
        append_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
