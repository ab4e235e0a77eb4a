"""How much a smaller tofu-mini profile blurs model utility, from logs already written (no model runs).

    .venv/bin/python benchmarks/eval_profile_subsets.py [--out benchmarks/results/eval_profile_subsets.json]

Every model evaluated on the current profile (the prepared target and retain models, and every
`runs/sd-*` showdown run) is summarised again on each smaller profile: the first `retain_rows`
retain rows, the first `utility_rows` real_authors/world_facts rows, and the greedy answers cut to
`max_new_tokens` tokens (greedy decoding is the same up to the cut, so this equals generating
fewer tokens, up to re-tokenisation), with ROUGE recomputed. Reports the Spearman correlation of
model utility with the current profile's and the mean and spread of its shift.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import tempfile
from pathlib import Path

from scipy.stats import spearmanr

from tokenforget.evaluate.metrics import rouge_recall
from tokenforget.evaluate.tofu import LOG_FILES, read_tofu_logs, summarize

CURRENT = {"retain_rows": 40, "utility_rows": 50, "max_new_tokens": 48}
VARIANTS = [
    {"max_new_tokens": 32},
    {"retain_rows": 20},
    {"utility_rows": 25},
    {"retain_rows": 20, "utility_rows": 25, "max_new_tokens": 32},
]


def cut(src: Path, dst: Path, profile: dict[str, int], tokenizer) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for split, name in LOG_FILES.items():
        log = json.loads((src / name).read_text())
        rows = {"retain": profile["retain_rows"]}.get(split)
        if split in ("real_authors", "world_facts"):
            rows = profile["utility_rows"]
        out = {
            field: {k: v for k, v in values.items() if rows is None or int(k) < rows}
            for field, values in log.items()
        }
        if profile["max_new_tokens"] < CURRENT["max_new_tokens"]:
            for k, (question, answer, truth) in list(out["generated_text"].items()):
                ids = tokenizer(answer, add_special_tokens=False)["input_ids"][: profile["max_new_tokens"]]
                shorter = tokenizer.decode(ids, skip_special_tokens=True).strip()
                out["generated_text"][k] = [question, shorter, truth]
                scores = rouge_recall([shorter], [truth])[0]
                out["rouge1_recall"][k], out["rougeL_recall"][k] = (
                    scores["rouge1_recall"],
                    scores["rougeL_recall"],
                )
        (dst / name).write_text(json.dumps(out))


def main() -> None:
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="benchmarks/results/eval_profile_subsets.json")
    args = parser.parse_args()
    prepared = Path(sorted(glob.glob(".cache/tokenforget/prepared/tofu-mini-*"))[0])
    tokenizer = AutoTokenizer.from_pretrained(prepared / "target")
    folders = {"target": prepared / "eval/tofu-mini/target", "retain": prepared / "eval/tofu-mini/retain"}
    for folder in sorted(glob.glob("runs/sd-*/eval/unlearned")):
        if all((Path(folder) / name).is_file() for name in LOG_FILES.values()):
            folders[folder.split("/")[1]] = Path(folder)
    full = {name: summarize(read_tofu_logs(f))["model_utility"] for name, f in folders.items()}
    result = {
        "command": "python benchmarks/eval_profile_subsets.py",
        "current": CURRENT,
        "models": len(folders),
    }
    result["variants"] = []
    for change in VARIANTS:
        profile = {**CURRENT, **change}
        with tempfile.TemporaryDirectory() as tmp:
            small = {}
            for name, folder in folders.items():
                cut(folder, Path(tmp) / name, profile, tokenizer)
                small[name] = summarize(read_tofu_logs(Path(tmp) / name))["model_utility"]
        shifts = [small[n] - full[n] for n in folders]
        row = {
            "change": change,
            "spearman": round(
                float(spearmanr([full[n] for n in folders], [small[n] for n in folders])[0]), 3
            ),
            "shift_mean": round(statistics.mean(shifts), 4),
            "shift_sd": round(statistics.pstdev(shifts), 4),
            "model_utility": {n: [round(full[n], 4), round(small[n], 4)] for n in folders},
        }
        print(row["change"], row["spearman"], row["shift_mean"], row["shift_sd"])
        result["variants"].append(row)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
