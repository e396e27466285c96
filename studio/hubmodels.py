"""Models from the Hugging Face Hub: search, look before downloading, download, list, delete.

    python -m studio models search|info|pull|list|rm

`look(repo_id)` says what a download would fetch (one set of weights: safetensors preferred, never
a duplicate .bin/.pth/GGUF/ONNX copy), its size, parameters, license, gated or not, chat template,
and whether LoRA / QLoRA / full training fits this machine (the estimate of studio/train/memory.py).
`pull(repo_id)` refuses up front when the disk lacks room, then downloads exactly those files into
STUDIO_HOME/models/hub/<org>--<name>/ (hubclient.fetch: huggingface_hub's metadata request and
`http_get`) with progress measured on disk; a cut connection or an app restart leaves the partial
file in place, and pulling again continues it with a Range request. `start_pull` runs a
pull in a background thread and keeps its latest progress for a page to poll.
Knows nothing about the UI; Hub access and its errors go through studio/hubclient.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from studio import hubclient, models, workspace
from studio.hubclient import HubError, Progress, human_bytes

SORTS = ("downloads", "likes", "last_modified", "trending_score")
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
FIT_RECIPES = {"LoRA": "lora_sft.yaml", "QLoRA": "qlora_sft.yaml", "Full": "full_sft.yaml"}

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
_ALWAYS = ("config.json", "generation_config.json", *_TOKENIZER_FILES, "README.md", "LICENSE", "LICENSE.txt")


@dataclass(frozen=True)
class Found:
    """One search result."""

    repo_id: str
    downloads: int
    likes: int
    last_modified: str
    gated: bool
    downloaded: bool


@dataclass
class Look:
    """What a download of `repo_id` would bring, and whether training it fits here."""

    repo_id: str
    revision: str
    files: dict[str, int]  # file -> size in bytes (only what would be fetched)
    n_params: int | None
    license: str
    gated: bool
    private: bool
    has_chat_template: bool | None  # None: unknown (behind the gate)
    fit: dict[str, str] = field(default_factory=dict)  # "LoRA" -> "fits (~1.2 GB of 15.0 GB)"
    access: str = ""  # why its files cannot be fetched with the token at hand ("" when they can)

    @property
    def download_bytes(self) -> int:
        return sum(self.files.values())

    def lines(self) -> list[str]:
        params = f"{human_count(self.n_params)} parameters" if self.n_params else "parameters unknown"
        template = {True: "has a chat template", False: "no chat template (pick one in the Data tab)"}
        gated = "not gated"
        if self.gated:
            gated = (
                "gated: accept its license on the Hub first"
                if self.access
                else "gated, and your token has access"
            )
        lines = [
            f"{self.repo_id}: {params}; download {human_bytes(self.download_bytes)} in {len(self.files)} files",
            f"License: {self.license or 'not stated'}; {gated}" + ("; private" if self.private else ""),
            f"Chat template: {template.get(self.has_chat_template, 'unknown until the license is accepted')}",
        ]
        lines += [f"{method}: {verdict}" for method, verdict in self.fit.items()]
        if self.access:
            lines.append(self.access)
        return lines


def human_count(n: int) -> str:
    """
    >>> human_count(134_515_008), human_count(31_264)
    ('134.5M', '31.3k')
    """
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def search(query: str = "", sort: str = "downloads", limit: int = 20) -> list[Found]:
    """Text-generation models whose id contains `query`, most downloaded (or liked, or recent) first."""
    if sort not in SORTS:
        raise ValueError(f"sort {sort!r} must be one of {', '.join(SORTS)}")
    have = set(models.downloaded_ids())
    hubclient.require_reachable()
    with hubclient.calling():
        found = hubclient.api().list_models(
            search=query.strip() or None, pipeline_tag="text-generation", sort=sort, limit=limit
        )
        return [
            Found(
                m.id,
                m.downloads or 0,
                m.likes or 0,
                m.last_modified.date().isoformat() if m.last_modified else "",
                bool(m.gated),
                m.id in have,
            )
            for m in found
        ]


def pick_files(sizes: dict[str, int]) -> dict[str, int]:
    """The files a download fetches: config, tokenizer, and ONE copy of the weights.

    >>> sorted(pick_files({"config.json": 1, "model.safetensors": 9, "pytorch_model.bin": 9, "onnx/model.onnx": 9}))
    ['config.json', 'model.safetensors']
    """
    root = {name: size for name, size in sizes.items() if "/" not in name}
    weights = [n for n in root if n.endswith(".safetensors") or n == "model.safetensors.index.json"]
    if not any(n.endswith(".safetensors") for n in weights):
        weights = [
            n for n in root if n.startswith("pytorch_model") and n.endswith((".bin", ".bin.index.json"))
        ]
    keep = [n for n in root if n in _ALWAYS] + weights
    return {name: root[name] for name in sorted(keep)}


def _card_license(info) -> str:
    card = getattr(info, "card_data", None)
    license_ = getattr(card, "license", None) if card is not None else None
    if not license_:
        license_ = next((t.split(":", 1)[1] for t in info.tags or [] if t.startswith("license:")), "")
    return str(license_ or "")


def _small_json(repo_id: str, revision: str, name: str) -> dict | None:
    """A small JSON file of the repo (config, tokenizer config), cached under STUDIO_HOME/cache."""
    import json

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = hf_hub_download(
            repo_id,
            name,
            revision=revision,
            endpoint=hubclient.endpoint(),
            token=hubclient.token() or False,
            cache_dir=workspace.cache_dir() / "hub-meta",
        )
    except EntryNotFoundError:
        return None
    return json.loads(Path(path).read_text(encoding="utf-8"))


def look(repo_id: str) -> Look:
    """Ask the Hub what downloading `repo_id` would bring (no weights are fetched)."""
    repo_id = _check_id(repo_id)
    with hubclient.calling(repo_id):
        info = hubclient.api().model_info(repo_id, files_metadata=True)
    sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    files = pick_files(sizes)
    if not any(n.endswith((".safetensors", ".bin")) for n in files):
        raise HubError(
            f"{repo_id} has no safetensors or PyTorch weights at its top level: it cannot be trained here"
        )
    n_params = int(info.safetensors.total) if info.safetensors else None
    result = Look(
        repo_id,
        info.sha or "main",
        files,
        n_params,
        _card_license(info),
        bool(info.gated),
        bool(info.private),
        None,
    )
    try:
        with hubclient.calling(repo_id):
            config = _small_json(repo_id, result.revision, "config.json")
            tok = _small_json(repo_id, result.revision, "tokenizer_config.json") or {}
    except HubError as exc:  # a gated repo shows its card before the license is accepted
        result.access = str(exc)
        return result
    result.has_chat_template = "chat_template" in tok or "chat_template.jinja" in files
    if config:
        result.fit = fit(config)
        if result.n_params is None:
            from studio.train import memory

            result.n_params = memory.shape_of(config).n_params
    return result


def fit(config: dict) -> dict[str, str]:
    """Verdict of the memory estimate for LoRA, QLoRA and full training of a model with this config."""
    from studio.train import memory, recipes

    device, kind = memory.device_memory_bytes()
    verdicts = {}
    for method, name in FIT_RECIPES.items():
        try:
            estimate = memory.estimate_memory(config, recipes.load(RECIPES_DIR / name), device_memory=device)
        except (ValueError, AttributeError, TypeError) as exc:
            verdicts[method] = f"unknown ({exc})"
            continue
        where = "GPU memory" if kind == "cuda" else "free memory"
        verdicts[method] = (
            f"{estimate.verdict} (~{estimate.total_gb:.1f} GB of {device / 1024**3:.1f} GB {where})"
        )
    return verdicts


def _check_id(repo_id: str) -> str:
    repo_id = (repo_id or "").strip()
    try:
        models.hub_model_dir(repo_id)
    except ValueError as exc:
        raise HubError(f"{repo_id!r} is not a Hub model id like 'org/name' ({exc})") from None
    if repo_id.count("/") != 1:
        raise HubError(f"{repo_id!r} is not a Hub model id like 'org/name'")
    return repo_id


def pull(repo_id: str, on_progress: Callable[[Progress], None] | None = None, every: float = 0.5) -> Path:
    """Download `repo_id` into STUDIO_HOME/models/hub/ (resuming what a cut download left); its folder."""
    report = on_progress or (lambda _: None)
    seen = look(repo_id)
    if seen.access:
        raise HubError(seen.access)
    folder = models.hub_model_dir(seen.repo_id)
    names = list(seen.files)
    have = hubclient.bytes_on_disk(folder, names) if folder.is_dir() else 0
    hubclient.check_room(models.hub_models_dir(), max(seen.download_bytes - have, 0))
    folder.mkdir(parents=True, exist_ok=True)
    models.write_record(
        folder,
        repo_id=seen.repo_id,
        revision=seen.revision,
        files=names,
        bytes=seen.download_bytes,
        complete=False,
        started_at=models.now(),
    )

    def work() -> None:
        hubclient.fetch(seen.repo_id, names, folder, seen.revision)

    with hubclient.calling(seen.repo_id):
        hubclient.watch(work, folder, names, seen.download_bytes, seen.repo_id, report, every)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise HubError(
            f"{seen.repo_id}: the download ended without {', '.join(missing)}: pull it again to resume"
        )
    models.write_record(folder, complete=True, downloaded_at=models.now(), last_used=models.now())
    report(Progress(seen.repo_id, "done", seen.download_bytes, seen.download_bytes))
    return folder


# --- downloads in the background -------------------------------------------------------------------
def start_pull(repo_id: str) -> Progress:
    """Start `pull` in a background thread (one per model); poll `progress_of(repo_id)`."""
    repo_id = _check_id(repo_id)
    return hubclient.start_job(f"model:{repo_id}", repo_id, lambda report: pull(repo_id, report))


def progress_of(repo_id: str) -> Progress | None:
    return hubclient.job(f"model:{(repo_id or '').strip()}")


# --- local models ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalModel:
    spec: str
    path: str
    state: str  # "ready" | "incomplete" | "not converted yet"
    size_bytes: int
    last_used: str


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def local_models() -> list[LocalModel]:
    """The default model and every downloaded (or half-downloaded) Hub model, with size and last use."""
    default = workspace.models_dir() / models.DEFAULT_NAME
    converted = (default / "config.json").is_file()
    rows = [
        LocalModel(
            models.DEFAULT_SPEC,
            str(default),
            "ready" if converted else "not converted yet",
            folder_size(default) if converted else 0,
            "",
        )
    ]
    for folder in sorted(models.hub_models_dir().iterdir()):
        record = models.read_record(folder)
        if not folder.is_dir() or not record.get("repo_id"):
            continue
        state = "ready" if record.get("complete") else "incomplete: pull again to resume"
        rows.append(
            LocalModel(
                record["repo_id"], str(folder), state, folder_size(folder), record.get("last_used", "")
            )
        )
    return rows


def remove(repo_id: str) -> int:
    """Delete a downloaded Hub model's folder; returns the bytes freed."""
    repo_id = _check_id(repo_id)
    folder = models.hub_model_dir(repo_id)
    if not folder.is_dir():
        raise HubError(f"{repo_id} is not downloaded here (see `python -m studio models list`)")
    job = progress_of(repo_id)
    if job and job.state in ("starting", "downloading"):
        raise HubError(f"{repo_id} is still downloading: wait for it to finish or fail, then delete it")
    size = folder_size(folder)
    shutil.rmtree(folder)
    from studio.chat import llamacpp

    return size + llamacpp.forget_base(folder)  # its copy for fast CPU chat goes with it
