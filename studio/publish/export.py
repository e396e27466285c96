"""Read a finished run folder and turn its adapter into things to share: a merged model, a zip, a GGUF.

Knows the run-folder layout of DESIGN.md (recipe.yaml, status.json, metrics.jsonl, probes.json,
adapter/) and which files of an adapter or a model belong in a published copy. Knows nothing about
the Hub, tokens, model cards or the UI.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from studio import models, rundir, workspace

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
_SHARD_PATTERN = "model-*-of-*.safetensors"
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
        found += sorted(folder.glob(_SHARD_PATTERN))
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


# --- GGUF ---------------------------------------------------------------------------------------
# llama.cpp's names for the weights of one Llama block, keyed by the transformers module path.
_GGUF_BLOCK_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
GGUF_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    if kind != "default":  # transformers 5 mirrors rope_parameters into rope_scaling
        raise ValueError(
            f"GGUF export: rope scaling {kind!r} is not supported yet — only plain RoPE Llama models "
            "(SmolLM2, TinyLlama, Llama 2) can be exported; download the merged model instead"
        )
    return float(params.get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def _check_gguf_model(config) -> None:
    archs = list(getattr(config, "architectures", None) or [])
    if not set(archs) & set(GGUF_ARCHITECTURES):
        raise ValueError(
            f"GGUF export supports {', '.join(GGUF_ARCHITECTURES)} (Llama family: SmolLM2, TinyLlama, "
            f"Llama 2/3 without rope scaling); this model is {archs or 'of unknown architecture'} — "
            "download the merged model (safetensors) instead"
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError("GGUF export: attention or MLP biases are not supported for Llama export")


def _rope_permute(weight, n_heads: int):
    """Reorder q/k rows from the rotate-half layout of transformers to llama.cpp's interleaved pairs."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _gguf_tokenizer(folder: Path) -> tuple[list[str], list[int], list[str], dict]:
    """Tokens, token types, merges and special ids of a byte-level BPE tokenizer.json."""
    import gguf

    path = folder / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    model = data.get("model", {})
    pre = json.dumps(data.get("pre_tokenizer") or {})
    if model.get("type") != "BPE" or "ByteLevel" not in pre:
        raise ValueError(
            f"{path}: GGUF export needs a byte-level BPE tokenizer (GPT-2 style, as SmolLM2 and Llama 3 "
            "use); this one is not — download the merged model instead"
        )
    vocab: dict[str, int] = model["vocab"]
    specials = {t["content"]: t for t in data.get("added_tokens", [])}
    for token in specials.values():
        vocab.setdefault(token["content"], token["id"])
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [int(gguf.TokenType.UNUSED)] * size
    for token, index in vocab.items():
        tokens[index] = token
        special = specials.get(token)
        kind = gguf.TokenType.NORMAL
        if special is not None:
            kind = gguf.TokenType.CONTROL if special.get("special") else gguf.TokenType.USER_DEFINED
        types[index] = int(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges, specials


def _load_state_dict(folder: Path) -> dict:
    from safetensors.torch import load_file

    state: dict = {}
    for path in [folder / "model.safetensors", *sorted(folder.glob(_SHARD_PATTERN))]:
        if path.is_file():
            state.update(load_file(str(path)))
    if not state:
        raise ValueError(f"{folder}: no model.safetensors — merge the adapter first")
    return state


def _gguf_tensors(config, state: dict):
    """(llama.cpp name, tensor) for every weight, with q/k rows permuted for llama.cpp's RoPE."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    yield "token_embd.weight", state["model.embed_tokens.weight"]
    yield "output_norm.weight", state["model.norm.weight"]
    if "lm_head.weight" in state and not getattr(config, "tie_word_embeddings", False):
        yield "output.weight", state["lm_head.weight"]
    for layer in range(config.num_hidden_layers):
        for module, short in _GGUF_BLOCK_NAMES.items():
            weight = state[f"model.layers.{layer}.{module}.weight"]
            if short == "attn_q":
                weight = _rope_permute(weight, heads)
            elif short == "attn_k":
                weight = _rope_permute(weight, kv_heads)
            yield f"blk.{layer}.{short}.weight", weight


def export_gguf(model_dir: Path, out_path: Path, f16: bool = False) -> Path:
    """Write a merged Llama-family model folder as one GGUF file that llama.cpp and transformers read.

    Raises ValueError naming the supported architectures for anything else.
    """
    import gguf
    import numpy as np
    import torch
    from transformers import AutoConfig, AutoTokenizer

    model_dir, out_path = Path(model_dir), Path(out_path)
    config = AutoConfig.from_pretrained(str(model_dir))
    _check_gguf_model(config)
    theta = _rope_theta(config)
    tokens, types, merges, _ = _gguf_tokenizer(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    while len(tokens) < config.vocab_size:
        tokens.append(f"[PAD{len(tokens)}]")
        types.append(int(gguf.TokenType.UNUSED))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    tmp = out_path.with_name(f".{out_path.name}.partial")
    writer = gguf.GGUFWriter(str(tmp), arch="llama")
    writer.add_name(model_dir.name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(theta)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for setter, token_id in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
    ):
        if token_id is not None:
            setter(token_id)
    writer.add_add_bos_token(
        tokenizer.bos_token_id is not None and bool(getattr(tokenizer, "add_bos_token", False))
    )
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    for name, tensor in _gguf_tensors(config, _load_state_dict(model_dir)):
        array = tensor.to(torch.float32).numpy()
        if f16 and array.ndim > 1:
            array = array.astype(np.float16)
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out_path)
    return out_path


def gguf_for_run(run: RunFolder, f16: bool = False) -> Path:
    """Merge a run's adapter (once) and write it as STUDIO_HOME/exports/<run id>.gguf."""
    target = workspace.exports_dir() / f"{workspace.check_name(run.run_id, 'run id')}.gguf"
    return export_gguf(merged_dir(run), target, f16=f16)
