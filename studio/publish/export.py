"""Read a finished run folder and turn its adapter into things to share: a merged model, a zip, a GGUF.

Knows the run-folder layout of DESIGN.md (recipe.yaml, status.json, metrics.jsonl, probes.json,
adapter/) and which files of an adapter or a model belong in a published copy. Knows nothing about
the Hub, tokens, model cards or the UI.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from studio import models, rundir, workspace
from studio.ggufwriter import GGUF_ARCHITECTURES, SHARD_PATTERN, export_gguf  # noqa: F401 - part of this API

# What a published adapter or model consists of. Everything else in a run (checkpoints, optimizer
# state, pickles, logs, the recipe) stays home: an allowlist cannot leak a file nobody thought of.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
_FOUR_BIT_WORDS = ("4bit", "4-bit", "nf4", "fp4", "qlora", "bnb4")


@dataclass
class RunFolder:
    """Everything in a run folder that exports and model cards read; missing parts are empty."""

    path: Path
    recipe: dict = field(default_factory=dict)
    status: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    probes: dict | None = None

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def model_spec(self) -> str:
        return str(self.recipe.get("model") or models.DEFAULT_SPEC)

    @property
    def is_full_model(self) -> bool:
        """A full fine-tune leaves a whole model in adapter/ instead of an adapter."""
        return (self.adapter_dir / "config.json").is_file() and not (
            self.adapter_dir / "adapter_config.json"
        ).is_file()


def load_run(run: str | Path) -> RunFolder:
    """Read recipe, status, metrics and probes of a run; tolerant of missing optional parts."""
    path = rundir.find(run)
    damaged = rundir.damage(path)
    if damaged:
        raise ValueError(damaged[0])
    return RunFolder(
        path=path,
        recipe=rundir.read_recipe(path),
        status=rundir.read_status(path),
        metrics=rundir.read_metrics(path),
        probes=rundir.read_probes(path) or None,
    )


def require_completed(run: RunFolder) -> None:
    """Raise ValueError unless the run finished and left a complete adapter."""
    state = run.status.get("state", "unknown")
    if state != "completed":
        raise ValueError(
            f"{run.path / 'status.json'}: the run is {state!r}, not 'completed' — only a finished run "
            "can be exported; wait for it to finish or resume it"
        )
    if run.is_full_model:
        if not shareable_files(run.adapter_dir, merged=True):
            raise ValueError(
                f"{run.adapter_dir}: no model weights — the fine-tuned model was not saved completely"
            )
        return
    missing = [name for name in ADAPTER_FILES if not (run.adapter_dir / name).is_file()]
    if missing:
        raise ValueError(
            f"{run.adapter_dir}: missing {', '.join(missing)} — the adapter was not saved completely"
        )


def shareable_files(folder: Path, merged: bool) -> list[Path]:
    """The files of an adapter (or merged model) folder that belong in a published copy."""
    names = set(TOKENIZER_FILES) | set(MODEL_FILES if merged else ADAPTER_FILES)
    found = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name in names]
    if merged:
        found += sorted(folder.glob(SHARD_PATTERN))
    return found


def is_four_bit(recipe: dict) -> bool:
    """Whether the run trained on a 4-bit (QLoRA) base: `quantization.load_in_4bit`, or older words."""
    quant = recipe.get("quantization")
    if isinstance(quant, dict):
        return quant.get("load_in_4bit") is True
    values = [recipe.get("method"), quant, recipe.get("bits")]
    if recipe.get("load_in_4bit") is True or 4 in values:
        return True
    return any(str(v).lower() in _FOUR_BIT_WORDS for v in values if v is not None)


def _load_base_for_merge(spec: str, four_bit: bool, recipe: dict):
    import torch

    if not four_bit:
        return models.load_model(spec, dtype=torch.float32)
    from transformers import BitsAndBytesConfig

    # The adapter learned to correct the NF4-rounded weights, so merge into exactly those values:
    # load the base as training did, then turn each 4-bit layer back into a float32 Linear.
    # Merging into the NF4 storage itself would round the sum again and lose the adapter's update.
    section = recipe.get("quantization") if isinstance(recipe.get("quantization"), dict) else {}
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=str(section.get("quant_type") or "nf4"),
        bnb_4bit_use_double_quant=bool(section.get("double_quant", True)),
        bnb_4bit_compute_dtype=torch.float32,
    )
    base = models.load_model(spec, dtype=torch.float32, quantization_config=quant)
    return base.dequantize()


def merge_adapter(run: RunFolder, out_dir: Path, four_bit: bool | None = None) -> Path:
    """Merge the run's adapter into its base and save a plain safetensors model with its tokenizer.

    `four_bit=None` follows the recipe: a QLoRA run merges into the dequantized NF4 weights it
    trained against; any other run merges into the full-precision base.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    require_completed(run)
    four_bit = is_four_bit(run.recipe) if four_bit is None else four_bit
    base = _load_base_for_merge(run.model_spec, four_bit, run.recipe)
    merged = PeftModel.from_pretrained(base, str(run.adapter_dir)).merge_and_unload()
    if getattr(merged.config, "quantization_config", None) is not None:
        del merged.config.quantization_config
    out_dir = Path(out_dir)
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    merged.save_pretrained(partial, safe_serialization=True)
    # The adapter folder holds the tokenizer as trained (pad token, chat template); prefer it.
    AutoTokenizer.from_pretrained(str(run.adapter_dir)).save_pretrained(partial)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir


def merged_dir(run: RunFolder) -> Path:
    """The merged model of a run under STUDIO_HOME/exports/, merged once and reused."""
    if run.is_full_model:
        return run.adapter_dir
    target = workspace.exports_dir() / f"{workspace.check_name(run.run_id, 'run id')}-merged"
    adapter = run.adapter_dir / "adapter_model.safetensors"
    config = target / "config.json"
    if config.is_file() and config.stat().st_mtime >= adapter.stat().st_mtime:
        return target
    return merge_adapter(run, target)


def zip_folder(folder: Path, zip_path: Path) -> Path:
    """Zip the plain files of `folder` (flat) into `zip_path`, written atomically."""
    zip_path = Path(zip_path)
    tmp = zip_path.with_name(f".{zip_path.name}.partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(Path(folder).iterdir()):
            if path.is_file():
                archive.write(path, arcname=path.name)
    tmp.replace(zip_path)
    return zip_path


def gguf_for_run(run: RunFolder, f16: bool = False) -> Path:
    """Merge a run's adapter (once) and write it as STUDIO_HOME/exports/<run id>.gguf."""
    target = workspace.exports_dir() / f"{workspace.check_name(run.run_id, 'run id')}.gguf"
    return export_gguf(merged_dir(run), target, f16=f16)
