"""One evaluation pass in one process vs split over forked single-thread workers (`eval.workers`).

    .venv/bin/python benchmarks/eval_workers.py [--repeats 2] [--out benchmarks/results/eval_workers.json]

Evaluates the prepared TOFU-mini target on the tofu-mini profile (`evaluate_tofu`, as
`tokenforget eval tofu` does) with `eval.workers=1` and `eval.workers=auto` alternately, `--repeats`
times each, and reports the wall times, their medians and ratio, and how far the logs of the two
settings are apart (greedy answers, per-answer mean losses, forget quality, model utility).
Needs the prepared models (`tokenforget prepare tofu-mini`) in `$TOKENFORGET_CACHE`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tokenforget.config import Config
from tokenforget.data.benchmarks import tofu_mini
from tokenforget.evaluate.tofu import LOG_FILES
from tokenforget.evaluate.tofu_run import evaluate_tofu
from tokenforget.forward.workers import worker_count
from tokenforget.prepare import prepared_folder


def log_rows(folder: Path) -> dict[str, dict]:
    return {name: json.loads((folder / name).read_text()) for name in LOG_FILES.values()}


def distance(a: dict[str, dict], b: dict[str, dict]) -> dict[str, float | int]:
    """Greedy answers that differ, and the largest relative difference of a mean answer loss."""
    differing, worst = 0, 0.0
    for name, log in a.items():
        other = b[name]
        for k, generated in log["generated_text"].items():
            differing += generated[1] != other["generated_text"][k][1]
            pairs = [(log[f][k], other[f][k]) for f in ("avg_gt_loss", "avg_paraphrased_loss")]
            pairs += list(zip(log["average_perturb_loss"][k], other["average_perturb_loss"][k], strict=True))
            worst = max([worst, *(abs(x - y) / abs(x) for x, y in pairs)])
    return {"greedy_answers_differing": differing, "max_rel_loss_difference": worst}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/eval_workers.json")
    args = parser.parse_args()
    bench = tofu_mini()
    prepared = prepared_folder(Config(), bench)
    seconds: dict[str, list[float]] = {"1": [], "auto": []}
    logs: dict[str, dict] = {}
    summaries: dict[str, dict] = {}
    for setting in ["1", "auto"] * args.repeats:
        cfg = Config.model_validate({"eval": {"workers": int(setting) if setting != "auto" else "auto"}})
        out = Path(tempfile.mkdtemp())
        start = time.perf_counter()
        summary = evaluate_tofu(cfg, str(prepared / "target"), bench, out, prepared / "eval/tofu-mini/retain")
        seconds[setting].append(round(time.perf_counter() - start, 1))
        print(setting, seconds[setting][-1], flush=True)
        logs[setting] = log_rows(out)
        summaries[setting] = {k: summary[k] for k in ("forget_quality", "model_utility")}
        shutil.rmtree(out)
    median = {k: statistics.median(v) for k, v in seconds.items()}
    result = {
        "command": f"python benchmarks/eval_workers.py --repeats {args.repeats}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "model": str(prepared / "target"),
        "auto_workers": worker_count("auto", torch.device("cpu"), 220),
        "seconds": seconds,
        "median_seconds": median,
        "auto_over_one": round(median["auto"] / median["1"], 3),
        "logs_apart": distance(logs["1"], logs["auto"]),
        "summaries": summaries,
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
