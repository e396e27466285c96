"""`python -m studio data ...`: the Data tab's actions on the command line."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="check a dataset file: format, rows, problems, token statistics")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = data_sub.add_parser(
        "check",
        help="report format, rows, problems and token statistics",
        description="Exit 0 when every row is usable (warnings allowed), 1 when any row has an error.",
    )
    check.add_argument("file")
    check.add_argument(
        "--method", default=None, help="sft, dpo, simpo, orpo or kto (default: whatever the data fits)"
    )
    check.add_argument("--model", default=None, help="model spec whose chat template renders the data")
    check.add_argument("--max-length", type=int, default=1024)
    check.add_argument(
        "--allow-errors",
        action="store_true",
        help="exit 0 when some rows have errors but others are usable (the broken rows are dropped)",
    )
    check.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    from studio.data import check

    return check.main(
        args.file,
        method=args.method,
        model=args.model,
        max_length=args.max_length,
        allow_errors=args.allow_errors,
    )
