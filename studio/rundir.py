"""THE run-folder contract: every file of `STUDIO_HOME/runs/<run_id>/` is read and written here.

recipe.yaml, launch.json, status.json, metrics.jsonl, probes.json, train.log, checkpoints/ and
adapter/ (docs/ARCHITECTURE.md lists their keys). Every reader is tolerant in one way: a missing
or unreadable file reads as empty, a torn last line of metrics.jsonl (a kill mid-write) is
skipped. Run ids are made here and nowhere else. Imports no torch or transformers: the app and
the run queue use it.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from studio import workspace

RECIPE, LAUNCH, STATUS, METRICS, PROBES, LOG = (
    "recipe.yaml",
    "launch.json",
    "status.json",
    "metrics.jsonl",
    "probes.json",
    "train.log",
)


# What a stopped run with no complete checkpoint says (the trainer or the queue writes it as its error).
NOTHING_TO_RESUME = (
    "stopped before the first checkpoint — nothing to resume: Resume starts it again from step 0"
)


# ---------------------------------------------------------------- run ids and folders


def new_run_id(method: str, model: str = "") -> str:
    """`<date>-<time>-<method>[-<model>]`, unused in STUDIO_HOME/runs (not yet claimed).

    >>> new_run_id("sft").split("-")[2]
    'sft'
    """
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    short = Path(model).name.replace("_", "-")[:24] if model else ""
    base = workspace.check_name("-".join(part for part in (stamp, method, short) if part), "run id")
    run_id, n = base, 1
    while workspace.run_path(run_id).exists():
        n += 1
        run_id = f"{base}-{n}"
    return run_id


def claim_run_dir(method: str, model: str = "") -> Path:
    """Create a new run folder atomically: two launches in the same second get different ids."""
    for _ in range(1000):
        path = workspace.run_path(new_run_id(method, model))
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            continue
        return path
    raise ValueError(f"could not create a new run folder in {workspace.runs_dir()}")


_STAMPED = re.compile(r"^(\d{8})-(\d{4})\d{2}-")  # a run id new_run_id made: date, hour and minute
_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
NAME_MAX = 80


def dataset_short(spec: str) -> str:
    """A dataset spec as a short word for names.

    >>> dataset_short("sample:alpaca.jsonl"), dataset_short("/data/My Set.csv"), dataset_short("org/qa")
    ('alpaca', 'My-Set', 'qa')
    """
    name = Path(str(spec).removeprefix("sample:").rstrip("/")).name
    for suffix in _DATA_SUFFIXES:
        name = name.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-.")[:24]


def default_name(method: str, dataset: str, when: datetime | None = None) -> str:
    """A run's name until the user renames it: method, dataset and minute.

    >>> default_name("sft", "sample:alpaca.jsonl", datetime(2026, 11, 30, 3, 12))
    'sft-alpaca-20261130-0312'
    """
    stamp = (when or datetime.now()).strftime("%Y%m%d-%H%M")
    return "-".join(part for part in (method, dataset_short(dataset), stamp) if part)


def check_run_name(name: str) -> str:
    """A run name as the user typed it, trimmed; ValueError when it cannot be one."""
    name = " ".join(str(name or "").split())
    if not name or len(name) > NAME_MAX:
        raise ValueError(f"run name {name!r}: give 1 to {NAME_MAX} characters on one line")
    return name


def run_name(run_dir: Path) -> str:
    """What the studio calls a run: the name in launch.json (given at launch, editable); for a run
    started from a terminal, method + dataset + minute when its folder has a made-up id, else the
    folder name the user chose."""
    run_dir = Path(run_dir)
    name = read_launch(run_dir).get("name")
    if isinstance(name, str) and name.strip():
        return name.strip()
    stamped = _STAMPED.match(run_dir.name)
    recipe = read_recipe(run_dir)
    if stamped and recipe.get("method"):
        when = datetime.strptime("".join(stamped.groups()), "%Y%m%d%H%M")
        return default_name(str(recipe["method"]), str(recipe.get("dataset") or ""), when)
    return run_dir.name


def rename(run_dir: Path, name: str) -> str:
    """Give a run a new name (kept in launch.json; the folder and its id stay as they are)."""
    name = check_run_name(name)
    write_launch(run_dir, {**read_launch(run_dir), "name": name})
    return name


def find(run: str | Path) -> Path:
    """A run folder from a path or a run id under STUDIO_HOME/runs/."""
    path = Path(run).expanduser()
    if path.is_dir():
        return path.resolve()
    candidate = workspace.runs_dir() / str(run)
    if str(run) and "/" not in str(run) and candidate.is_dir():
        return candidate
    raise ValueError(
        f"run {str(run)!r} not found: give a run folder or an id listed in {workspace.runs_dir()}"
    )


# ---------------------------------------------------------------- the JSON and YAML records


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def damage(run_dir: Path) -> list[str]:
    """What makes the folder's JSON/YAML records unreadable (they are written atomically, so this is
    damage, not a run in progress), one message each naming the file, the line and the fix."""
    import yaml

    found = []
    for name in (STATUS, LAUNCH, PROBES, RECIPE):
        path = Path(run_dir) / name
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            found.append(f"{path}: cannot be read ({exc}) — the run folder is damaged")
            continue
        try:
            data = yaml.safe_load(text) if name == RECIPE else json.loads(text)
        except json.JSONDecodeError as exc:
            found.append(f"{path} line {exc.lineno}: not valid JSON ({exc.msg}) — the run folder is damaged")
            continue
        except yaml.YAMLError as exc:
            found.append(f"{path}: not valid YAML ({exc}) — the run folder is damaged")
            continue
        if not isinstance(data, dict):
            found.append(
                f"{path}: expected a mapping, found {type(data).__name__} — the run folder is damaged"
            )
    return found


def read_status(run_dir: Path) -> dict:
    """status.json: state, pid, started_at, ended_at, exit_code, error, step, max_steps, ..."""
    return _read_json(Path(run_dir) / STATUS)


def write_status(run_dir: Path, status: dict) -> None:
    workspace.atomic_write_json(Path(run_dir) / STATUS, status)


def update_status(run_dir: Path, **fields) -> dict:
    """Merge `fields` into status.json (atomically), keeping what other writers put there."""
    status = {**read_status(run_dir), **fields}
    write_status(run_dir, status)
    return status


def read_launch(run_dir: Path) -> dict:
    """launch.json: how the studio queued the run (recipe, sets, method, num_processes, resume,
    created_at) and, once spawned, the process identity (argv, pid, pgid, pid_created)."""
    return _read_json(Path(run_dir) / LAUNCH)


def write_launch(run_dir: Path, launch: dict) -> None:
    workspace.atomic_write_json(Path(run_dir) / LAUNCH, launch)


def read_probes(run_dir: Path) -> dict:
    """probes.json: {"prompts": [...], "before": [...], "after": [...], "opening": "..."} (empty until
    written); `opening` is how most training answers start ("" when they share none)."""
    return _read_json(Path(run_dir) / PROBES)


def write_probes(
    run_dir: Path, prompts: list[str], before: list[str], after: list[str], opening: str = ""
) -> None:
    record = {"prompts": prompts, "before": before, "after": after, "opening": opening}
    workspace.atomic_write_json(Path(run_dir) / PROBES, record)


def read_recipe(run_dir: Path) -> dict:
    """recipe.yaml as a plain dict (the trainer writes the fully resolved recipe before training)."""
    import yaml

    try:
        data = yaml.safe_load((Path(run_dir) / RECIPE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def write_recipe(run_dir: Path, text: str) -> None:
    workspace.atomic_write_text(Path(run_dir) / RECIPE, text)


def log_path(run_dir: Path) -> Path:
    """train.log: the trainer's stdout and stderr (the queue opens it for the child, the trainer
    tees into it when started from a terminal)."""
    return Path(run_dir) / LOG


def holds_a_run(run_dir: Path) -> list[str]:
    """What in `run_dir` shows that a run already trained there (empty for a fresh or queued folder)."""
    return [name for name in (METRICS, "checkpoints", "adapter", RECIPE) if (Path(run_dir) / name).exists()]


def log_tail(run_dir: Path, lines: int = 40) -> str:
    """The last `lines` lines of train.log (read from its last 64 kB)."""
    path = log_path(run_dir)
    if not path.is_file():
        return ""
    with path.open("rb") as fh:
        fh.seek(max(path.stat().st_size - 64_000, 0))
        text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------- checkpoints and metrics


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int


def _is_complete(path: Path) -> bool:
    # trainer_state.json is written last, after weights, optimizer, scheduler and RNG state
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (path / "optimizer.pt").is_file() and (path / "scheduler.pt").is_file()


def checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Every checkpoint-N folder, oldest first, complete or not."""
    found = []
    for path in (Path(run_dir) / "checkpoints").glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit():
            found.append(Checkpoint(path, int(suffix)))
    return sorted(found, key=lambda c: c.step)


