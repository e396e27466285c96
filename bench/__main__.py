"""Run every benchmark (chat, training, data, app), print one table, append it to bench/RESULTS.md.

Each number is a ratio of two contenders measured interleaved in this run (medians of rounds).
`--quick` is CI-sized; the full run takes a long time on a small CPU: run it when the machine is idle.

Run as: python -m bench [--quick] [--only chat,data,serve,train,app] [--no-write]
"""

from __future__ import annotations

import sys

from bench import app, chat, data, serve, train
from bench.common import bench_parser, publish

BENCHES = {"data": data.run, "chat": chat.run, "serve": serve.run, "app": app.run, "train": train.run}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, prog="python -m bench")
    parser.add_argument(
        "--only", default=",".join(BENCHES), help="comma-separated subset of " + ", ".join(BENCHES)
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCHES]
    if unknown:
        parser.error(f"--only: unknown bench {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    sections = [BENCHES[name](args.quick) for name in chosen]
    return publish(sections, args.quick, "CPU run", not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
