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
    save = data_sub.add_parser(
        "save", help="check a file and save its usable rows as a dataset the Train tab lists"
    )
    save.add_argument("file")
    save.add_argument("name", help="dataset name: letters, digits, '.', '_' or '-'")
    save.add_argument(
        "--method", default=None, help="sft, dpo, simpo, orpo or kto (default: what the data fits)"
    )
    save.set_defaults(handler=_save)


def _check(args: argparse.Namespace) -> int:
    from studio.data import check

    return check.main(
        args.file,
        method=args.method,
        model=args.model,
        max_length=args.max_length,
        allow_errors=args.allow_errors,
    )


def _save(args: argparse.Namespace) -> int:
    import sys

    from studio.data import check

    try:
        entry = check.save_file(args.file, args.name, args.method)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"saved {entry.name}: {entry.rows} {entry.kind} rows")
    return 0
