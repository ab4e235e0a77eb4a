"""The TOFU-mini showdown: every method with the same tuning budget, the same steps, one yardstick.

    python benchmarks/tofu_mini_methods.py                  # everything (hours on 2 CPU cores)
    python benchmarks/tofu_mini_methods.py --collect        # only tabulate the finished run folders
    python benchmarks/tofu_mini_methods.py --only tpo npo   # a subset of methods

Protocol (the same for every method):
1. Tuning: `tokenforget sweep` over one learning-rate grid (--lrs, default 3e-5,1e-4,3e-4) at seed 0;
   3 epochs = 15 optimizer steps of 8 forget answers; each method's published beta/lambda.
2. Best point, one stated rule: the highest forget quality among grid points whose model utility
   is at least --utility-floor (default 0.9) times the target's; if no point keeps that much
   utility, the point with the highest model utility.
3. Seeds: the best point again at seeds 1 and 2 (data order, IdkPO answers); the table gives the
   mean and the spread (min, max) over the seeds run so far.
4. Reported step: the final model (after the last optimizer step), for every method. Every run also
   evaluates itself every 5 steps (`unlearn.eval_every`): its trajectory is in its report.
5. Yardstick: token-level metrics on the paper's GPT-4o labels (--labels DIR) for every run. TPO runs
   twice: with the offline default identifier (predictability) and with the GPT-4o labels as its UW
   set; GA and NPO also on UW tokens only (`unlearn.tokens=uw`, predictability labels), which
   separates the identifier's effect from the loss's.

Runs go to `runs/sd-<method>-lr<lr>_seed<seed>/` (resumable; a finished one is reused), so the
showdown can be stopped and finished later. After every run it rewrites
`benchmarks/results/tofu_mini_methods.json` (the table and every run) and
`tofu_mini_methods_compare.html` (every run on the forget-quality / utility plane).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from published import add_labels_argument, gpt_labels

ROOT = Path(__file__).resolve().parents[1]
METHODS: dict[str, list[str]] = {
    "tpo": [],
    "tpo-gold": ["identify.labels={gold}"],
    "ga": ["unlearn.method=ga"],
    "graddiff": ["unlearn.method=graddiff"],
    "npo": ["unlearn.method=npo"],
    "npo-rt": ["unlearn.method=npo_rt"],
    "simnpo": ["unlearn.method=simnpo"],
    "idkpo": ["unlearn.method=idkpo"],
    "ga-uw": ["unlearn.method=ga", "unlearn.tokens=uw"],
    "npo-uw": ["unlearn.method=npo", "unlearn.tokens=uw"],
    "atwu": ["unlearn.method=atwu"],
}
COLUMNS = (
    "forget_quality",
    "model_utility",
    "uw_leak_rate",
    "uw_leak_rate_paraphrased",
    "uw_dlogp",
    "gw_dlogp",
    "kl_on_retain",
    "forget_Q_A_ROUGE",
)
RESULTS = ROOT / "benchmarks" / "results"


def folder_of(method: str, lr: str, seed: int) -> Path:
    return ROOT / "runs" / f"sd-{method}-lr{lr}_seed{seed}"


def sweep(method: str, lrs: list[str], seeds: list[int], gold: str, eval_every: int) -> None:
    """`tokenforget sweep` over lrs x seeds for one method (finished points are reused)."""
    command = [sys.executable, "-m", "tokenforget.cli", "sweep", "--name", f"sd-{method}"]
    command += [
        "--grid",
        "unlearn.lr=" + ",".join(lrs),
        "--grid",
        "unlearn.seed=" + ",".join(map(str, seeds)),
    ]
    settings = [f"eval.token_labels={gold}", f"unlearn.eval_every={eval_every}", *METHODS[method]]
    for setting in settings:
        command += ["--set", setting.format(gold=gold)]
    subprocess.run(command, check=True, cwd=ROOT)


def finished(method: str, lr: str, seed: int) -> dict | None:
    path = folder_of(method, lr, seed) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def best_lr(method: str, lrs: list[str], floor: float) -> str | None:
    """The stated rule: highest forget quality with model utility >= floor x the target's; else the
    highest model utility. None until every grid point of seed 0 is finished."""
    points = {lr: finished(method, lr, 0) for lr in lrs}
    if any(s is None for s in points.values()):
        return None
    heads = {lr: s["headline"] for lr, s in points.items()}
    keeps = [
        lr
        for lr, h in heads.items()
        if h["unlearned"]["model_utility"] >= floor * h["target"]["model_utility"]
    ]
    if keeps:
        return max(keeps, key=lambda lr: heads[lr]["unlearned"]["forget_quality"])
    return max(lrs, key=lambda lr: heads[lr]["unlearned"]["model_utility"])


def train_seconds(unlearn: dict) -> float | None:
    """Unlearning wall time without the in-training evaluation (None for runs that predate its
    timing)."""
    if unlearn.get("eval_every_seconds") is None:
        return None
    return round(unlearn["seconds"] - unlearn["eval_every_seconds"], 1)


def spread(values: list[float | None]) -> dict:
    numbers = [v for v in values if v is not None]
    if not numbers:
        return {"mean": None, "min": None, "max": None}
    return {"mean": statistics.fmean(numbers), "min": min(numbers), "max": max(numbers)}


def collect(methods: list[str], lrs: list[str], seeds: list[int], floor: float, argv: list[str]) -> dict:
    from tokenforget.report import write_compare

    table, runs, every, groups = [], [], [], {}
    reference = None
    for method in methods:
        for lr in lrs:
            for seed in seeds:
                summary = finished(method, lr, seed)
                if summary is None:
                    continue
                reference = reference or summary["headline"]
                every.append((folder_of(method, lr, seed).name, summary))
                groups[folder_of(method, lr, seed).name] = method
                runs.append(
                    {
                        "method": method,
                        "lr": lr,
                        "seed": seed,
                        **{k: summary["headline"]["unlearned"].get(k) for k in COLUMNS},
                        "unlearn_seconds": summary["unlearn"]["seconds"],  # with the trajectory
                        "train_seconds": train_seconds(summary["unlearn"]),
                        "steps": summary["unlearn"]["steps"],
                        "trajectory": summary.get("trajectory", []),
                    }
                )
        best = best_lr(method, lrs, floor)
        at_best = [r for r in runs if r["method"] == method and r["lr"] == best]
        if at_best:
            table.append(
                {
                    "method": method,
                    "best_lr": best,
                    "seeds": [r["seed"] for r in at_best],
                    **{k: spread([r[k] for r in at_best]) for k in (*COLUMNS, "train_seconds")},
                }
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    if every:
        write_compare(RESULTS / "tofu_mini_methods_compare.html", every, groups)
    payload = {
        "command": "python benchmarks/tofu_mini_methods.py " + " ".join(argv),
        "machine": {"cpu": platform.machine(), "cores": os.cpu_count()},
        "protocol": __doc__.split("Protocol")[1].split("Runs go to")[0].strip(),
        "lrs": lrs,
        "seeds": seeds,
        "utility_floor": floor,
        "target": {k: reference["target"].get(k) for k in COLUMNS} if reference else None,
        "retain": {k: reference["retain"].get(k) for k in COLUMNS} if reference else None,
        "table": table,
        "runs": runs,
    }
    (RESULTS / "tofu_mini_methods.json").write_text(json.dumps(payload, indent=2))
    return payload


def fmt(value: float | None) -> str:
    # not report.fmt: its three decimals would print the forget qualities 3.0e-3 and 6.8e-3 as
    # 0.003 and 0.007, and the README's tables keep two significant digits below 1e-2
    if value is None:
        return "n/a"
    if value != 0 and abs(value) < 1e-2:
        return f"{value:.1e}".replace("e-0", "e-")
    return f"{value:.3f}"


def markdown(payload: dict) -> str:
    """The two README tables: each method at its best point over its seeds (mean, then min..max),
    and every finished grid point of seed 0."""
    shown = ("forget_quality", "model_utility", "uw_leak_rate", "uw_dlogp", "gw_dlogp", "kl_on_retain")
    lines = [
        "| method | best lr | seeds | " + " | ".join(shown) + " |",
        "|---|---|---|" + "---|" * len(shown),
    ]
    for row in payload["table"]:
        cells = []
        for key in shown:
            value = row[key]
            spread_text = "" if len(row["seeds"]) < 2 else f" ({fmt(value['min'])}..{fmt(value['max'])})"
            cells.append(fmt(value["mean"]) + spread_text)
        lines.append(
            f"| {row['method']} | {row['best_lr']} | {len(row['seeds'])} | " + " | ".join(cells) + " |"
        )
    lines += ["", "| run, lr | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
    order = {m: k for k, m in enumerate(dict.fromkeys(r["method"] for r in payload["runs"]))}
    for run in sorted(payload["runs"], key=lambda r: (order[r["method"]], float(r["lr"]))):
        if run["seed"] == 0:
            lines.append(f"| {run['method']}, {run['lr']} | " + " | ".join(fmt(run[k]) for k in shown) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_labels_argument(parser)
    parser.add_argument("--only", nargs="*", default=None, help="Run only these method names.")
    parser.add_argument("--lrs", nargs="*", default=["1e-4", "3e-5", "3e-4"], help="The learning-rate grid.")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--utility-floor", type=float, default=0.9)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--collect", action="store_true", help="Only tabulate finished runs.")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="Print the tables as Markdown (for the README) instead of JSON.",
    )
    args = parser.parse_args()
    methods = args.only or list(METHODS)
    argv = sys.argv[1:]
    if not args.collect:
        # cheapest evidence first: every method at the first grid point, then the rest of the
        # grid, then the other seeds at each method's best point
        for lrs in ([args.lrs[0]], args.lrs):
            for method in methods:
                sweep(method, lrs, [0], str(gpt_labels(args.labels)), args.eval_every)
                collect(methods, args.lrs, args.seeds, args.utility_floor, argv)
        for method in methods:
            best = best_lr(method, args.lrs, args.utility_floor)
            sweep(method, [best], args.seeds, str(gpt_labels(args.labels)), args.eval_every)
            collect(methods, args.lrs, args.seeds, args.utility_floor, argv)
    payload = collect(methods, args.lrs, args.seeds, args.utility_floor, argv)
    print(markdown(payload) if args.markdown else json.dumps(payload["table"], indent=2))


if __name__ == "__main__":
    main()
