"""The main job (`tokenforget run`): prepare -> identify -> unlearn -> eval -> report.

Every stage skips work already done, so the run folder is the cache and a killed run resumes:
- prepare: the benchmark's target and retain models (cached across runs in the user cache);
- identify: `identified.jsonl`, the forget set labelled by `identify.method`;
- unlearn: `unlearn/` (model, train_log.jsonl, checkpoints), resumable step by step;
- eval: TOFU logs + summary of the unlearned model (target and retain: evaluated once, cached next
  to the prepared models), token-level forgetting of all three against the target, KL on retain;
- report: `report.html` (one self-contained file), `summary.json`, `receipt.json`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenforget.config import Config
from tokenforget.data.benchmarks import QABenchmark
from tokenforget.data.records import Sample, read_samples
from tokenforget.data.sets import BUNDLED, load_retain
from tokenforget.disk import Need, check_space, main_job_needs
from tokenforget.inputs import check_inputs
from tokenforget.models import resolve_model
from tokenforget.prepare import Prepared, prepare, prepared_folder, rouge_table
from tokenforget.runs import open_run, read_step_log, write_json
from tokenforget.stopping import stop_sentence

MODELS = ("unlearned", "target", "retain")


@dataclass
class RunResult:
    folder: Path
    prepared: Prepared | None  # None for a user's own forget set (no benchmark)
    summary: dict[str, Any]
    report: Path


class StageClock:
    """Wall seconds of each stage of this invocation (a cached stage takes about 0)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(time.perf_counter() - started, 1)


def with_settings(cfg: Config, **sections: dict[str, Any]) -> Config:
    """A copy of cfg with some keys of some sections replaced (validated like --set)."""
    update = {name: getattr(cfg, name).model_copy(update=values) for name, values in sections.items()}
    return cfg.model_copy(update=update)


def write_forget_file(path: Path, samples: list[Sample]) -> None:
    """The benchmark's forget set as a plain QA JSONL file (the input the identifiers read)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(s.to_dict(), ensure_ascii=False) + "\n" for s in samples))
    tmp.replace(path)


def identify_stage(cfg: Config, bench: QABenchmark, prepared: Prepared, folder: Path) -> Path:
    from tokenforget.identify.run import identify_file

    identified = folder / "identified.jsonl"
    if identified.is_file():
        return identified
    if cfg.identify.labels is not None:
        return copy_labels(Path(cfg.identify.labels), bench.forget, identified)
    forget_file = folder / "forget.jsonl"
    write_forget_file(forget_file, bench.forget)
    stage_cfg = cfg
    if cfg.identify.method == "contrast" and cfg.identify.model is None:
        stage_cfg = with_settings(cfg, identify={"model": str(prepared.target)})
    if getattr(cfg.identify, "oracle", False) and cfg.identify.reference is None:
        stage_cfg = with_settings(stage_cfg, identify={"reference": str(prepared.retain)})
    identify_file(stage_cfg, forget_file, identified, retain=bench.retain)
    return identified


def own_identify_stage(cfg: Config, folder: Path) -> Path:
    """Label the user's forget set (`identify.method spans` keeps the file's own spans)."""
    from tokenforget.identify.run import identify_file

    identified = folder / "identified.jsonl"
    if not identified.is_file():
        stage_cfg = cfg
        if cfg.identify.method == "contrast" and cfg.identify.model is None:
            stage_cfg = with_settings(cfg, identify={"model": cfg.model.name})
        identify_file(stage_cfg, Path(cfg.data.forget), identified, retain=load_retain(cfg))
    return identified


def copy_labels(labels: Path, forget: list[Sample], identified: Path) -> Path:
    """Given labels for the benchmark's forget set, as identified.jsonl (checked to cover it)."""
    from tokenforget.data.identified import read_identified, write_identified
    from tokenforget.errors import ConfigError

    by_text = {(s.question, s.answer): s for s in read_identified(labels)}
    missing = [s for s in forget if (s.question, s.answer) not in by_text]
    if missing:
        raise ConfigError(
            f"identify.labels {labels} does not label {len(missing)} of the {len(forget)} forget samples, "
            f"e.g. {missing[0].question!r}: give labels of this forget set"
        )
    rows = [by_text[(s.question, s.answer)] for s in forget]
    for row, sample in zip(rows, forget, strict=True):
        row.id = sample.id
    write_identified(identified, rows, "labels", {"file": str(labels)})
    return identified


