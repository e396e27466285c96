"""The command line: every UI action has a twin here, and the UI runs exactly these commands.

    python -m studio train RECIPE.yaml [--set key=value ...] [--run-dir DIR] [--resume]
    python -m studio data check FILE [--method sft|dpo|kto|...] [--model SPEC]
    python -m studio push RUN_DIR REPO_ID [--private|--public] [--merged]

Parses arguments and hands off; heavy imports happen only in the chosen command.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a recipe into a run folder")
    train.add_argument("recipe", help="a recipe YAML file (see recipes/)")
    train.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set max_steps=20 --set lora.r=8",
    )
    train.add_argument("--run-dir", help="run folder (default: STUDIO_HOME/runs/<new id>)")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --run-dir")
    from studio import recipes  # light (dataclasses + yaml): every recipe field's help, written once

    train.epilog, train.formatter_class = recipes.fields_help(), argparse.RawDescriptionHelpFormatter

    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="report format, rows, problems and token statistics")
    check.add_argument("file")
    check.add_argument(
        "--method", default=None, help="sft, dpo, simpo, orpo or kto (default: whatever the data fits)"
    )
    check.add_argument("--model", default=None, help="model spec whose chat template renders the data")
    check.add_argument("--max-length", type=int, default=1024)

    push = sub.add_parser("push", help="push a completed run's adapter to the Hugging Face Hub")
    push.add_argument("run_dir")
    push.add_argument("repo_id")
    vis = push.add_mutually_exclusive_group()
    vis.add_argument("--private", dest="private", action="store_true", default=True)
    vis.add_argument("--public", dest="private", action="store_false")
    push.add_argument("--merged", action="store_true", help="push the merged model instead of the adapter")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train":
        from studio import train

        return train.main(args.recipe, sets=args.sets, run_dir=args.run_dir, resume=args.resume)
    if args.command == "data":
        from studio.data import check

        return check.main(args.file, method=args.method, model=args.model, max_length=args.max_length)
    if args.command == "push":
        from studio import hub

        return hub.main(args.run_dir, args.repo_id, private=args.private, merged=args.merged)
    return 2


if __name__ == "__main__":
    sys.exit(main())
