"""Step time of one SmolLM2-135M training step: fp32 vs bf16 autocast vs LoRA (plain, and with its
frozen layers on prepacked oneDNN weights as `run_steps` trains it; and under bf16 autocast, as the
fast world's prepare trains it on a CPU with native bf16), as ratios in one run.

    .venv/bin/python benchmarks/train_step_precision.py [--out benchmarks/results/train_step_precision.json]
    .venv/bin/python benchmarks/train_step_precision.py --attention \
        --out benchmarks/results/train_step_attention_amx.json

Results: `train_step_precision.json` (an AVX2 EPYC, before the packed variant existed),
`train_step_precision_avx512.json` (an AVX512 EPYC with native bf16) and
`train_step_precision_amx.json` (an Intel Xeon with AMX, with LoRA under bf16 autocast); the
machine is in each file.

Same batch for every variant: 8 TOFU-mini retain answers in the default chat format, answer-only
NLL through tokenforget's own training forward (LM head at answer positions only), AdamW step.
Median of repeated steps after one warm-up step. The ratios, not the seconds, are the result.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from tokenforget.config import DEFAULT_MODEL, LoraSettings, ModelSettings, PromptSettings
from tokenforget.cpu import machine
from tokenforget.data import encode, pad_batch, tofu_mini
from tokenforget.forward import answer_forward, token_nll
from tokenforget.models import (
    cpu_supports_bf16,
    load_model,
    load_tokenizer,
    packed_linears,
    resolve_model,
    wrap_lora,
)


def step_seconds(
    precision: str, lora: bool, repeats: int, packed: bool = False, attention: str = "sdpa"
) -> list[float]:
    """Seconds of each step after one warm-up step on `training_batch`."""
    model, tok, _ = load_model(ModelSettings(precision="fp32"))
    model.set_attn_implementation(attention)
    if lora:
        model = wrap_lora(model, LoraSettings(r=32, alpha=64))
    batch = training_batch(tok)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ctx = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if precision == "bf16-autocast"
        else (lambda: torch.autocast("cpu", enabled=False))
    )
    times = []
    packing = packed_linears(model, training=True, dtype=None) if packed else contextlib.nullcontext()
    with packing as count:
        assert not packed or count, "nothing was packed"
        for _ in range(repeats + 1):
            times.append(_timed_step(model, batch, opt, ctx))
    return times[1:]


def training_batch(tok: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    return pad_batch([encode(s, tok, PromptSettings()) for s in tofu_mini().retain[:8]], tok.pad_token_id)


@functools.cache
def batch_tokens() -> int:
    """Tokens of `training_batch`, padding excluded (tokenised once for every summary)."""
    return int(training_batch(load_tokenizer(resolve_model(DEFAULT_MODEL)))["attention_mask"].sum())


def summary(times: list[float]) -> dict:
    tokens = batch_tokens()
    median = statistics.median(times)
    return {"median_s": round(median, 3), "tokens_per_s": round(tokens / median, 1), "tokens": tokens}


def _timed_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    opt: torch.optim.Optimizer,
    ctx: Callable[[], contextlib.AbstractContextManager],
) -> float:
    start = time.perf_counter()
    with ctx():
        loss = token_nll(answer_forward(model, batch)).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    return time.perf_counter() - start


def plain_and_packed_lora(repeats: int) -> tuple[dict, dict]:
    """float32 LoRA steps with the frozen layers plain and packed, alternating twice, so a drift of
    the machine's speed hits both alike. (Under bf16 autocast training keeps the plain path.)"""
    plain: list[float] = []
    packed: list[float] = []
    for _ in range(2):
        plain += step_seconds("fp32", True, repeats)
        packed += step_seconds("fp32", True, repeats, packed=True)
    return summary(plain), summary(packed)


def attention_kernels(repeats: int, rounds: int = 3) -> dict:
    """The fast world's prepare step (LoRA r=32 under bf16 autocast) with transformers' `sdpa`
    attention (the default: PyTorch's flash kernel on CPU) and with `eager` (matmul + softmax),
    alternating `rounds` times."""
    times: dict[str, list[float]] = {"sdpa": [], "eager": []}
    for _ in range(rounds):
        for attention in times:
            times[attention] += step_seconds("bf16-autocast", True, repeats, attention=attention)
    result = {name: summary(seconds) for name, seconds in times.items()}
    ratio = result["eager"]["median_s"] / result["sdpa"]["median_s"]
    return {**result, "rounds": rounds, "eager_over_sdpa": round(ratio, 3)}


def machine_info() -> dict:
    return {
        **machine(),
        "arch": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_supports_bf16(),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/train_step_precision.json")
    parser.add_argument(
        "--attention",
        action="store_true",
        help="only compare the attention kernels (sdpa vs eager) of the bf16-autocast LoRA step",
    )
    args = parser.parse_args()
    if args.attention:
        result = {
            "command": f"python benchmarks/train_step_precision.py --attention --out {args.out}",
            "machine": machine_info(),
            "lora_r32_bf16_autocast": attention_kernels(args.repeats),
        }
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    fp32 = summary(step_seconds("fp32", False, args.repeats))
    lora, lora_packed = plain_and_packed_lora(args.repeats)
    bf16 = summary(step_seconds("bf16-autocast", False, 1))  # emulated bf16 is ~20x slower on AVX2
    # what prepare's LoRA world trains with where `model.precision: auto` means bf16 autocast
    lora_bf16 = summary(step_seconds("bf16-autocast", True, 1))
    result = {
        "command": f"python benchmarks/train_step_precision.py --out {args.out}",
        "machine": machine_info(),
        "full_fp32": fp32,
        "lora_r32_fp32": lora,
        "lora_r32_fp32_packed_frozen": lora_packed,
        "full_bf16_autocast": bf16,
        "lora_r32_bf16_autocast": lora_bf16,
        "ratios": {
            "lora_over_full": round(lora["median_s"] / fp32["median_s"], 3),
            "lora_packed_over_lora": round(lora_packed["median_s"] / lora["median_s"], 3),
            "bf16_autocast_over_fp32": round(bf16["median_s"] / fp32["median_s"], 3),
            "lora_bf16_over_full_bf16": round(lora_bf16["median_s"] / bf16["median_s"], 3),
        },
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
