"""The showdown's tables, in Markdown, from finished run folders (what `benchmarks/results/*_50steps.md`
shows under "Every run", "Each method's frontier" and "Attacks").

Make the runs first (`tokenforget sweep`, `tokenforget attack relearn RUN`, `... quantize RUN --bits 8`;
the commands are in each results file), then:

    python benchmarks/showdown_tables.py runs/s50-* --exclude 's50-atwu-tpo-*' > tables.md

- Every run: its group (compare's: the method, the settings it changed, what labelled its UW), lr,
  seed, TOFU's forget quality and model utility, the retain and real-authors answers' ROUGE, ΔlogP,
  KL on retain, UW leak.
- Each method's frontier, read as `tokenforget compare` reads it (a point is a configuration, read
  at its lowest seed): the highest forget quality at model utility >= 0.8 / 0.9 / 0.95x the
  target's, the same at the retain answers' ROUGE >= 0.8 / 0.9x the target's, the best point by the
  rule (highest forget quality at >= 0.9x the target's utility, ties to the lower KL), and that
  point at every seed run.
- Attacks: every run with a relearning or an int8 attack.

Every run must have unlearned the same model (compare's check): one world per call.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
from pathlib import Path
from typing import Any

from tokenforget.report import by_starting_model, compare_rows, latest_attack, run_entry, utility_frontier


def finished(folders: list[Path], exclude: list[str]) -> list[tuple[Path, tuple[str, dict[str, Any]]]]:
    """(folder, compare's entry) of every finished run folder not excluded, in name order."""
    kept = [
        f
        for f in sorted(folders)
        if (f / "summary.json").is_file() and not any(fnmatch.fnmatch(f.name, g) for g in exclude)
    ]
    return [(f, run_entry(f, json.loads((f / "summary.json").read_text()))) for f in kept]


def lr_text(lr: float) -> str:
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"  # 3e-5, 1e-4: as the run names and the sweeps write them


def every_run(runs: list[tuple[Path, tuple[str, dict[str, Any]]]]) -> str:
    lines = [
        "| group | lr | seed | forget quality | model utility | MU / target | retain ROUGE | "
        "real-authors ROUGE | ΔlogP UW / GW | KL on retain | UW leak | run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    table = []
    for (_, (name, summary)), row in zip(runs, compare_rows([e for _, e in runs]), strict=True):
        lr = json.loads(summary["settings"])["unlearn"]["lr"]  # run_entry read the config already
        target = summary["headline"]["target"]["model_utility"]
        real_authors = summary["tofu"]["unlearned"]["ra_Q_A_ROUGE"]
        table.append((row["group"], lr, row["seed"] or 0, row, target, real_authors, name))
    for group, lr, seed, r, target, real_authors, name in sorted(table, key=lambda t: t[:3]):
        lines.append(
            f"| {group} | {lr_text(lr)} | {seed} | {r['forget_quality']:.3g} | {r['model_utility']:.3f} | "
            f"{r['model_utility'] / target:.2f} | {r['retain_Q_A_ROUGE']:.3f} | {real_authors:.3f} | "
            f"{r['uw_dlogp']:.2f} / {r['gw_dlogp']:+.2f} | {r['kl_on_retain']:.3f} | "
            f"{r['uw_leak_rate']:.3f} | {name} |"
        )
    return "\n".join(lines)


def frontiers(entries: list[tuple[str, dict[str, Any]]]) -> str:
    target = entries[0][1]["headline"]["target"]
    rows = compare_rows(entries)
    by_utility = utility_frontier(rows, target["model_utility"])
    by_rouge = {
        e["group"]: e
        for e in utility_frontier(rows, target["retain_Q_A_ROUGE"], (0.8, 0.9), by="retain_Q_A_ROUGE")
    }

    def fq(value: float | None) -> str:
        return "none" if value is None else f"{value:.3g}"

    def shares(r: dict[str, Any]) -> str:
        return (
            f"{fq(r['forget_quality'])} / {r['model_utility'] / target['model_utility']:.2f}x / "
            f"{r['retain_Q_A_ROUGE'] / target['retain_Q_A_ROUGE']:.2f}x / {r['kl_on_retain']:.2f}"
        )

    lines = [
        "| group | points | FQ at MU >= 0.8x | >= 0.9x | >= 0.95x | FQ at retain ROUGE >= 0.8x | >= 0.9x | "
        "best run by the rule | at each seed: FQ / MU / retain ROUGE (÷ target) / KL |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in by_utility:
        rouge = by_rouge.get(e["group"], {})
        seeds = "; ".join(f"seed {r['seed'] or 0}: {shares(r)}" for r in e["seeds"]) or "-"
        lines.append(
            f"| {e['group']} | {e['points']} | {fq(e['fq_at_0.8x'])} | {fq(e['fq_at_0.9x'])} | "
            f"{fq(e['fq_at_0.95x'])} | {fq(rouge.get('fq_at_0.8x'))} | {fq(rouge.get('fq_at_0.9x'))} | "
            f"{e['best_run'] or 'none'} | {seeds} |"
        )
    return "\n".join(lines)


def attacks(runs: list[tuple[Path, tuple[str, dict[str, Any]]]]) -> str:
    lines = [
        "| run | FQ, MU / target | relearning: UW leak of the scored half, 0 -> N steps (above the "
        "attacked retain model) | relearning: FQ of the scored half, 0 -> N steps | int8: FQ, MU / "
        "target, UW leak, original -> int8 |",
        "|---|---|---|---|---|",
    ]
    for folder, (name, summary) in runs:
        relearn = latest_attack(folder, "relearn")
        int8 = latest_attack(folder, "quantize", lambda n: n["bits"] == 8)
        if not relearn and not int8:
            continue
        head, target = summary["headline"]["unlearned"], summary["headline"]["target"]["model_utility"]
        cells = [name, f"{head['forget_quality']:.3g}, {head['model_utility'] / target:.2f}x", "-", "-", "-"]
        if relearn:
            last = str(max(relearn["steps"]))
            leak = relearn["models"]["unlearned"]
            gap = relearn["recovery"]["unlearned"][last]["uw_leak_rate"]
            cells[2] = (
                f"{leak['0']['uw_leak_rate']:.3g} -> {leak[last]['uw_leak_rate']:.3g} ({gap:+.3g}), N={last}"
            )
            cells[3] = f"{leak['0']['forget_quality']:.3g} -> {leak[last]['forget_quality']:.3g}"
        if int8:
            before, after = int8["models"]["unlearned"]["before"], int8["models"]["unlearned"]["after"]
            cells[4] = (
                f"{before['forget_quality']:.3g} -> {after['forget_quality']:.3g}, "
                f"{after['model_utility'] / target:.2f}x, "
                f"{before['uw_leak_rate']:.3g} -> {after['uw_leak_rate']:.3g}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (runs/NAME)")
    parser.add_argument("--exclude", action="append", default=[], help="glob of run names to leave out")
    args = parser.parse_args()
    runs = finished(args.runs, args.exclude)
    if not runs:
        parser.error("no finished run (summary.json) among the folders given")
    worlds = by_starting_model([e for _, e in runs])
    if len(worlds) > 1:
        parser.error(f"these runs unlearned {len(worlds)} different models: one world per call")
    print("### Every run\n\n" + every_run(runs) + "\n")
    print("### Each method's frontier\n\n" + frontiers([e for _, e in runs]) + "\n")
    attacked = attacks(runs)
    if attacked.count("\n") > 1:  # a row beyond the header
        print("### Attacks\n\n" + attacked)


if __name__ == "__main__":
    main()
