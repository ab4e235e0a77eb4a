"""The main job (`tokenforget run`): the stages in order, each skipping work already done.

Available now: prepare, then eval of the target and retain models (TOFU logs + summary; cached
next to the prepared models, so the retain model is evaluated once for every run). identify ->
unlearn -> report plug in as they land; the summary says which stages ran, so nothing pretends to
have happened.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenforget.config import Config
from tokenforget.data.records import read_samples
from tokenforget.prepare import Prepared, prepare, rouge_table
from tokenforget.runs import open_run, write_json

PENDING_STAGES = ["identify", "unlearn", "report"]


@dataclass
class RunResult:
    folder: Path
    prepared: Prepared
    summary: dict[str, Any]


def validate_inputs(cfg: Config) -> None:
    """Read every user data file named in the config; raises DataError before anything is written."""
    for path in (cfg.data.forget, cfg.data.retain):
        if path is not None:
            read_samples(path)


def run(cfg: Config) -> RunResult:
    """Run the main job in runs/<cfg.run.name>/ and write summary.json there."""
    from tokenforget.data.benchmarks import load_benchmark
    from tokenforget.evaluate.tofu_run import evaluate_tofu

    validate_inputs(cfg)
    folder = open_run(cfg)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    prepared = prepare(cfg)
    seconds["prepare"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    bench = load_benchmark(cfg)
    eval_root = prepared.folder / "eval" / cfg.eval.profile
    retain_eval = evaluate_tofu(cfg, str(prepared.retain), bench, eval_root / "retain", eval_root / "retain")
    target_eval = evaluate_tofu(cfg, str(prepared.target), bench, eval_root / "target", eval_root / "retain")
    seconds["eval"] = round(time.perf_counter() - started, 1)
    summary = {
        "benchmark": cfg.run.benchmark,
        "target_model": str(prepared.target),
        "retain_model": str(prepared.retain),
        "prepare_rougeL_recall": dict(rouge_table(prepared.report)),
        "prepare_seconds": prepared.report.get("seconds", {}),
        "eval": {"target": target_eval, "retain": retain_eval, "logs": str(eval_root)},
        "stage_seconds": seconds,
        "stages_run": ["prepare", "eval"],
        "stages_not_available_yet": PENDING_STAGES,
    }
    write_json(folder / "summary.json", summary)
    return RunResult(folder=folder, prepared=prepared, summary=summary)
