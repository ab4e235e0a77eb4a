"""What a resumable checkpoint costs the training loop: written in the background vs in the loop.

    .venv/bin/python benchmarks/checkpoint_overhead.py [--steps 8] [--every 2] [--repeats 2]

The prepare recipe's fine-tuning (SmolLM2-135M, full weights, AdamW, batch 8 of TOFU-mini retain
answers, fp32 on CPU) for --steps optimizer steps, three ways on the same data order: no
checkpoint, a checkpoint every --every steps written in the loop's thread (what a CPU run does),
and the same checkpoints written by `CheckpointWriter`'s background thread (what an accelerator run
does). The variants alternate, the median of --repeats runs of each is reported, and the final
weights of the three are compared (a checkpoint must not change training). Overhead per
checkpoint = (time - no-checkpoint time) / checkpoints written.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import tokenforget.train as train
from tokenforget.config import ModelSettings, PromptSettings
from tokenforget.data import encode, tofu_mini
from tokenforget.models import load_model, resolve_model
from tokenforget.train import FitSettings, fit_nll


def one_run(samples, every: int | None, background: bool, steps: int) -> tuple[float, dict]:
    model, tok, precision = load_model(ModelSettings(precision="fp32"), resolve_model(ModelSettings().name))
    encoded = [encode(s, tok, PromptSettings()) for s in samples]
    settings = FitSettings(
        epochs=steps * 8 / len(encoded),
        lr=1e-4,
        batch_size=8,
        micro_batch_size=8,
        checkpoint_every=every or 10**9,
    )
    writer = train.CheckpointWriter
    train.CheckpointWriter = functools.partial(writer, background=background)
    folder = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    try:
        started = time.perf_counter()
        fit_nll(model, encoded, tok.pad_token_id, precision, settings, folder / "checkpoint", "bench")
        seconds = time.perf_counter() - started
    finally:
        train.CheckpointWriter = writer
        shutil.rmtree(folder, ignore_errors=True)
    return seconds, {k: v.detach().clone() for k, v in model.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/checkpoint_overhead.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    samples = tofu_mini().retain[: args.steps * 8]
    variants = {"none": (None, False), "in_loop": (args.every, False), "background": (args.every, True)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    finals: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, (every, background) in variants.items():
            seconds, finals[name] = one_run(samples, every, background, args.steps)
            times[name].append(seconds)
            print(f"{name}: {seconds:.1f} s", flush=True)
    checkpoints = (args.steps - 1) // args.every
    median = {name: statistics.median(v) for name, v in times.items()}
    checkpointed = ("in_loop", "background")
    reference = finals["none"]
    same = all(torch.equal(reference[k], finals[name][k]) for name in checkpointed for k in reference)
    result = {
        "command": "python benchmarks/checkpoint_overhead.py "
        f"--steps {args.steps} --every {args.every} --repeats {args.repeats}",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "steps": args.steps,
        "checkpoints_per_run": checkpoints,
        "seconds": times,
        "median_seconds": median,
        "overhead_per_checkpoint_s": {
            name: round((median[name] - median["none"]) / checkpoints, 2) for name in checkpointed
        },
        "final_weights_identical": same,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
