"""`python -m studio models ...`: the Models tab's actions on the command line.

    python -m studio models search [QUERY] [--sort downloads|likes|last_modified] [--limit N]
    python -m studio models info REPO_ID
    python -m studio models pull REPO_ID
    python -m studio models list
    python -m studio models rm REPO_ID

The token is the one the Hub tab stores (or HF_TOKEN); it is never an argument, so it never shows
in a process list or a shell history.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="search, inspect, download, list and delete Hub models")
    actions = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    search = actions.add_parser("search", help="search text-generation models on the Hub")
    search.add_argument("query", nargs="?", default="")
    search.add_argument("--sort", default="downloads", choices=("downloads", "likes", "last_modified"))
    search.add_argument("--limit", type=int, default=20)
    search.set_defaults(handler=_search)
    info = actions.add_parser(
        "info", help="size, license, gated, chat template and memory fit, before downloading"
    )
    info.add_argument("repo_id")
    info.set_defaults(handler=_info)
    pull = actions.add_parser(
        "pull", help="download a model (resumes a cut download)", description="Exit 1 when it fails."
    )
    pull.add_argument("repo_id")
    pull.set_defaults(handler=_pull)
    listing = actions.add_parser("list", help="models on this machine: size on disk, last used")
    listing.set_defaults(handler=_list)
    rm = actions.add_parser("rm", help="delete a downloaded model")
    rm.add_argument("repo_id")
    rm.set_defaults(handler=_rm)


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def _search(args: argparse.Namespace) -> int:
    from studio import hubmodels

    try:
        found = hubmodels.search(args.query, sort=args.sort, limit=args.limit)
    except ValueError as exc:
        return _fail(exc)
    for m in found:
        flags = " ".join(f for f, on in (("gated", m.gated), ("downloaded", m.downloaded)) if on)
        print(f"{m.repo_id:50} {m.downloads:>10} downloads {m.likes:>6} likes  {m.last_modified}  {flags}")
    if not found:
        print(f"no text-generation model matches {args.query!r}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from studio import hubmodels

    try:
        look = hubmodels.look(args.repo_id)
    except ValueError as exc:
        return _fail(exc)
    print("\n".join(look.lines()))
    for name, size in look.files.items():
        print(f"  {name} ({hubmodels.human_bytes(size)})")
    return 0


def _pull(args: argparse.Namespace) -> int:

    from studio import hubclient, hubmodels

    show = hubclient.progress_printer()

    try:
        folder = hubmodels.pull(args.repo_id, show)
    except (ValueError, OSError) as exc:
        return _fail(exc)
    print(f"{args.repo_id} is ready in {folder}: use it as the model '{args.repo_id}'")
    return 0


def _list(args: argparse.Namespace) -> int:
    from studio import hubmodels

    for m in hubmodels.local_models():
        used = f"last used {m.last_used}" if m.last_used else ""
        print(f"{m.spec:50} {hubmodels.human_bytes(m.size_bytes):>10}  {m.state}  {used}")
    return 0


def _rm(args: argparse.Namespace) -> int:
    from studio import hubmodels

    try:
        freed = hubmodels.remove(args.repo_id)
    except ValueError as exc:
        return _fail(exc)
    print(f"deleted {args.repo_id}: {hubmodels.human_bytes(freed)} freed")
    return 0
