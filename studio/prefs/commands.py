"""`python -m studio votes ...`: the Votes tab's actions on the command line."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    votes = sub.add_parser("votes", help="list, report, export or delete chat votes; save them as a dataset")
    actions = votes.add_subparsers(dest="votes_command", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="the newest votes: id, preferred answer (A, B, tie, both_bad), prompt"
    )
    listing.add_argument("--limit", type=int, default=50)
    actions.add_parser("report", help="counts, position and length bias, wins per pair of models")
    export = actions.add_parser("export", help="write the votes as training records (JSONL)")
    export.add_argument("out", help="the .jsonl file to write")
    export.add_argument(
        "--kind", choices=("dpo", "kto"), default="dpo", help="dpo: pairs (DPO/SimPO/ORPO); kto"
    )
    save = actions.add_parser("save", help="save the votes as a dataset the Train tab lists")
    save.add_argument("name")
    save.add_argument("--kind", choices=("dpo", "kto"), default="dpo")
    delete = actions.add_parser("delete", help="delete one vote by its id")
    delete.add_argument("vote_id", type=int)
    votes.set_defaults(handler=_votes)


def _votes(args: argparse.Namespace) -> int:
    from studio.prefs import records, report, store

    try:
        if args.votes_command == "list":
            for vote in store.list_votes(limit=args.limit):
                prompt = (vote.messages[-1]["content"] if vote.messages else "").replace("\n", " ")[:60]
                print(f"{vote.id:>5}  {vote.verdict:<8}  {prompt}")
        elif args.votes_command == "report":
            quality = report.quality_report()
            print(
                f"{quality.total} votes: {quality.decisive} decisive, {quality.ties} ties, "
                f"{quality.both_bad} both bad, {quality.edited} edited; {quality.usable_pairs} usable pairs"
            )
            for note in quality.notes():
                print(f"note: {note}")
        elif args.votes_command == "export":
            rows = (records.export_dpo if args.kind == "dpo" else records.export_kto)(args.out)
            print(f"{len(rows)} records -> {args.out}")
        elif args.votes_command == "save":
            entry = records.save_as_dataset(args.name, "preference" if args.kind == "dpo" else "kto")
            print(f"saved {entry.name}: {entry.rows} rows")
        else:
            store.delete_vote(args.vote_id)
            print(f"deleted vote {args.vote_id}")
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
