"""`python -m studio data ...`: the Data tab's actions on the command line."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="check a dataset file, or pull one from the Hub")
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
    pull = data_sub.add_parser(
        "pull",
        help="download a Hub dataset split, check it and save it by name",
        description="Downloads the split's files (resumable), keeps the first N rows (or a random sample "
        "of N with --sample), checks them like an uploaded file and saves the usable rows. Exit 1 on errors.",
    )
    pull.add_argument("dataset_id", help="Hub dataset id, e.g. tatsu-lab/alpaca")
    pull.add_argument("--config", default=None, help="dataset config (default: the first)")
    pull.add_argument("--split", default=None, help="split (default: train)")
    pull.add_argument("--rows", type=int, default=None, help="keep at most N rows (default: all)")
    pull.add_argument(
        "--sample", action="store_true", help="a random sample of --rows rows, not the first ones"
    )
    pull.add_argument("--seed", type=int, default=0, help="seed of the random sample")
    pull.add_argument(
        "--name", default=None, help="save as this dataset name (default: from the id and split)"
    )
    pull.add_argument(
        "--method", default=None, help="sft, dpo, simpo, orpo or kto (default: what the data fits)"
    )
    pull.set_defaults(handler=_pull)


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


def _pull(args: argparse.Namespace) -> int:
    import sys

    from studio import hubclient
    from studio.data import check, hub, store

    show = hubclient.progress_printer()

    try:
        path, kept = hub.pull(
            args.dataset_id, args.config, args.split, args.rows, args.sample, args.seed, on_progress=show
        )
        print(kept)
        report = check.load(path, method=args.method)
        print(report.summary())
        for problem in report.problems[: check.SHOWN_PROBLEMS]:
            print(f"  {problem}")
        if not report.usable:
            print(f"error: {path.name} has no usable rows: nothing saved", file=sys.stderr)
            return 1
        name = args.name or path.stem[:80]
        entry = store.save(name, report.records, report.kind, report.format, str(path))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"saved {entry.rows} {entry.kind} rows as '{entry.name}': train on it with --set dataset={entry.name}"
    )
    return 0