def unlearn_config(cfg: Config, prepared: Prepared | None, identified: Path) -> Config:
    if prepared is None:  # the user's model and data
        return with_settings(cfg, data={"forget": str(identified)})
    return with_settings(
        cfg,
        model={"name": str(prepared.target)},
        data={"forget": str(identified), "retain": cfg.data.retain or BUNDLED},
    )


def forget_generations(eval_dir: Path, count: int) -> list[str] | None:
    """Greedy answers to the forget questions from a finished TOFU forget log, in row order."""
    from tokenforget.evaluate.tofu import generated_texts

    texts = generated_texts(eval_dir, "forget")
    if texts is None:
        return None
    rows = [texts.get(str(k)) for k in range(count)]
    return [r[1] for r in rows] if all(r is not None for r in rows) else None


def token_stage(
    cfg: Config,
    paths: dict[str, str],
    dirs: dict[str, Path],
    forget: list[Sample],
    identified: Path,
    generations: dict[str, list[str] | None] | None = None,
) -> dict[str, Any]:
    """Token-level forgetting of every model against the target, under one labelling."""
    from tokenforget.data.identified import read_identified
    from tokenforget.evaluate.tokens import sample_key, scored_model, token_summary
    from tokenforget.models import load_tokenizer

    labels_path = Path(cfg.eval.token_labels) if cfg.eval.token_labels else identified
    labels = read_identified(labels_path)
    generations = generations or {}
    rows = {
        name: scored_model(cfg, path, forget, dirs[name], generations.get(name))
        for name, path in paths.items()
    }
    tokenizer = load_tokenizer(paths["target"], cfg.model.trust_remote_code)
    return {
        "tokens": {
            name: token_summary(rows[name], labels, tokenizer, cfg.prompt, rows["target"]) for name in paths
        },
        "token_rows": rows,
        "labels": str(labels_path),
        "label_spans": {sample_key(s): [(sp.start, sp.end) for sp in s.spans or ()] for s in labels},
        "labels_are_the_runs_own": cfg.eval.token_labels is None,
    }


def kl_stage(
    cfg: Config, paths: dict[str, str], dirs: dict[str, Path], retain: list[Sample] | None
) -> dict[str, Any]:
    """Mean per-token KL(target || model) on retain answers, cached per model (none without retain)."""
    from tokenforget.evaluate.attacks import kl_to_reference
    from tokenforget.models import load_model

    if not retain:
        reason = "needs a retain set (--set data.retain=FILE)"
        return {name: {"mean_token_kl": None, "unavailable": reason} for name in paths}
    kl: dict[str, Any] = {"target": {"mean_token_kl": 0.0}}
    cached = {name: dirs[name] / "kl_to_target.json" for name in paths if name != "target"}
    if not all(p.is_file() for p in cached.values()):
        reference, tokenizer, precision = load_model(cfg.model, paths["target"])
        for name, path in cached.items():
            if not path.is_file():
                model, _, _ = load_model(cfg.model, paths[name])
                result = kl_to_reference(
                    model, reference, tokenizer, retain, cfg.prompt, precision, cfg.eval.batch_size
                )
                write_json(path, result)
    for name, path in cached.items():
        kl[name] = json.loads(path.read_text())
    return kl


def mia_stage(
    cfg: Config, paths: dict[str, str], dirs: dict[str, Path], forget: list[Sample]
) -> dict[str, Any]:
    """Membership attacks, forget set vs `data.holdout`, per model (cached); none without a holdout."""
    from tokenforget.evaluate.attacks import ATTACKS, membership_attack
    from tokenforget.models import load_model

    if cfg.data.holdout is None:
        return {}
    holdout = read_samples(cfg.data.holdout)
    results = {}
    for name, path in paths.items():
        cache = dirs[name] / "mia_forget_vs_holdout.json"
        if cache.is_file() and json.loads(cache.read_text())["auc"].keys() != ATTACKS.keys():
            cache.unlink()  # an attack was registered (or removed) since: score again
        if not cache.is_file():
            model, tokenizer, precision = load_model(cfg.model, path)
            attack = membership_attack(
                model, tokenizer, forget, holdout, cfg.prompt, precision, batch_size=cfg.eval.batch_size
            )
            write_json(cache, attack)
        results[name] = json.loads(cache.read_text())["auc"]
    return results


