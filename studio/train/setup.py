"""Training setup: what the hardware decides (precision, checkpointing, device), the tokenizer with
a safe pad token, and the model with its LoRA settings (transformers or the optional Unsloth
backend). Knows nothing about TRL trainers, data formats or the UI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from studio import models
from studio.train import memory, preflight, recipes
from studio.train.recipes import Recipe


@dataclass
class Plan:
    """What the hardware decided for this run: precision, checkpointing, device."""

    bf16: bool
    gradient_checkpointing: bool
    use_cpu: bool
    estimate: memory.MemoryEstimate | None = None
    notes: list[str] = field(default_factory=list)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_plan(recipe: Recipe, model_info=None) -> Plan:
    """Resolve the recipe's 'auto' settings against this machine."""
    import torch

    use_cpu = not torch.cuda.is_available()
    bf16 = recipes.decide(recipe.training.bf16, memory.bf16_supported)
    plan = Plan(bf16=bf16, gradient_checkpointing=False, use_cpu=use_cpu)
    if model_info is not None:
        plan.estimate = memory.estimate_memory(model_info, recipe, gradient_checkpointing=False, bf16=bf16)
    # ~40% slower: on "auto" only when the estimate says memory is short (not when it is unknown)
    plan.gradient_checkpointing = recipes.decide(
        recipe.training.gradient_checkpointing,
        lambda: plan.estimate is not None and plan.estimate.verdict in ("tight", "will not fit"),
    )
    if plan.estimate is not None and plan.gradient_checkpointing:
        plan.estimate = memory.estimate_memory(model_info, recipe, gradient_checkpointing=True, bf16=bf16)
    plan.notes.append(
        f"precision: {'bf16' if bf16 else 'fp32'}; gradient checkpointing: {plan.gradient_checkpointing}"
    )
    return plan


def pick_pad_token(tokenizer) -> tuple[str, bool]:
    """A pad token that is not EOS: (token, added). Padding with EOS would mask EOS out of the loss
    and the model would never learn to stop, so reuse an unused special token, or add one."""
    eos = tokenizer.eos_token
    if tokenizer.pad_token is not None and tokenizer.pad_token != eos:
        return tokenizer.pad_token, False
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    unused = [t for t in specials if t not in (eos, tokenizer.bos_token) and t not in template]
    for hint in ("pad", "endoftext", "unk"):
        for token in unused:
            if hint in token.lower():
                return token, False
    if unused:
        return unused[0], False
    return "<|pad|>", True


def setup_tokenizer(recipe: Recipe):
    """Tokenizer with the chosen chat template and a pad token distinct from EOS."""
    from studio.data import templates

    tokenizer = models.load_tokenizer(recipe.model)
    templates.ensure_chat_template(tokenizer, recipe.data.chat_template)
    token, added = pick_pad_token(tokenizer)
    if added:
        tokenizer.add_special_tokens({"pad_token": token})
    else:
        tokenizer.pad_token = token
    tokenizer.padding_side = "right"
    return tokenizer, added


def load_with_unsloth(recipe: Recipe, tokenizer, plan: Plan):
    """The model with its LoRA already attached, through Unsloth's fused kernels (one CUDA GPU)."""
    reason = preflight.unsloth_unavailable()
    if reason:
        raise ValueError(f"backend unsloth: {reason} — set backend: transformers")
    from unsloth import FastLanguageModel  # optional dependency, present only where preflight allowed it

    lo = recipe.lora
    model, _ = FastLanguageModel.from_pretrained(
        model_name=models.resolve(recipe.model),
        max_seq_length=recipe.data.max_length,
        dtype=None,  # Unsloth picks bf16 where the GPU has it
        load_in_4bit=recipe.quantization.load_in_4bit,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=lo.r,
        lora_alpha=lo.alpha,
        lora_dropout=lo.dropout,
        target_modules=list(lo.targets),
        bias="none",
        use_rslora=lo.use_rslora,
        use_gradient_checkpointing="unsloth" if plan.gradient_checkpointing else False,
        random_state=recipe.training.seed,
    )
    model.config.pad_token_id = tokenizer.pad_token_id  # our tokenizer tokenized the data
    return model


def load_model(recipe: Recipe, tokenizer, plan: Plan, added_pad: bool):
    import torch

    if recipe.backend == "unsloth":
        return load_with_unsloth(recipe, tokenizer, plan)

    dtype = torch.bfloat16 if plan.bf16 else torch.float32
    kwargs = {"dtype": dtype}
    q = recipe.quantization
    if q.load_in_4bit or q.load_in_8bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=q.load_in_4bit,
            load_in_8bit=q.load_in_8bit,
            bnb_4bit_quant_type=q.quant_type,
            bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
        if not plan.use_cpu:
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    model = models.load_model(recipe.model, **kwargs)
    if added_pad:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    return model


def lora_config(recipe: Recipe):
    if not recipe.lora.enabled:
        return None
    from peft import LoraConfig

    lo = recipe.lora
    return LoraConfig(
        r=lo.r,
        lora_alpha=lo.alpha,
        lora_dropout=lo.dropout,
        target_modules=list(lo.targets),
        use_rslora=lo.use_rslora,
        use_dora=lo.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )
