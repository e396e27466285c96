"""`python -m studio serve`: the base model and tuned adapters behind an OpenAI-compatible API."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve the base model and adapters over an OpenAI-compatible API (/v1/chat/completions)",
        description="Serve the base model and tuned adapters over the OpenAI chat-completions protocol. "
        "Any host other than 127.0.0.1/localhost needs an API key (STUDIO_API_KEY or --make-key).",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: this computer only)"
    )
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model", default="default", help="base model: default, a local folder or a Hub id")
    serve.add_argument(
        "--adapters",
        nargs="*",
        default=[],
        metavar="RUN",
        help="run ids under STUDIO_HOME/runs or run/adapter folders to serve; 'all' = every finished run",
    )
    serve.add_argument("--max-batch", type=int, default=8, help="requests decoded together at most")
    serve.add_argument("--max-waiting", type=int, default=16, help="requests waiting beyond that (then 429)")
    serve.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    serve.add_argument(
        "--make-key",
        action="store_true",
        help="create a new API key in STUDIO_HOME/.secrets/api_key (printed nowhere) and exit",
    )
    serve.set_defaults(handler=_serve)


def _all_finished_runs() -> list[str]:
    from studio.chat.engine import list_adapters

    return [str(folder.parent) for folder in list_adapters() if folder.name == "adapter"]


def _serve(args: argparse.Namespace) -> int:
    from studio.serve import keys

    if args.make_key:
        key = keys.make_key()
        print(
            f"new API key {keys.mask_key(key)} saved in {keys.key_file()} (read it there; it is shown nowhere)"
        )
        return 0
    key, source = keys.find_key()
    try:
        keys.check_bind(args.host, key)
    except ValueError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    from studio import models
    from studio.serve import api

    runs = _all_finished_runs() if args.adapters == ["all"] else args.adapters
    try:
        served = api.load(args.model, runs, args.max_batch, args.max_waiting, args.dtype)
    except (ValueError, OSError, models.ModelNotFound) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 1
    where = f"http://{args.host}:{args.port}/v1"
    print(f"serving {', '.join(served.model_ids())} at {where}", flush=True)
    print(
        f"API key: {f'required ({keys.mask_key(key)} from {source})' if key else 'none (this computer only)'}"
    )
    api.run(served, args.host, args.port)
    return 0
