"""The API key of the model server: where it comes from, where it is kept, how it may be shown.

The key lives in STUDIO_API_KEY or in STUDIO_HOME/.secrets/api_key (dir 0700, file 0600), like the
Hub token; it is never written anywhere else, never logged and never put into a message (only its
masked form). Knows nothing about HTTP or models.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path

from studio import workspace

ENV = "STUDIO_API_KEY"
PREFIX = "sk-studio-"


def key_file() -> Path:
    return workspace.home() / ".secrets" / "api_key"


def mask_key(key: str | None) -> str:
    """A key as it may be shown: its prefix and last four characters.

    >>> mask_key("sk-studio-abcdefghijklmnop")
    'sk-studio-****mnop'
    """
    if not key:
        return "(none)"
    prefix = PREFIX if key.startswith(PREFIX) else ""
    return f"{prefix}****{key[-4:]}" if len(key) > 12 else "****"


def make_key() -> str:
    """Create a new random key, keep it in the secrets file (replacing an older one), return it."""
    key = PREFIX + secrets.token_urlsafe(24)
    path = key_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    path.chmod(0o600)
    return key


def forget_key() -> None:
    key_file().unlink(missing_ok=True)


def find_key() -> tuple[str | None, str]:
    """(key, where it came from): STUDIO_API_KEY, else the saved file; (None, "") when neither."""
    if os.environ.get(ENV, "").strip():
        return os.environ[ENV].strip(), ENV
    path = key_file()
    if path.is_file() and path.read_text(encoding="utf-8").strip():
        return path.read_text(encoding="utf-8").strip(), str(path)
    return None, ""


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server reachable from this computer only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, key: str | None) -> None:
    """Refuse to serve beyond this computer without a key (ValueError saying how to make one)."""
    if key is None and not is_loopback(host):
        raise ValueError(
            f"serving on {host} makes the models reachable from other computers, so it needs an API key: "
            f"run `python -m studio serve --make-key` (saved in {key_file()}) or set {ENV}, "
            "or serve on 127.0.0.1"
        )


def authorized(header: str | None, key: str | None) -> bool:
    """Whether an `Authorization` header carries the key (always, when no key is required)."""
    if key is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())