def eval_stage(
    cfg: Config, bench: QABenchmark, prepared: Prepared, model_dir: Path, identified: Path, folder: Path
) -> dict[str, Any]:
    """TOFU summaries, token-level forgetting and KL on retain for the unlearned, target, retain models."""
    from tokenforget.evaluate.tofu_run import evaluate_tofu, resolve_profile, split_rows

    world_paths, world_dirs = world_models(cfg, prepared)
    paths = {"unlearned": str(model_dir), **world_paths}
    dirs = {"unlearned": folder / "eval" / "unlearned", **world_dirs}
    tofu = {}
    for name in ("retain", "target", "unlearned"):  # retain first: the others' forget quality needs it
        tofu[name] = evaluate_tofu(cfg, paths[name], bench, dirs[name], dirs["retain"])
    forget = bench.eval_forget
    generations = {name: forget_generations(dirs[name], len(forget)) for name in paths}
    retain_rows = split_rows(bench, resolve_profile(cfg.eval))["retain"]
    return {
        "models": list(MODELS),
        "tofu": tofu,
        **token_stage(cfg, paths, dirs, forget, identified, generations),
        "kl": kl_stage(cfg, paths, dirs, retain_rows),
        "mia": mia_stage(cfg, paths, dirs, bench.forget),
        "dirs": {k: str(v) for k, v in dirs.items()},
    }


def identifier_label(cfg: Config) -> str:
    """What labelled the forget set's unwanted words: the identifier, or the published labels file
    that replaced it (`identify.labels`)."""
    return f"labels {Path(cfg.identify.labels).name}" if cfg.identify.labels else cfg.identify.method


def world_models(cfg: Config, prepared: Prepared) -> tuple[dict[str, str], dict[str, Path]]:
    """The world's target and retain models, and their evaluation folders in the world's folder
    (shared by every run in it)."""
    eval_root = prepared.folder / "eval" / cfg.eval.profile
    paths = {"target": str(prepared.target), "retain": str(prepared.retain)}
    return paths, {name: eval_root / name for name in paths}


def world_vital_signs(cfg: Config, bench: QABenchmark, prepared: Prepared) -> dict[str, Any]:
    """What a world is: forget quality and model utility of its target and retain models, and how far
    the retain model sits from the target on the forget answers' UW and GW tokens (mean change of log
    p, under `eval.token_labels`, else `identify.labels`). The evaluations are the ones every run in
    this world reuses (the prepared folder's eval/)."""
    from tokenforget.evaluate.tofu_run import evaluate_tofu

    paths, dirs = world_models(cfg, prepared)
    signs: dict[str, Any] = {}
    for name in ("retain", "target"):  # retain first: forget quality compares with it
        summary = evaluate_tofu(cfg, paths[name], bench, dirs[name], dirs["retain"])
        signs[name] = {key: summary[key] for key in ("forget_quality", "model_utility")}
    labels = cfg.eval.token_labels or cfg.identify.labels
    if labels is None:
        signs["retain_minus_target"] = (
            "not measured: give the forget answers' gold UW labels (--set eval.token_labels=FILE)"
        )
        return signs
    identified = prepared.folder / "vital_signs_labels.jsonl"
    copy_labels(Path(labels), bench.forget, identified)
    tokens = token_stage(cfg, paths, dirs, bench.eval_forget, identified)["tokens"]["retain"]
    signs["retain_minus_target"] = {
        "uw_dlogp": tokens["uw_dlogp"],
        "gw_dlogp": tokens["gw_dlogp"],
        "labels": str(labels),
    }
    return signs


