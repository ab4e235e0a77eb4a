"""Disk space: checked before a run writes any model, and a full disk explained when it fills anyway.

A run's peak on disk, counted in W = the bytes of the model's weights as saved (its *.safetensors):
- each world model that `prepare` still has to make: 1 W, kept;
- a training stage's checkpoint: its trainable weights and AdamW's two moments (3 W for full
  fine-tuning in float32, next to nothing for LoRA), twice while the next checkpoint is written
  beside the last one before it replaces it;
- the unlearned model: 1 W;
- each copy an attack writes: 1 W and, for a relearning budget, its fine-tune's checkpoint pair;
  a quantized copy at most the model's float32 size (its rounded linears are smaller, the rest is
  loaded in float32).
Stages run one after another and drop their checkpoints when they end, so the peak on a file system
is the models kept there plus the largest checkpoint pair of a stage that writes there.
"""

from __future__ import annotations

import errno
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tokenforget.errors import TokenforgetError

if TYPE_CHECKING:
    from tokenforget.config import Config

CHECKPOINT_COPIES = 2  # the last checkpoint stays until the next one is written beside it
ADAM_STATE = 2  # exp_avg and exp_avg_sq, each the size of the trainable weights


class DiskSpaceError(TokenforgetError):
    """Not enough free space where a run will write, found before any work starts."""


@dataclass(frozen=True)
class Need:
    """What one stage writes under `folder`: `kept` bytes that stay, `transient` bytes (its
    checkpoints) that are gone before the next stage starts; `what` names it in messages."""

    folder: Path
    kept: int
    transient: int
    what: str


def weight_bytes(model_dir: str | Path) -> int:
    """Bytes of a save_pretrained folder's weights; 0 for a hub name or a folder without them."""
    folder = Path(model_dir)
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) if folder.is_dir() else 0


def float32_bytes(model_dir: str | Path) -> int:
    """Bytes of a save_pretrained folder's weights in float32, from the safetensors headers alone."""
    from safetensors import safe_open

    total = 0
    for path in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(path), "np") as weights:
            shapes = [weights.get_slice(k).get_shape() for k in weights.keys()]  # noqa: SIM118 (not iterable)
        total += sum(4 * math.prod(shape) for shape in shapes)
    return total


def checkpoint_bytes(weights: int, lora: bool) -> int:
    """Peak bytes of a training stage's checkpoints (LoRA's adapter and its moments are ignored)."""
    return 0 if lora else CHECKPOINT_COPIES * (1 + ADAM_STATE) * weights


def _existing(folder: Path) -> Path:
    """`folder`, or its nearest parent that exists (a run folder is measured before it is made)."""
    path = folder.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system that holds `folder`."""
    return shutil.disk_usage(_existing(folder)).free


def _device(folder: Path) -> int:
    return _existing(folder).stat().st_dev


def peak_bytes(needs: list[Need]) -> int:
    """Peak bytes of stages that run one after another on one file system."""
    return sum(n.kept for n in needs) + max((n.transient for n in needs), default=0)


def shortfalls(needs: list[Need]) -> list[str]:
    """One sentence per file system that lacks room for the stages writing on it."""
    by_device: dict[int, list[Need]] = {}
    for need in needs:
        if need.kept or need.transient:
            by_device.setdefault(_device(need.folder), []).append(need)
    problems = []
    for group in by_device.values():
        total, free = peak_bytes(group), free_bytes(group[0].folder)
        if total > free:
            parts = "; ".join(
                f"{n.what} in {n.folder}: {gb(n.kept)}"
                + (f" + {gb(n.transient)} of checkpoints while it trains" if n.transient else "")
                for n in group
            )
            problems.append(f"about {gb(total)} needed at the peak ({parts}), {gb(free)} free")
    return problems


def check_space(needs: list[Need]) -> None:
    """Raise DiskSpaceError, naming every folder and size, when the needs do not fit."""
    problems = shortfalls(needs)
    if problems:
        raise DiskSpaceError(
            "not enough free disk space for this run: "
            + " | ".join(problems)
            + ". Fix: free space there, or write elsewhere: run.runs_dir for a run's folder, "
            "--out for `unlearn`'s, $TOKENFORGET_CACHE for the prepared models."
        )


def gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def is_disk_full(exc: BaseException) -> bool:
    """A write that failed for want of space: OSError ENOSPC, or safetensors' own error for it."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    text = str(exc)
    return type(exc).__name__ == "SafetensorError" and (
        "os error 28" in text or "No space left on device" in text
    )


def disk_full_message(exc: BaseException, places: list[Path]) -> str:
    """What to tell the user after a write failed for want of space (the run can be resumed)."""
    free = ", ".join(f"{p}: {gb(free_bytes(p))} free" for p in places)
    return (
        f"the disk is full ({exc}). {free}. Nothing finished is lost: free space and run the same "
        "command again; finished stages are skipped and training resumes from its last complete "
        "checkpoint."
    )


def world_needs(cfg: Config, world: Path, weights: int | None = None) -> list[Need]:
    """The world models `prepare` has yet to make in `world` (`prepare.prepared_folder`), with their
    stages' checkpoints; `weights`: the base model's weight bytes, when the caller has them.

    A model counts as made when its manifest is there: `prepare` checks the hashes before it uses
    it, so hashing every weight file twice for an estimate would only slow the start."""
    from tokenforget.models import MANIFEST, resolve_model

    if weights is None:
        weights = weight_bytes(resolve_model(cfg.model.name))
    lora = cfg.prepare.lora is not None
    return [
        Need(world, weights, checkpoint_bytes(weights, lora), f"the {name} model")
        for name in ("retain", "target")
        if not (world / name / MANIFEST).is_file()
    ]


def main_job_needs(cfg: Config, run_folder: Path, world: Path | None) -> list[Need]:
    """The stages of `tokenforget run`: the world models still to make in `world` (None: the user's
    own forget set, no world); then the unlearned model in the run folder."""
    from tokenforget.models import resolve_model

    weights = weight_bytes(resolve_model(cfg.model.name))
    to_make = world_needs(cfg, world, weights) if world is not None else []
    return [*to_make, unlearn_need(cfg, run_folder / "unlearn", weights)]


def unlearn_need(cfg: Config, out: Path, weights: int) -> Need:
    """The unlearned model (saved whole, a LoRA adapter merged) and its stage's checkpoints; nothing
    when `out` already holds it (a finished run reopened)."""
    from tokenforget.models import has_weights

    if has_weights(out / "model"):
        return Need(out, 0, 0, "the unlearned model")
    return Need(out, weights, checkpoint_bytes(weights, cfg.unlearn.lora is not None), "the unlearned model")


def copy_needs(copies: dict[Path, str], weights: int, trained: bool) -> list[Need]:
    """The model copies an attack still has to write, each in `folder`/model (folder -> what it is,
    for messages): `weights` bytes kept, plus a full fine-tune's checkpoints when `trained`. A copy
    whose manifest is there is made (resumed attacks reuse it)."""
    from tokenforget.models import MANIFEST

    transient = checkpoint_bytes(weights, lora=False) if trained else 0
    return [
        Need(folder, weights, transient, what)
        for folder, what in copies.items()
        if not (folder / "model" / MANIFEST).is_file()
    ]
