"""Step time of one SmolLM2-135M training step: fp32 vs bf16 autocast vs LoRA, as ratios in one run.

    .venv/bin/python benchmarks/train_step_precision.py [--out benchmarks/results/train_step_precision.json]

Same batch for every variant: 8 TOFU-mini retain answers in the default chat format, answer-only
NLL through tokenforget's own training forward (LM head at answer positions only), AdamW step.
Median of repeated steps after one warm-up step. The ratios, not the seconds, are the result.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from tokenforget.config import LoraSettings, ModelSettings, PromptSettings
from tokenforget.data import encode, pad_batch, tofu_mini
from tokenforget.models import cpu_supports_bf16, load_model, wrap_lora
from tokenforget.train import answer_forward, token_nll


def step_seconds(precision: str, lora: bool, repeats: int) -> dict:
    model, tok, _ = load_model(ModelSettings(precision="fp32"))
    if lora:
        model = wrap_lora(model, LoraSettings(r=32, alpha=64))
    enc = [encode(s, tok, PromptSettings()) for s in tofu_mini().retain[:8]]
    batch = pad_batch(enc, tok.pad_token_id)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ctx = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if precision == "bf16-autocast"
        else (lambda: torch.autocast("cpu", enabled=False))
    )
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with ctx():
            loss = token_nll(answer_forward(model, batch)).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    median = statistics.median(times[1:])
    tokens = int(batch["attention_mask"].sum())
    return {"median_s": round(median, 3), "tokens_per_s": round(tokens / median, 1), "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/train_step_precision.json")
    args = parser.parse_args()
    fp32 = step_seconds("fp32", False, args.repeats)
    lora = step_seconds("fp32", True, args.repeats)
    bf16 = step_seconds("bf16-autocast", False, 1)  # emulated bf16 is ~20x slower on AVX2: one step
    result = {
        "command": "python benchmarks/train_step_precision.py",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_supports_bf16(),
            "torch": torch.__version__,
        },
        "full_fp32": fp32,
        "lora_r32_fp32": lora,
        "full_bf16_autocast": bf16,
        "ratios": {
            "lora_over_full": round(lora["median_s"] / fp32["median_s"], 3),
            "bf16_autocast_over_fp32": round(bf16["median_s"] / fp32["median_s"], 3),
        },
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