def last_complete_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest checkpoint that was fully written (a kill mid-save leaves a partial one)."""
    complete = [c for c in checkpoints(run_dir) if _is_complete(c.path)]
    return complete[-1] if complete else None


def discard_partial_checkpoints(run_dir: Path) -> list[Path]:
    """Delete checkpoints a kill left half-written, so nothing resumes from or rotates them."""
    removed = []
    for ckpt in checkpoints(run_dir):
        if not _is_complete(ckpt.path):
            shutil.rmtree(ckpt.path, ignore_errors=True)
            removed.append(ckpt.path)
    return removed


def _parse_metrics(data: bytes) -> list[dict]:
    rows = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl as a list of rows: step, epoch, loss, eval_loss, learning_rate, grad_norm,
    tokens_per_second and the method's own metrics (rewards/margins, ...)."""
    path = Path(run_dir) / METRICS
    try:
        return _parse_metrics(path.read_bytes())
    except OSError:
        return []


class MetricsFollower:
    """Reads only what metrics.jsonl gained since the last call (the Runs tab polls every tick).

    A line counts once it ends with a newline, so a line being written is read next time. If the
    file shrank (a resumed run truncates it past its checkpoint), it is read again from the start.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / METRICS
        self.rows: list[dict] = []
        self._offset = 0
        self._lock = threading.Lock()  # the app's handlers poll from several threads

    def poll(self) -> list[dict]:
        """Every row so far (a copy; only the bytes added since the last call were read)."""
        with self._lock:
            self._read_new()
            return list(self.rows)

    def _read_new(self) -> None:
        try:
            size = self.path.stat().st_size
        except OSError:
            size = 0
        if size < self._offset:
            self.rows, self._offset = [], 0
        if size > self._offset:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read(size - self._offset)
            complete = data[: data.rfind(b"\n") + 1]
            self.rows.extend(_parse_metrics(complete))
            self._offset += len(complete)


_followers: dict[Path, MetricsFollower] = {}


def follow_metrics(run_dir: Path) -> list[dict]:
    """`read_metrics` for a process that asks again and again (the app): each call reads only
    what the file gained since the previous one."""
    key = Path(run_dir).resolve()
    follower = _followers.get(key)
    if follower is None:
        follower = _followers.setdefault(key, MetricsFollower(key))
    return follower.poll()


def append_metrics(run_dir: Path, row: dict) -> None:
    """Add one line to metrics.jsonl (the trainer's callback is its only writer)."""
    with open(Path(run_dir) / METRICS, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric lines past `step`, so a resumed run logs no step twice."""
    kept = [row for row in read_metrics(run_dir) if int(row.get("step", 0)) <= step]
    text = "".join(json.dumps(row) + "\n" for row in kept)
    workspace.atomic_write_text(Path(run_dir) / METRICS, text)


def oom_message(run_dir: Path) -> str:
    estimate = read_status(run_dir).get("memory_estimate_gb")
    guess = f" (the estimate for this recipe was {estimate} GB)" if estimate else ""
    return (
        f"out of memory{guess}: use QLoRA (quantization.load_in_4bit=true), a smaller training.batch_size "
        "or data.max_length, or training.gradient_checkpointing=true"
    )
