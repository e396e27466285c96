"""`python -m studio push | export`: the Hub tab's actions on the command line."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    push = sub.add_parser(
        "push", help="push a completed run's adapter (or merged model) to the Hugging Face Hub"
    )
    push.add_argument("run_dir", help="a run folder, or a run id under STUDIO_HOME/runs")
    push.add_argument("repo_id", help="your-username/model-name")
    vis = push.add_mutually_exclusive_group()
    vis.add_argument("--private", dest="private", action="store_true", default=True)
    vis.add_argument("--public", dest="private", action="store_false")
    push.add_argument("--merged", action="store_true", help="push the merged model instead of the adapter")
    push.set_defaults(handler=_push)

    export = sub.add_parser("export", help="export a completed run: a zip, a merged model or a GGUF file")
    kinds = export.add_subparsers(dest="export_kind", required=True, metavar="KIND")
    zipped = kinds.add_parser("zip", help="zip the adapter (or --merged model) with its model card")
    zipped.add_argument("run_dir")
    zipped.add_argument("--merged", action="store_true", help="zip the merged model instead of the adapter")
    merge = kinds.add_parser(
        "merge", help="merge the adapter into its base model (a plain safetensors model)"
    )
    merge.add_argument("run_dir")
    gguf = kinds.add_parser(
        "gguf", help="merge and write one GGUF file for llama.cpp / Ollama (Llama family)"
    )
    gguf.add_argument("run_dir")
    gguf.add_argument("--f16", action="store_true", help="16-bit weights (default: 32-bit)")
    export.set_defaults(handler=_export)

    token = sub.add_parser("token", help="the saved Hugging Face token: where it comes from, or forget it")
    token.add_argument("action", choices=("status", "forget"))
    token.set_defaults(handler=_token)


def _push(args: argparse.Namespace) -> int:
    from studio.publish import hub

    return hub.main(args.run_dir, args.repo_id, private=args.private, merged=args.merged)


def _export(args: argparse.Namespace) -> int:
    from studio import models
    from studio.publish import export, hub

    try:
        if args.export_kind == "zip":
            path = hub.export_zip(args.run_dir, merged=args.merged)
        elif args.export_kind == "gguf":
            path = hub.export_gguf(args.run_dir, f16=args.f16)
        else:
            run = export.load_run(args.run_dir)
            export.require_completed(run)
            path = export.merged_dir(run)
    except (ValueError, OSError, models.ModelNotFound) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _token(args: argparse.Namespace) -> int:
    from studio.publish import hub

    if args.action == "forget":
        hub.forget_token()
        print("forgot the saved token (HF_TOKEN in the environment, if set, still applies)")
    else:
        print(hub.token_status())
    return 0
