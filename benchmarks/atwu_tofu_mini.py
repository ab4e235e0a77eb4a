"""ATWU on TOFU-mini: how well the learned token weights match the paper's GPT-4o UW labels.

    .venv/bin/python benchmarks/atwu_tofu_mini.py [--epochs 5] [--out benchmarks/results/atwu_tofu_mini.json]

Unlearns the 40 TOFU-mini forget answers from the prepared target model (`tokenforget prepare`,
cached) with `--method atwu` (the authors' defaults: beta 5, gamma 5, alpha 0.5, a scorer step every
5 model steps, scorer SGD lr 0.05) and the bundled retain set. The forget file is the paper's GPT-4o
labelling (`forget01_gpt.jsonl`, given with `--labels DIR`: see `published.py`): ATWU does not train
on its spans, they are only the yardstick. Reported: token-level AUROC / average precision of the
final weights against the spans (`unlearn.json`), the same at word level through `identify score` on
`token_weights.jsonl`, and the per-step batch AUROC trajectory from the training log."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from published import add_labels_argument, gpt_labels

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    add_labels_argument(parser)
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--update-every", type=int, default=5)
    parser.add_argument("--scorer-lr", type=float, default=0.05)
    parser.add_argument("--runs", default="runs/bench-atwu-tofu-mini")
    parser.add_argument("--out", default="benchmarks/results/atwu_tofu_mini.json")
    args = parser.parse_args()

    from tokenforget.config import load_config
    from tokenforget.identify import read_identified
    from tokenforget.identify.score import score_labels
    from tokenforget.prepare import prepare
    from tokenforget.unlearn import unlearn

    prepared = prepare(load_config())
    overrides = [
        f"model.name={prepared.target}",
        f"data.forget={gpt_labels(args.labels)}",
        "data.retain=tofu-mini",
        "unlearn.method=atwu",
        f"unlearn.epochs={args.epochs}",
        f"unlearn.lr={args.lr}",
        f"atwu.update_every={args.update_every}",
        f"atwu.scorer_lr={args.scorer_lr}",
    ]
    folder = Path(args.runs) / f"e{args.epochs}-lr{args.lr}-n{args.update_every}-s{args.scorer_lr}"
    result = unlearn(load_config(overrides=overrides), folder)
    weights = read_identified(folder / "token_weights.jsonl")
    words = score_labels(weights, read_identified(gpt_labels(args.labels)))
    words_expanded = score_labels(weights, read_identified(gpt_labels(args.labels)), expand_gold=True)
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    report = {
        "command": "python benchmarks/atwu_tofu_mini.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "runs")),
        "model": "the prepared TOFU-mini target (SmolLM2-135M-Instruct fine-tuned on the forget authors)",
        "steps": result.summary["steps"],
        "seconds": result.summary["seconds"],
        "token_alignment_vs_gpt4o": result.summary["atwu"]["alignment"],
        "word_level_vs_gpt4o": {k: words.get(k) for k in ("word_auroc", "word_average_precision", "word_f1")},
        "word_level_vs_gpt4o_expanded": {
            k: words_expanded.get(k) for k in ("word_auroc", "word_average_precision", "word_f1")
        },
        "batch_auroc_per_step": [row.get("g_auroc") for row in log],
        "mean_g_per_step": [row.get("mean_g") for row in log],
        "run_folder": str(folder),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
