"""`tokenforget attack relearn`: does the forgetting hold when the model is fine-tuned a little?

A targeted relearning attack fine-tunes a copy of the unlearned model for a few steps on text
related to what was forgotten, then asks the forgotten questions again. The attack data
(`attack_data`) is, by default, one half of each forget author's answers (`attack_halves`), and the
other half is scored, so a model can only get the scored answers back if the forgotten knowledge
is still inside it; or a file of the user's (public text about the subject), or retain answers
only (a benign fine-tune), with the whole forget set scored. The same attack on the retain model,
which never saw the forget set, is the yardstick: what anyone learns from the attack data alone.
Recovery is the gap between the two.

The budgets are nested: the 10-step copy is the 5-step copy fine-tuned 5 steps more (each leg with
its own linear decay, from the same attack data order), so a grid of 0, 5, 10, 20 costs 20 steps,
not 35. The given model is never changed; each copy goes into the run folder, resumable like every
other stage, and is evaluated with `evaluate_tofu` on the scored half, so its numbers
are the ones `tokenforget eval tofu` gives on the saved model. The retain model's attacked copies
live in the world's folder, one set per attack recipe (`attack_folder`), shared by every run.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from tokenforget.artifacts import Stamp
from tokenforget.config import Config
from tokenforget.data.benchmarks import QABenchmark
from tokenforget.data.records import Sample, read_samples
from tokenforget.evaluate.metrics import leak_rate
from tokenforget.evaluate.tofu import generated_texts
from tokenforget.evaluate.tofu_run import evaluate_tofu
from tokenforget.evaluate.tokens import not_given, sample_key, unwanted_words
from tokenforget.models import file_sha256, verify_manifest
from tokenforget.prepare import train_stage
from tokenforget.progress import console

ATTACK_STEPS = (0, 5, 10, 20)
SCORED = ("forget_Q_A_Prob", "forget_truth_ratio", "forget_quality", "uw_leak_rate")


def attack_halves(bench: QABenchmark) -> tuple[list[Sample], QABenchmark]:
    """(attack samples, the benchmark with only the scored half as its forget split): forget rows
    alternate between the halves, so each forget author gives half of its answers to each."""
    attack = bench.forget[0::2]
    scored = {sample_key(s) for s in bench.forget[1::2]}
    return attack, replace(
        bench,
        name=f"{bench.name}-scored-half",
        forget=bench.forget[1::2],
        eval_forget=[s for s in bench.eval_forget if sample_key(s) in scored],
    )


def attack_data(bench: QABenchmark, data: str) -> tuple[list[Sample], QABenchmark]:
    """(attack samples, the benchmark whose forget split is scored) for `data`: `forget-half`, `retain`
    (as many retain answers as half the forget set, spread over the retain authors) or a file."""
    if data == "forget-half":
        return attack_halves(bench)
    if data == "retain":
        n = max(len(bench.forget) // 2, 1)
        return bench.retain[:: max(len(bench.retain) // n, 1)][:n], bench
    return read_samples(data), bench


def attack_config(cfg: Config, lr: float, batch_size: int) -> Config:
    """The fine-tune an attacker runs: full weights, answer-only NLL, no warm-up, linear decay."""
    prepare = cfg.prepare.model_copy(
        update={
            "lr": lr,
            "batch_size": batch_size,
            "micro_batch_size": batch_size,
            "lora": None,
            "warmup_ratio": 0.0,
        }
    )
    return cfg.model_copy(update={"prepare": prepare})


def relearned(
    cfg: Config, model: str, attack: list[Sample], steps: int, folder: Path, batch_size: int
) -> str:
    """`model` after `steps` more optimizer steps on the attack samples (a copy in `folder`; resumable)."""
    if steps == 0:
        return model
    out = folder / "model"
    if not verify_manifest(out):
        epochs = steps * batch_size / len(attack)
        train_stage(cfg, model, attack, epochs, out, folder / "work", f"relearn {steps} steps")
    return str(out)


def scored_leak_rate(eval_dir: Path, labelled: dict[str, Sample], scored: list[Sample]) -> float | None:
    """The share of the scored answers' unwanted words that come out of the greedy answers."""
    texts = generated_texts(eval_dir, "forget")
    if texts is None or not labelled:
        return None
    words, answers = [], []
    for index, sample in enumerate(scored):
        labels = labelled.get(sample_key(sample))
        row = texts.get(str(index))
        if labels is None or row is None:
            return None
        words.append(not_given(unwanted_words(labels), sample.question))
        answers.append(row[1])
    return leak_rate(words, answers)


