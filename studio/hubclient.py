"""Talking to the Hugging Face Hub for downloads: endpoint, token, one-line errors, progress from disk.

Every Hub call of the model and dataset downloaders goes through `calling(...)`, which turns
huggingface_hub's exceptions into `HubError`s that say in one line what happened and what to do:
the Hub cannot be reached (or HF_HUB_OFFLINE is set), a gated model whose license must be accepted,
a private or missing repo, a token that is refused. The endpoint is read from HF_ENDPOINT at each
call (mirrors, enterprise hubs); the token is the one studio/publish/hub.py finds and is never put
into a message, a log or a file. `watch(...)` measures a download's progress from the bytes on disk
(complete files plus huggingface_hub's `.incomplete` files), so a resumed download counts right.
Knows nothing about models' contents, data formats or the UI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"
DISK_RESERVE = 200 * 1000**2  # keep this much free after a download: the system and run folders need room


class HubError(ValueError):
    """A Hub request that failed for a reason the user can act on; the message is one line."""


class HubUnreachable(HubError):
    """The Hub cannot be reached (no network, a wrong HF_ENDPOINT, or HF_HUB_OFFLINE=1)."""


def endpoint() -> str:
    """The Hub's address: HF_ENDPOINT when set (a mirror or an enterprise Hub), else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    """Whether huggingface_hub was started with HF_HUB_OFFLINE=1 (it reads the variable once)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def token() -> str | None:
    """The token the Hub tab stores (or HF_TOKEN, or `hf auth login`); None when there is none."""
    from studio.publish.hub import find_token

    return find_token()[0]


def api():
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), token=token() or False)


def unreachable_line() -> str:
    if offline():
        return (
            "The Hub is switched off here (HF_HUB_OFFLINE=1): local models and files work; "
            "unset HF_HUB_OFFLINE to search and download."
        )
    return (
        f"The Hugging Face Hub cannot be reached at {endpoint()}: searching and downloading need the "
        "network (or HF_ENDPOINT pointing at a mirror); local models and files still work."
    )


def reachable(timeout: float = 4.0) -> bool:
    """One quick request, no retries: does the Hub answer at all?"""
    if offline():
        return False
    from huggingface_hub.utils import get_session

    try:
        response = get_session().get(f"{endpoint()}/api/models", params={"limit": 1}, timeout=timeout)
    except Exception:  # any failure to get an answer means the same thing to the user
        return False
    return response.status_code < 500


def require_reachable() -> None:
    """Raise HubUnreachable at once (huggingface_hub's listings retry for ~25 s before failing)."""
    if not reachable():
        raise HubUnreachable(unreachable_line())


def status_line() -> str:
    """One line saying whether the Hub answers, for the top of the Models view."""
    return f"The Hub answers at {endpoint()}." if reachable() else unreachable_line()


def _access_line(repo_id: str, kind: str, has_token: bool, gated: bool) -> str:
    page = f"{endpoint()}/{'datasets/' if kind == 'dataset' else ''}{repo_id}"
    if gated:
        if has_token:
            return (
                f"{repo_id} is gated and your token has no access yet: open {page}, accept the license "
                "(some need approval), then try again."
            )
        return (
            f"{repo_id} is gated: open {page}, accept its license, then paste a token with read access "
            "in the Hub tab (or set HF_TOKEN) and try again."
        )
    if has_token:
        return f"{repo_id} was not found, or your token cannot read it: check the id at {page}."
    return (
        f"{repo_id} was not found on the Hub. If it is private, paste a token with read access in the "
        "Hub tab (or set HF_TOKEN) and try again."
    )


