"""The main job on TOFU-mini: stage times and headline numbers of finished run folders.

Run the recipes first (each is `tokenforget run`, resumable; the prepared models are cached), e.g.

    tokenforget run --set run.name=tpo-e3-lr1e-4                                  # the defaults
    tokenforget run --set run.name=tpo-e3-lr3e-5 --set unlearn.lr=3e-5
    tokenforget run --set run.name=papers --set unlearn.lr=1e-5 --set unlearn.epochs=10

then collect them:

    python benchmarks/main_job.py runs/tpo-e3-lr1e-4 runs/tpo-e3-lr3e-5 runs/papers

Writes benchmarks/results/main_job_tofu_mini.json: per run the unlearning recipe, its wall time
(unlearn.json), the evaluation wall time of each model per split (the TOFU summaries), and the
headline table (unlearned / target / retain).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch


def collect(folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    unlearn = summary["unlearn"]
    return {
        "run": str(folder),
        "method": summary["method"],
        "identifier": summary["identifier"],
        "recipe": {
            "lr": _config_value(folder, "lr"),
            "epochs": _config_value(folder, "epochs"),
            "steps": unlearn["steps"],
        },
        "stage_seconds": summary.get("stage_seconds"),
        "unlearn_seconds": unlearn["seconds"],
        "eval_seconds": {m: t.get("eval_seconds") for m, t in summary["tofu"].items()},
        "headline": summary["headline"],
    }


def _config_value(folder: Path, key: str) -> float:
    import yaml

    return yaml.safe_load((folder / "config.yaml").read_text())["unlearn"][key]


def main() -> None:
    runs = [collect(Path(p)) for p in sys.argv[1:]]
    out = Path(__file__).parent / "results" / "main_job_tofu_mini.json"
    payload = {
        "command": "python benchmarks/main_job.py " + " ".join(sys.argv[1:]),
        "runs_made_by": "tokenforget run --set run.name=NAME [--set unlearn.lr=.. --set unlearn.epochs=..]",
        "machine": {
            "cpu": platform.machine(),
            "threads": torch.get_num_threads(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
        },
        "runs": runs,
    }
    out.write_text(json.dumps(payload, indent=2))
    print(out)


if __name__ == "__main__":
    main()
