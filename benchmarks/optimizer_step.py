"""AdamW's step over SmolLM2-135M's parameters: the per-parameter loop, foreach, and the fused kernel.

    .venv/bin/python benchmarks/optimizer_step.py [--out benchmarks/results/optimizer_step.json]

Same parameter shapes as SmolLM2-135M (tied 49152 x 576 embedding, 30 layers of q/k/v/o and MLP),
random gradients; the median of 5 steps after one warm-up step, and the largest difference of the
updated parameters from the loop's after those 6 steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

SHAPES = [(49152, 576)] + [
    (576, 576),
    (192, 576),
    (192, 576),
    (576, 576),
    (1536, 576),
    (1536, 576),
    (576, 1536),
] * 30


def run(kind: dict) -> tuple[list[float], list[torch.Tensor]]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape) * 0.02) for shape in SHAPES]
    grads = [torch.randn(shape) * 1e-3 for shape in SHAPES]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, **kind)
    times = []
    for step in range(6):
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        start = time.perf_counter()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - start)
    return times, [p.detach() for p in params]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="benchmarks/results/optimizer_step.json")
    args = parser.parse_args()
    result = {
        "command": "python benchmarks/optimizer_step.py",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "parameters_millions": round(sum(a * b for a, b in SHAPES) / 1e6, 1),
    }
    _, reference = run({"foreach": False})
    for name, kind in {
        "loop": {"foreach": False},
        "foreach": {"foreach": True},
        "fused": {"fused": True},
    }.items():
        times, params = run(kind)
        diff = max(float((a - b).abs().max()) for a, b in zip(params, reference, strict=True))
        result[name] = {"median_seconds": round(statistics.median(times), 3), "max_abs_diff_vs_loop": diff}
        print(name, result[name])
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
