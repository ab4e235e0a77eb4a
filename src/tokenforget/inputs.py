"""Every input a command will read, checked before any work: all problems at once, nothing written.

A run that fails on its holdout file after minutes of unlearning wastes the user's time and leaves a
half-made folder behind; `check_inputs` reads each file the config names (forget, retain, holdout,
full TOFU's folder, labels, token labels) and checks each model folder's presence, and raises one
DataError that lists every problem with its file and line (the CLI prints it and exits 2).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenforget.config import Config
from tokenforget.data.benchmarks import TOFU_HUB, tofu_splits
from tokenforget.data.records import read_samples
from tokenforget.data.sets import BUNDLED
from tokenforget.errors import ConfigError, DataError, DataIssue, TokenforgetError

Named = dict[str, str | Path | None]  # the setting or flag that names a file -> the file (None: not given)


def _read_labels(path: str) -> Any:
    from tokenforget.data.identified import read_identified

    return read_identified(path)


def _issues(setting: str, value: str, read: Callable[[str], Any]) -> list[DataIssue]:
    try:
        read(value)
    except DataError as exc:
        return exc.issues
    except TokenforgetError as exc:
        return [DataIssue(value, None, None, str(exc), f"fix the file or change {setting}")]
    return []


def _model_issues(setting: str, name: str | None) -> list[DataIssue]:
    from tokenforget.models import model_problem

    problem = model_problem(name) if name else None
    return [DataIssue(name, None, None, problem, f"check the path, or change {setting}")] if problem else []


def _tofu_folder_issues(cfg: Config) -> list[DataIssue]:
    source = cfg.data.tofu
    folder = Path(source).expanduser()
    if source == TOFU_HUB or (not folder.exists() and not source.startswith((".", "/", "~"))):
        return []  # a hub name: loading explains an offline or misspelt name
    if not folder.is_dir():
        return [
            DataIssue(source, None, None, "is not a folder", "give data.tofu a folder of TOFU's JSON files")
        ]
    return [
        DataIssue(str(folder / f"{split}.json"), None, None, "is missing", "add TOFU's published split")
        for split in tofu_splits(cfg.run.tofu_split).values()
        if not (folder / f"{split}.json").is_file()
    ]


def refuse_ignored_tokens(cfg: Config) -> None:
    """`unlearn.tokens` acts only through losses that honour it: refuse a setting the method would drop."""
    from tokenforget.losses import METHODS

    method = METHODS[cfg.unlearn.method]
    if cfg.unlearn.tokens == "all" or (method.uses_tokens and not method.needs_scorer):
        return
    takers = ", ".join(m.name for m in METHODS.values() if m.uses_tokens and not m.needs_scorer)
    why = "learns its own token weights" if method.needs_scorer else "splits answers into UW and GW itself"
    raise ConfigError(
        f"unlearn.tokens={cfg.unlearn.tokens} has no effect on method {method.name!r}, which {why}. "
        f"Fix: drop --tokens (or --set unlearn.tokens=all), or pick a method that takes it: {takers}"
    )


def missing_retain(method: str, retain_term: str) -> ConfigError:
    """The error for a method with a retain term and no retain set, with every way out."""
    return ConfigError(
        f"method {method!r} uses a retain term ({retain_term}) but no retain set was given. "
        "Fix: give text the model must keep (`run`: --set data.retain=FILE; `unlearn`: --retain "
        "FILE; tofu-mini for the bundled retain answers), or unlearn without one: --set "
        "unlearn.method=tpo (TPO keeps the forget answers' general words itself), or --set "
        "unlearn.retain_loss=none"
    )


def refuse_missing_retain(cfg: Config) -> None:
    """A retain term on the user's own forget set needs their retain set (a benchmark brings its own)."""
    from tokenforget.losses import METHODS

    method = METHODS[cfg.unlearn.method]
    term = method.retain if cfg.unlearn.retain_loss == "auto" else cfg.unlearn.retain_loss
    if cfg.data.forget is not None and cfg.data.retain is None and term != "none":
        raise missing_retain(method.name, term)


def refuse_unmeasured_conditions(cfg: Config) -> None:
    """`unlearn.stop_when` and `guard` are read at in-training evaluation points: refuse them without."""
    u = cfg.unlearn
    stop_when = [] if u.stop_when == "auto" else u.stop_when  # auto sets its own eval_every
    if (stop_when or u.guard) and u.eval_every is None:
        which = "stop_when" if stop_when else "guard"
        raise ConfigError(
            f"unlearn.{which} is checked at in-training evaluation points, and unlearn.eval_every is off. "
            "Fix: --set unlearn.eval_every=N (1 for a small forget set: each point scores it once)"
        )


def file_issues(
    samples: Named | None = None, labels: Named | None = None, models: Named | None = None
) -> list[DataIssue]:
    """Every problem of the files named (`samples`: data sets; `labels`: identified sets, plain QA
    accepted) and of the model folders named. The bundled set (`tofu-mini`) and absent entries are
    skipped."""
    issues: list[DataIssue] = []
    for named, read in ((samples, read_samples), (labels, _read_labels)):
        for setting, value in (named or {}).items():
            if value is not None and str(value) != BUNDLED:
                issues += _issues(setting, str(value), read)
    for setting, name in (models or {}).items():
        issues += _model_issues(setting, None if name is None else str(name))
    return issues


def check_files(
    samples: Named | None = None, labels: Named | None = None, models: Named | None = None
) -> None:
    """`file_issues`, raised as one DataError when there is any."""
    issues = file_issues(samples, labels, models)
    if issues:
        raise DataError(issues)


def check_inputs(cfg: Config, labels: Named | None = None) -> None:
    """Every input the config names, and `labels` (flag -> a file read as an identified set, for
    files given outside the config): see `file_issues`; full TOFU's folder too. Settings the method
    would ignore are refused first (ConfigError)."""
    refuse_ignored_tokens(cfg)
    refuse_unmeasured_conditions(cfg)
    d, i = cfg.data, cfg.identify
    contrast = i.method == "contrast"
    issues = _tofu_folder_issues(cfg) if d.forget is None and cfg.run.benchmark == "tofu" else []
    issues += file_issues(
        samples={"data.retain": d.retain, "data.holdout": d.holdout},
        labels={
            **(labels or {}),
            "data.forget": d.forget,  # plain QA, or with spans
            "identify.labels": i.labels,
            "eval.token_labels": cfg.eval.token_labels,
        },
        models={
            "model.name": cfg.model.name,
            "identify.model": i.model if contrast else None,
            "identify.reference": i.reference if contrast else None,
        },
    )
    if issues:
        raise DataError(issues)
    refuse_missing_retain(cfg)  # after the files: a bad forget file is the first thing to fix
