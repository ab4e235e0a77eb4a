"""Which quantization library `attack quantize` uses: every one transformers drives, on this CPU.

    pip install --no-deps optimum-quanto bitsandbytes hqq termcolor  # candidates tokenforget skips
    .venv/bin/python benchmarks/quantize_backends.py MODEL_DIR [--out benchmarks/results/quantize_backends.md]

For each library and bit width: does transformers quantize the model with it on CPU, how long a
forward over 40 TOFU-mini forget question+answer texts takes against float32 (a ratio in this run),
how far the quantized model's distribution moves (mean per-token KL(fp32 || quantized) and the mean
NLL of the texts), and whether `save_pretrained` writes safetensors that load back to the same
numbers (the attack must save its copy and `tokenforget eval` must give the same numbers on it).
A library missing here is listed as such. Results: `quantize_backends.md`.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tokenforget.data.benchmarks import bundled_file
from tokenforget.models import quiet_transformers

CANDIDATES = [("torchao", 4), ("torchao", 8), ("quanto", 4), ("quanto", 8), ("bitsandbytes", 4),
              ("bitsandbytes", 8), ("hqq", 4)]  # fmt: skip


def config_for(library: str, bits: int, group_size: int) -> Any:
    import transformers

    if library == "torchao":
        from tokenforget.quantize import quantization_config

        return quantization_config(bits, group_size)
    if library == "quanto":
        return transformers.QuantoConfig(weights=f"int{bits}")
    if library == "bitsandbytes":
        return transformers.BitsAndBytesConfig(
            load_in_4bit=bits == 4, load_in_8bit=bits == 8, bnb_4bit_compute_dtype=torch.float32
        )
    return transformers.HqqConfig(nbits=bits, group_size=group_size)


def scores(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(log-probs at real positions, mean NLL per text, seconds of the forward)."""
    started = time.perf_counter()
    with torch.no_grad():
        logits = model(**batch).logits.float()[:, :-1]
    seconds = time.perf_counter() - started
    mask = batch["attention_mask"][:, 1:].bool()
    logp = logits.log_softmax(-1)
    nll = -logp.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return logp[mask], (nll * mask).sum(1) / mask.sum(1), seconds


def measure(model_dir: str, library: str, bits: int, group_size: int, batch: dict, base: tuple) -> dict:
    from transformers import AutoModelForCausalLM

    row: dict[str, Any] = {"library": library, "bits": bits}
    try:
        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, quantization_config=config_for(library, bits, group_size), dtype=torch.float32,
            device_map="cpu",
        )  # fmt: skip
        row["quantize_s"] = round(time.perf_counter() - started, 1)
    except Exception as exc:  # a library missing or not wired into this transformers
        row["error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
        return row
    logp, nll, seconds = scores(model, batch)
    base_logp, _, base_seconds = base
    row["forward_vs_fp32"] = round(seconds / base_seconds, 2)
    row["mean_nll"] = round(float(nll.mean()), 3)
    row["kl"] = round(float((base_logp.exp() * (base_logp - logp)).sum(-1).mean()), 4)
    try:
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            row["safetensors"] = any(p.suffix == ".safetensors" for p in Path(folder).iterdir())
            again = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
            row["reload_max_dnll"] = float((scores(again, batch)[1] - nll).abs().max())
    except Exception as exc:
        row["save"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    rows = [json.loads(line) for line in bundled_file("forget10_perturbed").read_text().splitlines()][:40]
    texts = [f"{r['question']} {r['answer']}" for r in rows]
    batch = dict(tokenizer(texts, return_tensors="pt", padding=True))
    base = scores(AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32), batch)
    results = [measure(args.model_dir, lib, bits, args.group_size, batch, base) for lib, bits in CANDIDATES]
    lines = [
        f"# Quantization libraries on this CPU ({platform.processor() or platform.machine()}, "
        f"torch {torch.__version__})",
        "",
        f"Model: `{args.model_dir}`; 40 TOFU-mini forget texts; fp32 mean NLL {float(base[1].mean()):.3f}; "
        f"4-bit groups of {args.group_size}.",
        f"Command: `python benchmarks/quantize_backends.py MODEL_DIR --group-size {args.group_size}`",
        "",
        "| library | bits | quantize s | forward / fp32 | mean NLL | KL(fp32 ‖ q) | safetensors "
        "| reload max ΔNLL | problem |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['library']} | {r['bits']} | {r.get('quantize_s', '')} | {r.get('forward_vs_fp32', '')} | "
            f"{r.get('mean_nll', '')} | {r.get('kl', '')} | {r.get('safetensors', '')} | "
            f"{r.get('reload_max_dnll', '')} | {r.get('error', r.get('save', ''))} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