@contextlib.contextmanager
def calling(repo_id: str = "", kind: str = "model") -> Iterator[None]:
    """Translate huggingface_hub's exceptions into one-line HubErrors naming the fix."""
    import httpx2
    from huggingface_hub import errors

    try:
        yield
    except (httpx2.TransportError, errors.OfflineModeIsEnabled) as exc:  # no answer, or a cut one
        raise HubUnreachable(unreachable_line()) from exc
    except errors.LocalEntryNotFoundError as exc:  # raised when the listing failed for lack of network
        raise HubUnreachable(unreachable_line()) from exc
    except errors.GatedRepoError as exc:
        raise HubError(_access_line(repo_id, kind, token() is not None, gated=True)) from exc
    except errors.RepositoryNotFoundError as exc:
        raise HubError(_access_line(repo_id, kind, token() is not None, gated=False)) from exc
    except errors.RevisionNotFoundError as exc:
        raise HubError(f"{repo_id}: that revision does not exist on the Hub") from exc
    except errors.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise HubError(_access_line(repo_id, kind, token() is not None, gated=False)) from exc
        raise HubError(f"the Hub answered {status} for {repo_id or 'the request'}: try again later") from exc


def check_room(folder: Path, needed: int) -> None:
    """Raise HubError when the disk holding `folder` lacks `needed` bytes plus a reserve."""
    free = shutil.disk_usage(folder).free
    if free < needed + DISK_RESERVE:
        raise HubError(
            f"not enough disk space: the download needs {human_bytes(needed)} and {human_bytes(free)} are "
            f"free on the disk of {folder} (keeping {human_bytes(DISK_RESERVE)} spare). Delete a local model "
            "or free space, then try again."
        )


# --- progress --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    """Where a download stands: bytes on disk of the total, speed and time left."""

    repo_id: str
    state: str  # "starting" | "downloading" | "done" | "failed"
    done_bytes: int = 0
    total_bytes: int = 0
    speed: float = 0.0  # bytes per second, smoothed
    message: str = ""

    @property
    def fraction(self) -> float:
        return min(self.done_bytes / self.total_bytes, 1.0) if self.total_bytes else 0.0

    @property
    def seconds_left(self) -> float | None:
        if self.state != "downloading" or self.speed <= 0:
            return None
        return max(self.total_bytes - self.done_bytes, 0) / self.speed

    def line(self) -> str:
        """'41.2 MB of 269.1 MB (15%) · 12.0 MB/s · 19 s left'."""
        text = f"{human_bytes(self.done_bytes)} of {human_bytes(self.total_bytes)} ({self.fraction:.0%})"
        if self.state == "downloading" and self.speed > 0:
            text += f" · {human_bytes(self.speed)}/s"
            if (left := self.seconds_left) is not None:
                text += f" · {human_seconds(left)} left"
        if self.message:
            text += f" · {self.message}"
        return text


def progress_printer(every_s: float = 2.0):
    """A progress callback for the command line: one line per state change, and while
    downloading at most one line every `every_s` seconds."""
    import time

    last = [0.0]

    def show(progress: Progress) -> None:
        if progress.state == "downloading" and time.monotonic() - last[0] < every_s:
            return
        last[0] = time.monotonic()
        print(f"{progress.state}: {progress.line()}", flush=True)

    return show


def human_bytes(n: float) -> str:
    """
    >>> human_bytes(1536)
    '1.5 kB'
    """
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


PARTIAL = ".partial"  # where half-downloaded files wait, named by their ETag, until they are whole


def bytes_on_disk(folder: Path, names: list[str]) -> int:
    """Bytes of `names` already in `folder`, plus those of half-downloaded files."""
    done = sum((folder / n).stat().st_size for n in names if (folder / n).is_file())
    partial = folder / PARTIAL
    if partial.is_dir():
        done += sum(p.stat().st_size for p in partial.glob("*.part") if p.is_file())
    return done