def own_eval_stage(cfg: Config, model_dir: Path, identified: Path, folder: Path) -> dict[str, Any]:
    """A user's forget set and model, no retain model: everything that needs no retain model."""
    from tokenforget.data.benchmarks import tofu_mini
    from tokenforget.data.identified import read_identified
    from tokenforget.evaluate.tofu_run import evaluate_tofu

    paths = {"unlearned": str(model_dir), "target": cfg.model.name}
    dirs = {name: folder / "eval" / name for name in paths}
    utility = tofu_mini()  # real_authors and world_facts: general knowledge any model should keep
    tofu = {
        name: evaluate_tofu(cfg, path, utility, dirs[name], None, ("real_authors", "world_facts"))
        for name, path in paths.items()
    }
    for summary in tofu.values():
        parts = [v for k, v in summary.items() if k.startswith(("ra_", "wf_")) and isinstance(v, float)]
        summary["utility_ra_wf"] = model_utility_of(parts)
    forget = read_identified(cfg.data.forget)
    retain = load_retain(cfg)
    return {
        "models": list(paths),
        "tofu": tofu,
        **token_stage(cfg, paths, dirs, forget, identified),
        "kl": kl_stage(cfg, paths, dirs, retain[: cfg.eval.retain_rows] if retain else None),
        "mia": mia_stage(cfg, paths, dirs, forget),
        "dirs": {k: str(v) for k, v in dirs.items()},
        "unavailable": {
            "forget_quality": "needs a retain model (a model never trained on the forget set): "
            "run a benchmark, or evaluate your retain model with tokenforget eval tofu",
            "model_utility": "TOFU's utility needs the retain split of a benchmark; utility_ra_wf is the "
            "harmonic mean of the 6 real_authors / world_facts numbers",
        },
    }


def model_utility_of(values: list[float]) -> float | None:
    from tokenforget.evaluate.tofu import model_utility

    return model_utility(values) if len(values) == 6 else None


HEADLINE = (
    "forget_quality",
    "model_utility",
    "utility_ra_wf",
    "forget_Q_A_ROUGE",
    "forget_truth_ratio",
    "retain_Q_A_ROUGE",
)
TOKEN_HEADLINE = ("uw_dlogp", "gw_dlogp", "uw_leak_rate", "uw_leak_rate_paraphrased", "extraction_strength")


