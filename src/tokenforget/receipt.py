"""`receipt.json`: evidence for a deletion request.

What went in and what came out, by content hash (SHA-256): the input model's and the output model's
files, the forget data (the file as the requester gave it, and separately the labelled file the run
derived from it, each with its byte size and row count), the resolved config; the metrics that show
the data is gone and the model still works; the tool and library versions, the fingerprint of the
tool's own source and the machine that ran it. Anyone holding the same files can recompute every
hash (`tokenforget receipt runs/NAME/receipt.json`), and a requester can check that their own file
is the one that was unlearned (`... receipt.json --forget THEIR_FILE`). No secret ever enters it:
the config holds the *name* of an API key's environment variable, never its value.
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
from tokenforget.cpu import machine
from tokenforget.models import file_sha256, json_digest
from tokenforget.version import __version__, source_sha256

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


def data_hash(path: Path) -> dict[str, Any]:
    """SHA-256, byte size and row count of a data file (rows as the data readers count them)."""
    from tokenforget.data.identified import read_identified

    return {
        "path": str(path),
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
        "rows": len(read_identified(path)),
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def receipt(
    cfg: Config,
    input_model: Path,
    given: Path,
    labelled: Path,
    output_model: Path,
    summary: dict[str, Any],
) -> dict[str, Any]:
    """`given`: the forget data as the requester gave it (a benchmark's: its forget set as QA JSONL);
    `labelled`: the identified set the run derived from it and unlearned."""
    config_text = cfg.to_yaml()
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input_model": model_hash(Path(input_model)),
        "forget_data": {"given": data_hash(Path(given)), "labelled": data_hash(Path(labelled))},
        "config": {"sha256": hashlib.sha256(config_text.encode()).hexdigest(), "yaml": config_text},
        "output_model": model_hash(Path(output_model)),
        "method": summary.get("method"),
        "metrics": summary.get("headline", {}),
        "versions": versions(),
        "code": {"tokenforget": __version__, "source_sha256": source_sha256()},
        "machine": machine(),
    }


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
    recorded = forget.items() if "given" in forget else [("", forget)]  # receipts before 0.1 held one file
    for role, data in recorded:
        if not Path(data["path"]).is_file() or file_sha256(Path(data["path"])) != data["sha256"]:
            problems.append(f"forget_data{'.' + role if role else ''}: {data['path']} is missing or differs")
    if hashlib.sha256(content["config"]["yaml"].encode()).hexdigest() != content["config"]["sha256"]:
        problems.append("config: the recorded YAML does not match its hash")
    return problems


def match_forget(path: Path, theirs: Path) -> tuple[bool, str]:
    """Is `theirs` byte for byte the forget data the receipt's run was given? (verdict, what to say)"""
    content = json.loads(Path(path).read_text())
    forget = content["forget_data"]
    given = forget.get("given", forget)
    digest, size = file_sha256(theirs), theirs.stat().st_size
    if digest == given["sha256"]:
        rows = f", {given['rows']} rows" if "rows" in given else ""
        return True, f"{theirs} is the forget data this run unlearned (sha256 {digest}, {size} bytes{rows})"
    recorded = f"sha256 {given['sha256']}" + (f", {given['bytes']} bytes" if "bytes" in given else "")
    return False, (
        f"{theirs} is not the forget data this run unlearned: its sha256 is {digest} ({size} bytes), the "
        f"receipt records {recorded} for {given['path']}"
    )
