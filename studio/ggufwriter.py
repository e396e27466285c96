"""A Llama-family model folder (safetensors + tokenizer.json) written as one GGUF file that llama.cpp
and transformers read: the weights in 32 or 16 bits, q/k rows in llama.cpp's rotary order, the
byte-level BPE vocabulary, special tokens and chat template. Used to publish a merged model
(studio.publish.export) and to give chat on a CPU its 16-bit base (studio.chat.llamacpp). Knows
nothing about runs, adapters or the UI.
"""

from __future__ import annotations

import json
from pathlib import Path

SHARD_PATTERN = "model-*-of-*.safetensors"

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
    for path in [folder / "model.safetensors", *sorted(folder.glob(SHARD_PATTERN))]:
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
