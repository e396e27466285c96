"""The baseline for the training benchmark: a plain TRL SFTTrainer script with TRL's own defaults.

Same model folder, same data (sample_data/alpaca.jsonl, or --data, as messages), same LoRA settings as the
studio's recipes; everything else is whatever SFTConfig defaults to. Prints one JSON line with
the per-log-step tokens/s (tokens read between two log lines over the wall time between them,
the same way the studio's run folder writes tokens_per_second).

Run as: python bench/trl_sft.py MODEL_DIR OUT_DIR --max-steps N [--qlora] [--data ALPACA.jsonl]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def alpaca_messages(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [
        {
            "messages": [
                {
                    "role": "user",
                    "content": r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else ""),
                },
                {"role": "assistant", "content": r["output"]},
            ]
        }
        for r in rows
    ]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--qlora", action="store_true")
    parser.add_argument(
        "--data", type=Path, default=ROOT / "sample_data" / "alpaca.jsonl", help="Alpaca JSONL"
    )
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    marks: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_log(self, _args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                marks.append((time.monotonic(), float(logs["num_tokens"])))

    init = {}
    if args.qlora:
        from transformers import BitsAndBytesConfig

        init["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
    config = SFTConfig(
        output_dir=args.out,
        max_steps=args.max_steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        model_init_kwargs=init or None,
        use_liger_kernel=torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS, task_type="CAUSAL_LM")
    trainer = SFTTrainer(
        model=args.model,
        args=config,
        train_dataset=Dataset.from_list(alpaca_messages(args.data)),
        peft_config=lora,
        callbacks=[Clock()],
    )
    trainer.train()
    rates = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(marks, marks[1:], strict=False) if b[0] > a[0]]
    print(
        json.dumps(
            {
                "tokens_per_second": statistics.median(rates) if rates else 0.0,
                "batch_size": config.per_device_train_batch_size,
                "bf16": config.bf16,
                "gradient_checkpointing": config.gradient_checkpointing,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
