"""CPU linear layers: MKL's sgemm (PyTorch's default for float32) vs oneDNN on a prepacked weight.

    .venv/bin/python benchmarks/cpu_linear.py [--eval] [--out benchmarks/results/cpu_linear.json]

The shapes are SmolLM2-135M's (hidden 576, MLP 1536, vocabulary 49152) at the row counts the
evaluation uses: 96 (a decoding step of a generation chunk), 512 and 1280 (answer-scoring batches).
Each is the median GFLOP/s of 5 timings; on a CPU with native bf16 instructions also under bf16
autocast (which casts the weight at every call) against a packed bf16 copy. `--eval` also
evaluates the prepared TOFU-mini target on the tofu-mini profile (at `model.precision: auto`) with
packed linears off, on, off, on (`models.packed_linears`, which `eval_mode` enters) and reports the
medians and whether the logs agree. Results: `cpu_linear.json` (an AVX2 EPYC) and
`cpu_linear_avx512.json` (an AVX512 EPYC with native bf16).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from tokenforget.models import cpu_supports_bf16, precision_label

SHAPES = [(96, 576, 1536), (96, 1536, 576), (96, 576, 49152), (512, 576, 1536), (1280, 576, 49152)]


def gflops(fn, flop: int, seconds: float = 0.5) -> float:
    for _ in range(3):
        fn()
    rates = []
    for _ in range(5):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            fn()
            count += 1
        rates.append(flop * count / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def bf16_rates(x: torch.Tensor, layer: torch.nn.Linear) -> dict[str, float]:
    flop = 2 * x.shape[0] * layer.in_features * layer.out_features
    packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach().bfloat16(), None)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = gflops(lambda: layer(x), flop)
        onednn = gflops(
            lambda: torch.ops.mkldnn._linear_pointwise(x.bfloat16(), packed, None, "none", [], ""), flop
        )
    return {"autocast_bf16_gflops": round(autocast, 1), "onednn_packed_bf16_gflops": round(onednn, 1)}


def linear_rates() -> list[dict]:
    rows = []
    torch.manual_seed(0)
    for m, k, n in SHAPES:
        x, layer = torch.randn(m, k), torch.nn.Linear(k, n, bias=False)
        packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), None)
        with torch.inference_mode():
            mkl = gflops(lambda x=x, layer=layer: layer(x), 2 * m * k * n)
            onednn = gflops(
                lambda x=x, packed=packed: torch.ops.mkldnn._linear_pointwise(
                    x, packed, None, "none", [], ""
                ),
                2 * m * k * n,
            )
        rows.append(
            {
                "rows": m,
                "in": k,
                "out": n,
                "mkl_gflops": round(mkl, 1),
                "onednn_packed_gflops": round(onednn, 1),
                **(bf16_rates(x, layer) if cpu_supports_bf16() else {}),
            }
        )
        print(rows[-1])
    return rows


def eval_times() -> dict:
    import glob
    import shutil
    import tempfile

    from tokenforget import models
    from tokenforget.config import Config
    from tokenforget.data.benchmarks import tofu_mini
    from tokenforget.evaluate.tofu_run import evaluate_tofu

    prepared = Path(sorted(glob.glob(".cache/tokenforget/prepared/tofu-mini-*"))[0])
    original = models.packed_linears
    seconds: dict[str, list[float]] = {"mkl": [], "onednn_packed": []}
    logs: dict[str, str] = {}
    for variant in ["mkl", "onednn_packed"] * 2:
        models.packed_linears = (
            original if variant == "onednn_packed" else (lambda *args, **kwargs: contextlib.nullcontext(0))
        )
        out = Path(tempfile.mkdtemp())
        start = time.perf_counter()
        evaluate_tofu(
            Config(), str(prepared / "target"), tofu_mini(), out, prepared / "eval/tofu-mini/retain"
        )
        seconds[variant].append(round(time.perf_counter() - start, 1))
        logs[variant] = json.loads((out / "eval_log_forget.json").read_text())["generated_text"]
        shutil.rmtree(out)
    models.packed_linears = original
    return {
        "model": str(prepared / "target"),
        "precision": precision_label(Config().model),
        "seconds": seconds,
        "median_seconds": {k: statistics.median(v) for k, v in seconds.items()},
        "same_forget_answers": logs["mkl"] == logs["onednn_packed"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--eval", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/cpu_linear.json")
    args = parser.parse_args()
    result = {
        "command": "python benchmarks/cpu_linear.py"
        + (" --eval" if args.eval else "")
        + f" --out {args.out}",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_supports_bf16()}",
        "torch": torch.__version__,
        "linear": linear_rates(),
    }
    if args.eval:
        result["tofu_mini_eval"] = eval_times()
        print(result["tofu_mini_eval"])
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
