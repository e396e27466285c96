"""Push a finished run to the Hugging Face Hub: token, repo id check, model card, one commit.

    python -m studio push RUN_DIR REPO_ID [--private|--public] [--merged]

Stages exactly the files that belong (adapter or merged weights, tokenizer, chat template, README.md
card, loss curve) in a folder under STUDIO_HOME/exports/, then makes one commit with them. The token
lives in memory, in HF_TOKEN, in huggingface_hub's login, or (if the user asks) in
STUDIO_HOME/.secrets/hf_token with mode 0600; it is never written anywhere else nor put into an
error message. Knows nothing about training or the UI; the model card is built in studio/card.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from studio import models, workspace
from studio.publish import card, export

TOKENS_URL = "https://huggingface.co/settings/tokens"
_MAX_REPO_ID = 96


class HubError(ValueError):
    """A push that failed for a reason the user can act on; `retryable` when pressing Push again may work."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class PushResult:
    """Where a finished push landed."""

    repo_id: str
    repo_url: str
    commit_id: str
    commit_url: str
    private: bool
    merged: bool
    files: list[str] = field(default_factory=list)


# --- token --------------------------------------------------------------------------------------
def mask_token(token: str | None) -> str:
    """A token as it may be shown: its prefix and last four characters.

    >>> mask_token("hf_abcdefghijklmnopqrstuvwxyz")
    'hf_****wxyz'
    """
    if not token:
        return "(none)"
    prefix = "hf_" if token.startswith("hf_") else ""
    return f"{prefix}****{token[-4:]}" if len(token) > 8 else "****"


def _secret_file() -> Path:
    return workspace.home() / ".secrets" / "hf_token"


def remember_token(token: str) -> None:
    """Keep `token` for later sessions in STUDIO_HOME/.secrets/hf_token (dir 0700, file 0600)."""
    path = _secret_file()
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.parent.chmod(0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token.strip() + "\n")
    path.chmod(0o600)


def forget_token() -> None:
    """Delete the token the studio remembered (HF_TOKEN and huggingface_hub's login stay)."""
    _secret_file().unlink(missing_ok=True)


def find_token(passed: str | None = None) -> tuple[str | None, str]:
    """(token, where it came from): the value passed in, HF_TOKEN, the studio's saved one, the login."""
    if passed and passed.strip():
        return passed.strip(), "the token you entered"
    if os.environ.get("HF_TOKEN", "").strip():
        return os.environ["HF_TOKEN"].strip(), "HF_TOKEN"
    saved = _secret_file()
    if saved.is_file() and saved.read_text(encoding="utf-8").strip():
        return saved.read_text(encoding="utf-8").strip(), "the token saved in the studio"
    from huggingface_hub import get_token

    login = get_token()
    return (login, "your `hf auth login`") if login else (None, "")


def token_status(passed: str | None = None) -> str:
    """One line for the Hub tab: which token a push would use, masked, or how to provide one."""
    token, source = find_token(passed)
    if token is None:
        return f"No Hugging Face token: paste a token with write access (create one at {TOKENS_URL}) or set HF_TOKEN."
    return f"Using {mask_token(token)} from {source}."


# --- repo id and endpoint -----------------------------------------------------------------------
def check_repo_id(repo_id: str) -> str:
    """Return a valid 'namespace/name' repo id or raise HubError saying what to change (no request made).

    >>> check_repo_id(" alice/smol-sft ")
    'alice/smol-sft'
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = (repo_id or "").strip()
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubError(
            f"repo id {repo_id!r} must look like 'your-username/model-name' (one '/', both parts non-empty)"
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise HubError(
            f"repo id {repo_id!r} is not allowed: use letters, digits, '-', '_' or '.', at most "
            f"{_MAX_REPO_ID} characters, no '--' or '..', not starting or ending with '-' or '.'"
        ) from exc
    return repo_id


def endpoint() -> str:
    """The Hub address: HF_ENDPOINT when set (read now, not at import), else huggingface.co."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