def headline(evals: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per model the numbers of the report's first table (None where a number does not apply)."""
    table = {}
    for name in evals["models"]:
        row = {k: evals["tofu"].get(name, {}).get(k) for k in HEADLINE}
        row.update({k: evals["tokens"][name].get(k) for k in TOKEN_HEADLINE})
        row["kl_on_retain"] = evals["kl"][name]["mean_token_kl"]
        if name in evals.get("mia", {}):
            row["mia_auc_min_k"] = evals["mia"][name]["min_k"]
        table[name] = row
    return table


def run_needs(cfg: Config) -> list[Need]:
    """What the main job with this config writes at its peak (`disk.main_job_needs`)."""
    world = None if cfg.data.forget is not None else prepared_folder(cfg)
    return main_job_needs(cfg, Path(cfg.run.runs_dir) / cfg.run.name, world)


def sweep_needs(unfinished: list[Config]) -> list[Need]:
    """What a sweep that keeps every run's weights writes at its peak, given its unfinished points:
    each world still to make, once however many points share it, and each point's unlearned model."""
    return list(dict.fromkeys(need for cfg in unfinished for need in run_needs(cfg)))


def run(cfg: Config) -> RunResult:
    """Run the main job in runs/<cfg.run.name>/ and write summary.json, report.html, receipt.json."""
    from tokenforget.data.benchmarks import load_benchmark
    from tokenforget.evaluate.tofu import verdict
    from tokenforget.evaluate.trajectory import TRAJECTORY_FILE
    from tokenforget.receipt import receipt
    from tokenforget.report import REPORT_INPUTS, report_inputs, write_report
    from tokenforget.unlearn import unlearn

    check_inputs(cfg)  # every file and model folder, before the run folder exists
    check_space(run_needs(cfg))
    folder = open_run(cfg)
    clock = StageClock()
    own = cfg.data.forget is not None  # the user's forget set and model: no benchmark, no retain model
    prepared = bench = None
    with clock("prepare"):
        if not own:
            prepared = prepare(cfg, rouge_check=False)  # the eval stage scores both models fully
            bench = load_benchmark(cfg)
    with clock("identify"):
        identified = own_identify_stage(cfg, folder) if own else identify_stage(cfg, bench, prepared, folder)
    with clock("unlearn"):
        unlearned = unlearn(unlearn_config(cfg, prepared, identified), folder / "unlearn")
    with clock("eval"):
        if own:
            evals = own_eval_stage(cfg, unlearned.model_dir, identified, folder)
        else:
            evals = eval_stage(cfg, bench, prepared, unlearned.model_dir, identified, folder)
    target = str(prepared.target) if prepared else resolve_model(cfg.model.name)
    models = {"unlearned": str(unlearned.model_dir), "target": target}
    if prepared:
        models["retain"] = str(prepared.retain)
    summary = {
        "benchmark": cfg.run.benchmark if not own else None,
        "forget_data": cfg.data.forget,
        "method": cfg.unlearn.method,
        "identifier": identifier_label(cfg),
        "models": models,
        "headline": (table := headline(evals)),
        "verdict": [*verdict(table), stop_sentence(unlearned.summary["stopped"])],
        "unavailable": evals.get("unavailable", {}),
        "tofu": evals["tofu"],
        "tokens": {
            name: {k: v for k, v in t.items() if k != "per_sample"} for name, t in evals["tokens"].items()
        },
        "mia_forget_vs_holdout": evals["mia"],
        "token_labels": evals["labels"],
        "unlearn": unlearned.summary,
        "trajectory": read_step_log(unlearned.folder / TRAJECTORY_FILE),  # with unlearn.eval_every
        "eval_logs": evals["dirs"],
    }
    if prepared:
        summary["prepare_rougeL_recall"] = dict(rouge_table(prepared.report))
        summary["prepare_seconds"] = prepared.report.get("seconds", {})
    summary["stage_seconds"] = clock.seconds  # the report shows the stages before it
    write_json(folder / "summary.json", summary)
    write_json(folder / REPORT_INPUTS, report_inputs(evals))
    with clock("report"):
        report = write_report(folder)
    write_json(folder / "summary.json", summary)  # now with the report's own time
    given = Path(cfg.data.forget) if own else folder / "forget.jsonl"
    if not own and not given.is_file():  # identify wrote it, unless labels came from a file
        write_forget_file(given, bench.forget)
    write_json(
        folder / "receipt.json", receipt(cfg, Path(target), given, identified, unlearned.model_dir, summary)
    )
    return RunResult(folder=folder, prepared=prepared, summary=summary, report=report)


def finished_summary(cfg: Config) -> dict[str, Any] | None:
    """summary.json of a run that finished (its receipt is written last) in runs/<run.name> with this
    config; None where none has; a ConfigError where the folder was made with another config."""
    folder = Path(cfg.run.runs_dir) / cfg.run.name
    if not (folder / "receipt.json").is_file():
        return None
    open_run(cfg)  # the same config, or the error that names what changed
    return json.loads((folder / "summary.json").read_text())


def keep_best_weights(runs_dir: Path, runs: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], int] | None:
    """`sweep --keep best`: delete the unlearned weights of every finished run that is not its method's
    best point by the stated rule (a method with no run at that utility keeps none). A run that is not
    a best point never becomes one when more runs finish, so this may follow each point. Returns the
    runs whose weights went and the bytes freed; None where the runs carry no target utility to state
    the rule against."""
    from tokenforget.models import drop_weights, has_weights
    from tokenforget.report import best_point_runs

    best = best_point_runs(runs)
    if best is None:
        return None
    dropped, freed = [], 0
    for name, _ in runs:
        model = runs_dir / name / "unlearn" / "model"
        if name not in best and has_weights(model):
            freed += drop_weights(model)
            dropped.append(name)
    return dropped, freed


def sweep_points(grid: list[str]) -> list[tuple[str, list[str]]]:
    """Every combination of `section.key=v1,v2` axes: (a run-name label, its --set overrides)."""
    import itertools
    import re

    from tokenforget.errors import ConfigError

    axes = []
    for axis in grid:
        key, sep, values = axis.partition("=")
        options = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or "." not in key or not options:
            raise ConfigError(f"--grid {axis!r}: write section.key=v1,v2 (e.g. unlearn.lr=1e-5,3e-5)")
        axes.append((key.strip(), options))
    points = []
    for combination in itertools.product(*(options for _, options in axes)):
        pairs = list(zip((k for k, _ in axes), combination, strict=True))
        label = "_".join(f"{k.split('.')[-1]}{v}" for k, v in pairs)
        points.append((re.sub(r"[^\w.+-]", "-", label), [f"{k}={v}" for k, v in pairs]))
    return points
