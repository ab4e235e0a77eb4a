"""The TOFU-mini showdown: unlearning methods at equal steps and learning rate, one yardstick.

    python benchmarks/tofu_mini_methods.py [--gold ../shared/data/tofu_identified/forget01_gpt.jsonl]

Runs `tokenforget run` once per method (run folders `runs/showdown-<name>/`: resumable, a finished
one is reused), every one at the defaults (lr 1e-4, 3 epochs = 15 steps of 8 forget answers, seed 0)
with token-level metrics on the paper's GPT-4o labels, then writes
`benchmarks/results/tofu_mini_methods.json` (the table) and `tofu_mini_methods_compare.html`
(the forget-quality / utility plane). TPO runs twice: with the offline default identifier
(predictability) and with the GPT-4o labels as its UW set; GA and NPO also on UW tokens only
(`--tokens uw`, predictability labels), which separates the identifier's effect from the loss's.
One seed and one grid point per method: the issue's 3 seeds and per-method sweeps are not run yet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS: dict[str, list[str]] = {
    "tpo": [],
    "tpo-gold": ["identify.labels={gold}"],
    "ga": ["unlearn.method=ga"],
    "npo": ["unlearn.method=npo"],
    "graddiff": ["unlearn.method=graddiff"],
    "ga-uw": ["unlearn.method=ga", "unlearn.tokens=uw"],
    "npo-uw": ["unlearn.method=npo", "unlearn.tokens=uw"],
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gold", default=str(ROOT.parent / "shared/data/tofu_identified/forget01_gpt.jsonl"))
    parser.add_argument("--only", nargs="*", help="Run only these method names.")
    args = parser.parse_args()
    runs = []
    for name, settings in METHODS.items():
        if args.only and name not in args.only:
            continue
        command = [sys.executable, "-m", "tokenforget.cli", "run", "--set", f"run.name=showdown-{name}"]
        command += ["--set", f"eval.token_labels={args.gold}"]
        for setting in settings:
            command += ["--set", setting.format(gold=args.gold)]
        subprocess.run(command, check=True, cwd=ROOT)
        folder = ROOT / "runs" / f"showdown-{name}"
        summary = json.loads((folder / "summary.json").read_text())
        row = {k: summary["headline"]["unlearned"].get(k) for k in COLUMNS}
        runs.append(
            {
                "name": name,
                "settings": settings,
                **row,
                "unlearn_seconds": summary["unlearn"]["seconds"],
                "steps": summary["unlearn"]["steps"],
            }
        )
        reference = summary["headline"]
    from tokenforget.report import write_compare

    found = [
        (
            f"showdown-{r['name']}",
            json.loads((ROOT / "runs" / f"showdown-{r['name']}" / "summary.json").read_text()),
        )
        for r in runs
    ]
    results = ROOT / "benchmarks" / "results"
    write_compare(results / "tofu_mini_methods_compare.html", found)
    payload = {
        "command": "python benchmarks/tofu_mini_methods.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": platform.machine(), "cores": os.cpu_count()},
        "recipe": "tokenforget defaults: lr 1e-4, 3 epochs, batch 8, seed 0; token metrics on --gold",
        "target": {k: reference["target"].get(k) for k in COLUMNS},
        "retain": {k: reference["retain"].get(k) for k in COLUMNS},
        "runs": runs,
    }
    (results / "tofu_mini_methods.json").write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
