"""The command line, one registry: each command module adds its own subparser to `python -m studio`.

Every UI action has a twin here, and the UI calls the same core function as the command.
`python -m studio --help` lists them all; `python -m studio COMMAND --help` gives the details.
A command module exposes `register(subparsers)`, which adds its parser(s) and sets `handler`, a
function of the parsed arguments that returns the exit code. Registration must stay light:
heavy imports (torch, transformers, TRL) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module registers its own commands, in the order `--help` lists them.
COMMAND_MODULES = (
    "studio.data.commands",  # data check, data pull
    "studio.model_commands",  # models search, info, pull, list, rm
    "studio.train.commands",  # train, runs, cluster
    "studio.prefs.commands",  # votes
    "studio.publish.commands",  # push, export
    "studio.serve.commands",  # serve
    "studio.evaluate.commands",  # eval
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m studio",
        description="Tune Studio from the command line: the same actions as the browser app.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
