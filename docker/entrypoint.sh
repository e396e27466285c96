#!/usr/bin/env bash
# Tune Studio container entrypoint.
#
#   (no arguments) or "app"   serve the studio on 0.0.0.0:$STUDIO_PORT, only with a password
#   anything else             run that command as given, e.g. `python -m studio train ...` or
#                             `accelerate launch ...` (training jobs serve nothing, need no login)
#
# The password comes from STUDIO_AUTH=user:password, or from the file named by STUDIO_AUTH_FILE
# (a Docker secret), so that it need not appear in `docker inspect`. It is handed to app.py through
# the environment, never on its command line, where `ps` would show it.
set -euo pipefail

APP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Run with --user UID:GID for a bind mount, the user may have no home folder it can write;
# Python caches (torch, triton, pip) then go to /tmp instead of failing.
if [[ -z "${HOME:-}" || ! -w "${HOME:-/}" ]]; then
    export HOME=/tmp/studio-home
    mkdir -p "$HOME"
fi

fail() {
    printf 'tune-studio: %s\n' "$1" >&2
    exit 64
}

read_auth_file() {
    local file="$1"
    [[ -r "$file" ]] || fail "STUDIO_AUTH_FILE=$file cannot be read: mount the secret file there, or set STUDIO_AUTH instead"
    # The first line only, without its newline: secret files usually end with one.
    IFS= read -r STUDIO_AUTH < "$file" || true
    STUDIO_AUTH="${STUDIO_AUTH%$'\r'}"
}

check_auth() {
    if [[ -n "${STUDIO_AUTH_FILE:-}" ]]; then
        read_auth_file "$STUDIO_AUTH_FILE"
    fi
    local example="docker run -e STUDIO_AUTH='ana:a-long-password' -p 7860:7860 ..."
    if [[ -z "${STUDIO_AUTH:-}" ]]; then
        fail "refusing to start without a password: the studio listens on all interfaces inside the container, and anyone who reaches the port could start runs and read the workspace. Set STUDIO_AUTH=user:password (or STUDIO_AUTH_FILE=/run/secrets/...), e.g. $example"
    fi
    if [[ "$STUDIO_AUTH" != *:* ]]; then
        fail "STUDIO_AUTH must look like user:password (a colon between them), e.g. $example"
    fi
    local user="${STUDIO_AUTH%%:*}" password="${STUDIO_AUTH#*:}"
    if [[ -z "$user" ]]; then
        fail "STUDIO_AUTH has an empty user name before the colon: write it as user:password"
    fi
    if (( ${#password} < 8 )); then
        fail "the password in STUDIO_AUTH is ${#password} characters long: use at least 8"
    fi
    export STUDIO_AUTH
}

check_workspace() {
    local dir="${STUDIO_HOME:-/data/studio}"
    mkdir -p "$dir" 2>/dev/null || true
    if [[ ! -d "$dir" || ! -w "$dir" ]]; then
        fail "STUDIO_HOME=$dir is not a writable folder for uid $(id -u): mount a volume there (-v studio-data:$dir), or make the host folder writable by uid $(id -u), or run with --user \"\$(id -u):\$(id -g)\""
    fi
}

if [[ $# -eq 0 || "$1" == "app" ]]; then
    [[ $# -gt 0 ]] && shift
    check_auth
    check_workspace
    cd "$APP_DIR"
    exec python app.py --host 0.0.0.0 --port "${STUDIO_PORT:-7860}" "$@"
fi

exec "$@"
