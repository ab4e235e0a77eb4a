"""`receipt.json`: evidence for a deletion request.

What went in and what came out, by content hash (SHA-256): the input model's and the output model's
files, the forget data, the resolved config; the metrics that show the data is gone and the model
still works; the tool and library versions. Anyone holding the same files can recompute every hash
(`tokenforget receipt runs/NAME/receipt.json`). No secret ever enters it: the config holds
the *name* of an API key's environment variable, never its value.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from tokenforget.config import Config
from tokenforget.models import file_sha256, json_digest

LIBRARIES = ("tokenforget", "torch", "transformers", "accelerate", "peft", "safetensors", "scipy")


def model_hash(folder: Path) -> dict[str, Any]:
    """Per-file SHA-256 of a model folder (weights, config, tokenizer) and one digest over them."""
    if not folder.is_dir():
        return {"path": str(folder), "sha256": None, "files": {}, "note": "not a local folder (a hub name)"}
    files = {
        p.relative_to(folder).as_posix(): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }
    return {"path": str(folder), "sha256": json_digest(files), "files": files}


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def receipt(
    cfg: Config, input_model: Path, forget: Path, output_model: Path, summary: dict[str, Any]
) -> dict[str, Any]:
    config_text = cfg.to_yaml()
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input_model": model_hash(Path(input_model)),
        "forget_data": {"path": str(forget), "sha256": file_sha256(Path(forget))},
        "config": {"sha256": hashlib.sha256(config_text.encode()).hexdigest(), "yaml": config_text},
        "output_model": model_hash(Path(output_model)),
        "method": summary.get("method"),
        "metrics": summary.get("headline", {}),
        "versions": versions(),
    }


def write_receipt(
    path: Path, cfg: Config, input_model: Path, forget: Path, output_model: Path, summary: dict[str, Any]
) -> dict[str, Any]:
    from tokenforget.runs import write_json

    content = receipt(cfg, input_model, forget, output_model, summary)
    write_json(path, content)
    return content


def check_receipt(path: Path) -> list[str]:
    """Recompute every hash of a receipt; returns the mismatches (empty: everything matches)."""
    content = json.loads(Path(path).read_text())
    problems = []
    for role in ("input_model", "output_model"):
        recorded = content[role]
        folder = Path(recorded["path"])
        if recorded["sha256"] is None:
            continue  # a hub name: nothing local to hash
        if not folder.is_dir():
            problems.append(f"{role}: {folder} is missing")
        elif (now := model_hash(folder))["sha256"] != recorded["sha256"]:
            changed = sorted(k for k, v in now["files"].items() if recorded["files"].get(k) != v)
            problems.append(f"{role}: {folder} differs ({', '.join(changed) or 'files removed'})")
    forget = content["forget_data"]
    if not Path(forget["path"]).is_file() or file_sha256(Path(forget["path"])) != forget["sha256"]:
        problems.append(f"forget_data: {forget['path']} is missing or differs")
    if hashlib.sha256(content["config"]["yaml"].encode()).hexdigest() != content["config"]["sha256"]:
        problems.append("config: the recorded YAML does not match its hash")
    return problems