@contextlib.contextmanager
def _online() -> Iterator[None]:
    # The studio runs with HF_HUB_OFFLINE=1 so loading a model never waits on the network; a push
    # is the user explicitly asking to reach the Hub, so lift the flag for these calls only.
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _explain(exc: Exception, token: str, source: str, repo_id: str) -> HubError:
    """Turn a huggingface_hub / network exception into a message that names the fix, token masked."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    who = f"the token {mask_token(token)} from {source}"
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        detail = (exc.server_message or "").replace(token, mask_token(token)).splitlines()
        detail_text = f" (the Hub said: {detail[0]})" if detail else ""
        if status == 401:
            return HubError(
                f"{who} is invalid or expired (401) — create a new one with write access at {TOKENS_URL}"
            )
        if status == 403:
            return HubError(
                f"{who} may not write to {repo_id!r} (403){detail_text}: it is read-only or has no access to "
                f"that namespace — use a token with the 'write' role from {TOKENS_URL}"
            )
        if status >= 500 or status == 429:
            return HubError(f"the Hub is busy or failing ({status}){detail_text} — press Push again", True)
        return HubError(f"the Hub refused the push ({status}){detail_text}")
    if isinstance(exc, httpx2.TransportError | ConnectionError | TimeoutError | OSError):
        reason = (
            str(exc).replace(token, mask_token(token)).splitlines()[0] if str(exc) else type(exc).__name__
        )
        return HubError(
            f"could not reach the Hugging Face Hub at {endpoint()}: {reason} — check the network and press Push again",
            retryable=True,
        )
    return HubError(f"push failed: {type(exc).__name__}")


def _check_can_write(api, token: str, source: str) -> str:
    """The account name behind `token`; HubError when the token is read-only."""
    info = api.whoami(token=token)
    access = (info.get("auth") or {}).get("accessToken") or {}
    if access.get("role") == "read":
        raise HubError(
            f"the token {mask_token(token)} from {source} is read-only — pushing needs a token with the "
            f"'write' role (or a fine-grained one allowed to write repos): create one at {TOKENS_URL}"
        )
    return str(info.get("name") or "")


# --- staging and push ---------------------------------------------------------------------------
def stage(run: export.RunFolder, repo_id: str, merged: bool) -> Path:
    """Copy the files that belong in the repo, plus card and loss curve, into a fresh exports folder."""
    source = export.merged_dir(run) if merged else run.adapter_dir
    folder = Path(tempfile.mkdtemp(prefix=f"{run.run_id}-stage-", dir=workspace.exports_dir()))
    for path in export.shareable_files(source, merged):
        shutil.copy2(path, folder / path.name)
    base = card.hub_base_model(run.model_spec)
    if not merged:
        card.rewrite_adapter_base(folder / "adapter_config.json", base or Path(run.model_spec).name)
    curve = card.plot_loss(run.metrics, folder / card.CURVE_NAME)
    (folder / "README.md").write_text(card.model_card(run, repo_id, merged, curve), encoding="utf-8")
    return folder


def push(
    run_dir: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = True,
    merged: bool = False,
    remember: bool = False,
) -> PushResult:
    """Push a completed run's adapter (or merged model) as one commit; return where it landed."""
    repo_id = check_repo_id(repo_id)
    run = export.load_run(run_dir)
    export.require_completed(run)
    merged = merged or run.is_full_model
    token, source = find_token(token)
    if token is None:
        raise HubError(token_status())
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=endpoint())
    folder: Path | None = None
    try:
        with _online():
            _check_can_write(api, token, source)
            if remember:
                remember_token(token)
            folder = stage(run, repo_id, merged)
            repo_url = api.create_repo(repo_id, token=token, private=private, exist_ok=True)
            files = sorted(p.name for p in folder.iterdir() if p.is_file())
            operations = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=str(folder / n)) for n in files]
            what = "merged model" if merged else "adapter"
            info = api.create_commit(
                repo_id,
                operations,
                commit_message=f"Upload {what} from Tune Studio run {run.run_id}",
                token=token,
            )
    except HubError:
        raise
    except ValueError as exc:  # huggingface_hub's own checks, e.g. README metadata the Hub rejects
        raise HubError(str(exc).replace(token, mask_token(token))) from None
    except Exception as exc:
        raise _explain(exc, token, source, repo_id) from None
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return PushResult(repo_id, str(repo_url), info.oid, info.commit_url, private, merged, files)


def export_zip(run_dir: str | Path, merged: bool = False) -> Path:
    """Zip the adapter (or merged model) with its card into STUDIO_HOME/exports/ for download."""
    run = export.load_run(run_dir)
    export.require_completed(run)
    merged = merged or run.is_full_model
    repo_hint = f"your-username/{run.run_id}"
    folder = stage(run, repo_hint, merged)
    try:
        target = workspace.exports_dir() / f"{run.run_id}-{'merged' if merged else 'adapter'}.zip"
        return export.zip_folder(folder, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(run_dir: str, repo_id: str, private: bool = True, merged: bool = False) -> int:
    """CLI twin of the Hub tab: print the repo and commit URLs, or one line saying what went wrong."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    try:
        result = push(run_dir, repo_id, private=private, merged=merged)
    except (ValueError, models.ModelNotFound) as exc:
        print(f"push failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # one line, no traceback: the CLI is for people, not debuggers
        print(
            f"push failed: unexpected {type(exc).__name__} — rerun, and report it if it persists",
            file=sys.stderr,
        )
        return 1
    visibility = "private" if result.private else "public"
    print(f"pushed {len(result.files)} files to {result.repo_url} ({visibility})")
    print(f"commit {result.commit_id}: {result.commit_url}")
    return 0


def export_gguf(run_dir: str | Path, f16: bool = False) -> Path:
    """Merge a completed run and write it as one GGUF file in STUDIO_HOME/exports/ (Llama family only)."""
    run = export.load_run(run_dir)
    export.require_completed(run)
    return export.gguf_for_run(run, f16=f16)
