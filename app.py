"""Launch Tune Studio in the browser.

Run as: python app.py [--host 127.0.0.1] [--port 7860] [--auth USER:PASSWORD]

Binds 127.0.0.1 unless told otherwise, and refuses any other address without a password
(`--auth` or STUDIO_AUTH=user:password), because the studio can start processes and read files in
its workspace.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Tune Studio: fine-tune language models in the browser")
    parser.add_argument("--host", default=os.environ.get("STUDIO_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("STUDIO_PORT", "7860")))
    parser.add_argument(
        "--auth",
        default=os.environ.get("STUDIO_AUTH"),
        metavar="USER:PASSWORD",
        help="require this login (needed for any non-loopback --host)",
    )
    args = parser.parse_args(argv)
    if args.auth and ":" not in args.auth:
        parser.error("--auth must look like USER:PASSWORD")
    if not _is_loopback(args.host) and not args.auth:
        parser.error(
            f"refusing to serve on {args.host} without a password: anyone who reaches the port could "
            "start runs and read the workspace. Add --auth USER:PASSWORD (or set STUDIO_AUTH), or use "
            "--host 127.0.0.1"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from studio.ui.app import launch

    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    launch(host=args.host, port=args.port, auth=auth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
