"""Every recipe field and section in plain words, for people who have not met the technical names.

The Train tab shows these as labels and keeps the dotted key (`training.max_steps`) beside them as
a hint, so a person who knows TRL still finds the field. One label per field of
studio.train.recipes (a test checks that none is missing). Knows nothing else.
"""

from __future__ import annotations

SECTIONS = {  # a section in words; its key is shown as the hint
    "data": "Data: format, length, held-out share",
    "lora": "Adapter (LoRA)",
    "quantization": "4-bit / 8-bit loading (QLoRA)",
    "preference": "Preference training (DPO, SimPO, ORPO, KTO)",
    "training": "Training: length, learning rate, batches",
    "probes": "Test questions asked before and after (probes)",
}

LABELS = {
    "method": "What it learns (method)",
    "model": "Model",
    "dataset": "Data",
    "backend": "Loading library",
    "data.chat_template": "Chat format",
    "data.train_on": "Learn from",
    "data.max_length": "Longest example (tokens)",
    "data.max_rows": "Use only the first N examples",
    "data.eval_split": "Share kept aside for checking",
    "lora.enabled": "Train a small adapter, not every weight",
    "lora.r": "Adapter size (rank)",
    "lora.alpha": "Adapter strength",
    "lora.dropout": "Adapter dropout",
    "lora.targets": "Layers that get an adapter",
    "lora.use_rslora": "Steadier scaling for big adapters",
    "lora.use_dora": "Learn size and direction apart (DoRA)",
    "quantization.load_in_4bit": "Load the model in 4-bit",
    "quantization.load_in_8bit": "Load the model in 8-bit",
    "quantization.quant_type": "4-bit number format",
    "quantization.double_quant": "Compress the 4-bit scales too",
    "preference.beta": "Preference strength",
    "preference.simpo_gamma_beta_ratio": "SimPO target margin",
    "preference.desirable_weight": "Weight of good examples",
    "preference.undesirable_weight": "Weight of bad examples",
    "training.epochs": "Passes over the data",
    "training.max_steps": "Training length (steps)",
    "training.batch_size": "Examples at a time",
    "training.grad_accum": "Batches added up per update",
    "training.learning_rate": "Learning rate (step size)",
    "training.scheduler": "Learning-rate schedule",
    "training.warmup_ratio": "Warm-up share of the steps",
    "training.weight_decay": "Weight decay",
    "training.max_grad_norm": "Largest update allowed (gradient clipping)",
    "training.neftune_alpha": "Embedding noise (NEFTune)",
    "training.bf16": "Faster 16-bit math (bf16)",
    "training.gradient_checkpointing": "Save memory by recomputing",
    "training.group_by_length": "Batch similar lengths together",
    "training.packing": "Pack short examples together",
    "training.save_steps": "Save progress every N steps",
    "training.save_total_limit": "Saved progress points kept",
    "training.logging_steps": "Record metrics every N steps",
    "training.eval_steps": "Check held-out examples every N steps",
    "training.seed": "Random seed",
    "training.num_processes": "Devices (GPUs)",
    "probes.prompts": "Test questions",
    "probes.max_new_tokens": "Longest test answer (tokens)",
}
