"""Launch Tune Studio in the browser.

Run as: python app.py [--host 127.0.0.1] [--port 7860] [--auth USER:PASSWORD | --auth USERS_FILE]

A users file gives several logins, one `user:password` a line (blank lines and `#` comments
skipped): each annotator votes under their own name.

Binds 127.0.0.1 unless told otherwise, and refuses any other address without a password
(`--auth` or STUDIO_AUTH=user:password), because the studio can start processes and read files in
its workspace.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_users(path: str) -> list[tuple[str, str]]:
    """The logins of a users file: one `user:password` a line; blank lines and # comments skipped."""
    logins = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            raise ValueError(f"{path} line {number}: write one login as user:password")
        logins.append((user.strip(), password))
    if not logins:
        raise ValueError(f"{path}: no logins: write one user:password a line")
    return logins


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Tune Studio: fine-tune language models in the browser")
    parser.add_argument("--host", default=os.environ.get("STUDIO_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("STUDIO_PORT", "7860")))
    parser.add_argument(
        "--auth",
        default=os.environ.get("STUDIO_AUTH"),
        metavar="USER:PASSWORD",
        help="require this login, or the logins of a users file (needed for any non-loopback --host)",
    )
    args = parser.parse_args(argv)
    if args.auth and os.path.isfile(args.auth):
        try:
            args.logins = read_users(args.auth)
        except ValueError as exc:
            parser.error(str(exc))
    elif args.auth and ":" not in args.auth:
        parser.error("--auth must look like USER:PASSWORD, or name a users file (one user:password a line)")
    else:
        args.logins = [tuple(args.auth.split(":", 1))] if args.auth else None
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

    launch(host=args.host, port=args.port, auth=args.logins)
    return 0


if __name__ == "__main__":
    sys.exit(main())
