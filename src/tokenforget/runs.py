"""Run folders: `runs/<name>/` holds everything one run produced (docs/design.md), the folder is the cache.

`config.yaml` is the full resolved config. Re-running the same config in the same folder resumes it;
a different config in an existing folder is refused (it would mix results of two experiments).
`precision.json` records what `model.precision` resolved to when the folder was made: `auto` is
bf16 autocast on one machine and float32 on another, so the resolved precision, not the setting,
must match (a run made with `auto` where it meant float32 continues elsewhere with `fp32`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tokenforget.config import Config, legacy_layout
from tokenforget.errors import ConfigError
from tokenforget.models import precision_label, precision_setting, resolve_device


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return {k.rstrip("."): v for k, v in flat.items()}


def open_run(cfg: Config) -> Path:
    """Create (or reopen, when the config matches) runs/<run.name>/ and write config.yaml."""
    return open_folder(Path(cfg.run.runs_dir) / cfg.run.name, cfg)


# How often a checkpoint is written changes no result (resume is exact): reopening a run with
# another value is allowed, and its config.yaml (hashed by the receipt) keeps the original.
RESULT_NEUTRAL = frozenset({"prepare.checkpoint_every", "unlearn.checkpoint_every", "eval.workers"})


PRECISION_FILE = "precision.json"
# model.precision is compared through what it resolves to (PRECISION_FILE), not as written
_PRECISION_SETTING = "model.precision"


def normalised(written: dict[str, Any]) -> dict[str, Any]:
    """A config.yaml as this version reads it (keys of older layouts mapped), or as written when it
    no longer validates (the comparison then names what differs)."""
    try:
        return Config.model_validate(legacy_layout(written)).model_dump(mode="json")
    except (ValidationError, ConfigError):
        return written


def open_folder(folder: Path, cfg: Config) -> Path:
    """Create (or reopen, when the config matches up to RESULT_NEUTRAL keys and the resolved
    precision is the same) a run folder and write config.yaml and precision.json."""
    config_file = folder / "config.yaml"
    resolved = cfg.model_dump(mode="json")
    precision = precision_label(cfg.model)
    precision_file = folder / PRECISION_FILE
    if config_file.is_file():
        previous = normalised(yaml.safe_load(config_file.read_text()) or {})
        made_with = json.loads(precision_file.read_text())["precision"] if precision_file.is_file() else None
        neutral = RESULT_NEUTRAL | ({_PRECISION_SETTING} if made_with is not None else frozenset())
        changed = changed_keys(previous, resolved, Config().model_dump(mode="json"), neutral)
        if changed:
            raise ConfigError(
                f"{folder} was made with a different config (changed: {', '.join(changed[:8])}). "
                f"Use another folder (--out, or --set run.name=NAME) or delete {folder} to start over."
            )
        if made_with is not None and made_with != precision:
            setting = precision_setting(made_with, resolve_device(cfg.model.device))
            fix = f"--set model.precision={setting}" if setting else f"a model.precision giving {made_with}"
            raise ConfigError(
                f"{folder} was made where model.precision={previous['model']['precision']!r} meant "
                f"{made_with}; here {cfg.model.precision!r} means {precision}, and its models and logs "
                f"would mix the two. Continue it with {fix}, or use another folder (--out, or --set "
                "run.name=NAME)."
            )
        return folder  # a folder from before precision.json: its setting was compared as written
    folder.mkdir(parents=True, exist_ok=True)
    config_file.write_text(cfg.to_yaml())
    precision_file.write_text(json.dumps({"precision": precision}))
    return folder


def changed_keys(
    previous: dict[str, Any],
    current: dict[str, Any],
    defaults: dict[str, Any],
    neutral: frozenset[str] = frozenset(),
) -> list[str]:
    """The dotted keys whose values differ between two nested settings dicts, except `neutral` ones
    and keys newer than `previous` that sit at their default (an upgrade keeps old results)."""
    old, new, base = _flatten(previous), _flatten(current), _flatten(defaults)
    return sorted(
        k
        for k in old.keys() | new.keys()
        if old.get(k) != new.get(k)
        and k not in neutral
        and not (k not in old and k in base and new.get(k) == base[k])
    )


def write_json(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)


def read_step_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a per-step JSONL log (train_log.jsonl, trajectory.jsonl); none when absent."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trim_step_log(path: Path, through: int) -> None:
    """On resume, keep only the rows of steps up to `through` (later ones are run again)."""
    if path.is_file():
        kept = [row for row in read_step_log(path) if row["step"] <= through]
        path.write_text("".join(json.dumps(row) + "\n" for row in kept))
