"""Docker HEALTHCHECK: the studio answers HTTP on its port (the login page counts as healthy).

Run as: python /app/docker/healthcheck.py   (exit 0 healthy, 1 not)
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('STUDIO_PORT', '7860')}/"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status < 500 else 1
    except urllib.error.HTTPError as exc:
        # 401/403 still prove the server is up and answering.
        return 0 if exc.code < 500 else 1
    except OSError as exc:
        print(f"studio not answering on {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