def fetch(repo_id: str, names: list[str], folder: Path, revision: str, repo_type: str = "model") -> None:
    """Download `names` of a repo into `folder`, resuming any half-downloaded file.

    huggingface_hub 2.4 resumes a cut transfer within one call (a few retries with a Range request),
    but deletes its temporary file when the call fails; so each file goes to
    `folder/.partial/<name>.<etag>.part` here, and the next call (after a longer cut or an app
    restart) continues it with a Range request through huggingface_hub's `http_get`. The metadata
    request follows the Hub's redirects; the token is sent to the Hub only, never to the file
    storage a large file redirects to.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    secret = token() or False
    for name in names:
        target = folder / name
        url = hf_hub_url(repo_id, name, repo_type=repo_type, revision=revision, endpoint=endpoint())
        meta = get_hf_file_metadata(url, token=secret, endpoint=endpoint())
        if target.is_file() and target.stat().st_size == meta.size:
            continue
        part = folder / PARTIAL / f"{name.replace('/', '--')}.{(meta.etag or 'x')[:40]}.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        same_origin = urlsplit(meta.location)[:2] == urlsplit(url)[:2]
        headers = build_hf_headers(token=secret) if same_origin else {}
        with open(part, "ab") as fh:
            http_get(meta.location, fh, resume_size=fh.tell(), headers=headers, expected_size=meta.size)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, target)
    shutil.rmtree(folder / PARTIAL, ignore_errors=True)  # parts of an older revision, if any


def watch(
    work: Callable[[], object],
    folder: Path,
    names: list[str],
    total: int,
    repo_id: str,
    on_progress: Callable[[Progress], None],
    every: float = 0.5,
) -> object:
    """Run `work` in a thread and report its progress from the disk every `every` seconds."""
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["value"] = work()
        except BaseException as exc:  # re-raised in the caller's thread below
            result["error"] = exc

    thread = threading.Thread(target=run, name=f"download {repo_id}", daemon=True)
    start_bytes = bytes_on_disk(folder, names)
    last_bytes, last_time, speed = start_bytes, time.monotonic(), 0.0
    on_progress(Progress(repo_id, "starting", start_bytes, total))
    thread.start()
    while thread.is_alive():
        thread.join(every)
        now, done = time.monotonic(), bytes_on_disk(folder, names)
        if now > last_time:
            rate = max(done - last_bytes, 0) / (now - last_time)
            speed = rate if speed == 0 else 0.6 * speed + 0.4 * rate
        last_bytes, last_time = done, now
        on_progress(Progress(repo_id, "downloading", min(done, total), total, speed))
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")


# --- downloads in the background -------------------------------------------------------------------
_JOBS: dict[str, Progress] = {}
_RESULTS: dict[str, object] = {}
_LOCK = threading.Lock()


def start_job(key: str, repo_id: str, run: Callable[[Callable[[Progress], None]], object]) -> Progress:
    """Run `run(report)` in a background thread, one per key; its progress is kept for `job(key)`.

    A job already starting or downloading is not started twice. When `run` raises a HubError,
    ValueError or OSError, the job ends "failed" with the error's one-line message.
    """
    with _LOCK:
        current = _JOBS.get(key)
        if current and current.state in ("starting", "downloading"):
            return current
        _JOBS[key] = Progress(repo_id, "starting", message="asking the Hub")
        _RESULTS.pop(key, None)

    def keep(progress: Progress) -> None:
        with _LOCK:
            _JOBS[key] = progress

    def work() -> None:
        try:
            result = run(keep)
        except (ValueError, OSError) as exc:  # HubError is a ValueError
            last = job(key) or Progress(repo_id, "failed")
            keep(Progress(repo_id, "failed", last.done_bytes, last.total_bytes, message=str(exc)))
            return
        with _LOCK:
            _RESULTS[key] = result
            _JOBS[key] = Progress(repo_id, "done", _JOBS[key].total_bytes, _JOBS[key].total_bytes)

    threading.Thread(target=work, name=f"download {key}", daemon=True).start()
    return job(key)  # type: ignore[return-value]


def job(key: str) -> Progress | None:
    with _LOCK:
        return _JOBS.get(key)


def job_result(key: str) -> object | None:
    """What a finished job returned (None while it runs, or when it failed)."""
    with _LOCK:
        return _RESULTS.get(key)
