"""Greedy generation: tokenforget's loop (finished rows leave the batch) vs `model.generate`.

    .venv/bin/python benchmarks/generation.py [--batch-size 96] [--out benchmarks/results/generation.json]

Same model (the prepared TOFU-mini target, or --model DIR), same 180 tofu-mini prompts (40 forget,
40 retain, 50 real_authors, 50 world_facts), same batches (prompts sorted by length, --batch-size
per batch), 48 new tokens at most (the tofu-mini profile). `model.generate` keeps computing a row
that has produced EOS until the batch's longest answer ends; ours drops its KV-cache rows. The
two variants alternate (ours, generate, ours, generate) and the median of each is reported, with the
number of prompts whose decoded answers are identical.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def hf_generate(model, tok, prompts, precision, max_new_tokens, batch_size) -> list[str]:
    """The previous implementation: `model.generate` on left-padded batches of similar length."""
    from tokenforget.data.encode import pad_prompts_left

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: dict[int, str] = {}
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = pad_prompts_left([prompts[i] for i in chunk], tok.pad_token_id)
            ids = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )[:, batch["input_ids"].shape[1] :]
            for row, index in enumerate(chunk):
                out[index] = tok.decode(ids[row], skip_special_tokens=True).strip()
    return [out[i] for i in range(len(prompts))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="model folder (default: the prepared target)")
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument("--out", default="benchmarks/results/generation.json")
    args = parser.parse_args()

    from tokenforget.config import load_config
    from tokenforget.data import encode, tofu_mini
    from tokenforget.evaluate.tofu_run import resolve_profile, split_rows
    from tokenforget.forward.generation import generate_greedy
    from tokenforget.models import load_model
    from tokenforget.prepare import prepare

    cfg = load_config()
    model_dir = args.model or str(prepare(cfg).target)
    model, tok, precision = load_model(cfg.model, model_dir)
    profile = resolve_profile(cfg.eval)
    rows = [s for split in split_rows(tofu_mini(), profile).values() for s in split]
    prompts = [encode(s, tok, cfg.prompt).prompt_ids for s in rows]
    new_tokens = profile.max_new_tokens
    seconds: dict[str, list[float]] = {"ours": [], "model_generate": []}
    answers = {}
    for _ in range(2):
        for name in seconds:
            started = time.perf_counter()
            if name == "ours":
                answers[name] = generate_greedy(model, tok, prompts, precision, new_tokens, args.batch_size)
            else:
                answers[name] = hf_generate(model, tok, prompts, precision, new_tokens, args.batch_size)
            seconds[name].append(round(time.perf_counter() - started, 1))
    lengths = [len(tok(a)["input_ids"]) for a in answers["ours"]]
    median = {k: statistics.median(v) for k, v in seconds.items()}
    result = {
        "command": f"python benchmarks/generation.py --batch-size {args.batch_size}",
        "model": model_dir,
        "prompts": len(prompts),
        "max_new_tokens": new_tokens,
        "batch_size": args.batch_size,
        "answer_tokens_mean": round(statistics.mean(lengths), 1),
        "answers_at_the_limit": sum(n >= new_tokens - 1 for n in lengths),
        "seconds": seconds,
        "ours_over_model_generate": round(median["ours"] / median["model_generate"], 3),
        "identical_answers": sum(a == b for a, b in zip(*answers.values(), strict=True)),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