def attack_folder(cfg: Config, root: Path, lr: float, batch_size: int, data: str = "forget-half") -> Path:
    """Where a relearning attack's copies live under `root` (a run folder, or the world's folder for
    the retain model's, which every run in the world shares): one folder per attack recipe, so a
    copy made under other settings is never taken for this attack's."""
    payload = {
        "split": "forget rows alternate: even attacked, odd scored",
        "budgets": "nested: each budget continues the previous one's copy",
        "lr": lr,
        **({} if data == "forget-half" else {"data": data if data == "retain" else file_sha256(Path(data))}),
        "batch_size": batch_size,
        "seed": cfg.prepare.seed,
        "prompt": cfg.prompt.model_dump(mode="json"),
        "precision": cfg.model.precision,
    }
    return root / "attacks" / f"relearn-{Stamp('relearn', payload).key[:12]}"


def budget_folder(name: str, steps: int, out: Path, retain_root: Path) -> Path:
    """Where model `name`'s copy after `steps` attack steps lives (its `model/` and `eval/`): the
    retain model's under `retain_root`, shared by every run in the world; the others' under `out`."""
    return (retain_root if name == "retain" else out / name) / f"step-{steps}"


def relearn_copies(names: list[str], out: Path, retain_root: Path, steps: tuple[int, ...]) -> dict[Path, str]:
    """Every copy an attack on the models `names` writes (folder -> what it is); budget 0 is the
    model itself, no copy."""
    return {
        budget_folder(name, k, out, retain_root): f"the {name} model after {k} relearning steps"
        for name in names
        for k in steps
        if k
    }


def relearn_attack(
    cfg: Config,
    models: dict[str, str],
    bench: QABenchmark,
    out: Path,
    labels: list[Sample],
    steps: tuple[int, ...] = ATTACK_STEPS,
    lr: float = 1e-4,
    batch_size: int = 4,
    yardstick: Path | None = None,
    data: str = "forget-half",
) -> dict[str, Any]:
    """Attack each model (name -> folder; `retain` is the yardstick) at each step budget with the
    attack `data` (`attack_data`); the forget numbers on the scored answers, per model and budget,
    and the recovery over the retain model. `yardstick`: where the retain model's attacked copies go
    (default: under `out`)."""
    steps = tuple(sorted(set(steps)))  # nested budgets: each continues the one before it
    attack, scored_bench = attack_data(bench, data)
    attack_cfg = attack_config(cfg, lr, batch_size)
    labelled = {sample_key(s): s for s in labels}
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    order = ["retain", *(name for name in models if name != "retain")]  # retain first: FQ needs it
    retain_root = yardstick or out / "retain"
    for name in order:
        rows[name] = {}
        model, done = models[name], 0
        for k in steps:
            folder = budget_folder(name, k, out, retain_root)
            console.print(f"[bold]relearn[/] {name}: {k} steps on {len(attack)} attack answers")
            model, done = relearned(attack_cfg, model, attack, k - done, folder, batch_size), k
            # forget quality against the retain model under the same attack (what a model that never
            # saw the forget set looks like after it); the retain model against itself unattacked
            retain_logs = retain_root / f"step-{0 if name == 'retain' else k}" / "eval"
            summary = evaluate_tofu(cfg, model, scored_bench, folder / "eval", retain_logs, ("forget",))
            point = {key: summary.get(key) for key in SCORED}
            point["uw_leak_rate"] = scored_leak_rate(folder / "eval", labelled, scored_bench.eval_forget)
            rows[name][k] = point
    result = {
        "yardstick": str(retain_root),
        "steps": list(steps),
        "lr": lr,
        "batch_size": batch_size,
        "attack_data": data,
        "attack_answers": len(attack),
        "scored_answers": len(scored_bench.eval_forget),
        "models": rows,
        "recovery": {
            name: {k: _gap(rows[name][k], rows["retain"][k]) for k in steps}
            for name in rows
            if name != "retain"
        },
    }
    (out / "relearn.json").write_text(json.dumps(result, indent=2))
    return result


def _gap(model: dict[str, Any], yardstick: dict[str, Any]) -> dict[str, float | None]:
    """How far above the attacked retain model the attacked model answers (forget Q_A_Prob, truth
    ratio and UW leak: positive = knowledge the attack data alone does not explain)."""
    return {
        key: model[key] - yardstick[key] if model[key] is not None and yardstick[key] is not None else None
        for key in ("forget_Q_A_Prob", "forget_truth_ratio", "uw_leak_rate")
    }
