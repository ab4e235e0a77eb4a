"""theta0's numbers: the reference pass over the forget set, and the one file a run keeps them in.

TPO, NPO, IdkPO and TNPO need theta0 only through per-token numbers of a *fixed* set of texts (the
gold logit and log-probability of every answer token of the forget answers, and of IdkPO's
preferred answers), so they are computed once, stored in the run's `theta0.safetensors` keyed by sample id,
and theta0 is never held in memory during training (trl's precomputed reference log-probs).

The cache is reused only when everything that shapes the numbers matches: the model's identity,
the exact token ids of every text (which covers data, prompt template and tokenizer) and the
resolved precision (`reference_stamp`). The stamp's key is stored in the file's metadata; a file
with another key is recomputed (`artifacts.cached` with the `SAFETENSORS` codec).

A run keeps every number of theta0 it uses in one file, `theta0.safetensors` (`theta0_numbers`): one
section per kind (`reference`: the training forward's numbers for the loss; `trajectory`: the
evaluation forward's step-0 scores of the in-training probe), each sealed with its own stamp's key,
so a section made for other texts or another model is rebuilt without touching the others. The user
cache keeps one file per stamp, which the runs of a sweep share.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tokenforget.artifacts import Codec, Stamp, cached
from tokenforget.data.encode import Encoded, pad_batch
from tokenforget.forward import answer_forward, token_nll
from tokenforget.losses import RefStats
from tokenforget.models import Precision, eval_mode, model_identity

FORMAT = "tokenforget-reference-2"  # 2: the mean logit over the vocabulary too
THETA0_FILE = "theta0.safetensors"


def reference_stamp(
    model_source: str,
    groups: dict[str, Sequence[Encoded]],
    ids: Sequence[str],
    precision: str,
    kind: str = "reference",
) -> Stamp:
    """What theta0's numbers on these texts depend on."""
    payload = {
        "format": FORMAT,
        "model": model_identity(model_source),
        "precision": precision,
        "ids": list(ids),
        "texts": {name: [[e.input_ids, e.prompt_len] for e in items] for name, items in groups.items()},
    }
    return Stamp(kind, payload)


def compute_reference(
    model: torch.nn.Module,
    groups: dict[str, Sequence[Encoded]],
    ids: Sequence[str],
    pad_id: int,
    precision: Precision,
    batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    """`{group}/{id}/gold_logit`, `.../logp` and `.../mean_logit` (the mean over the vocabulary),
    fp32, one value per answer token."""
    from tokenforget.progress import task_progress

    tensors: dict[str, torch.Tensor] = {}
    total = sum(len(items) for items in groups.values())
    # the training forward's own arithmetic: at step 0 the policy reproduces these numbers exactly
    with eval_mode(model, packed=False), task_progress("reference pass (theta0)", total) as bar:
        for name, items in groups.items():
            for start in range(0, len(items), batch_size):
                chunk = list(items[start : start + batch_size])
                batch = {k: v.to(precision.device) for k, v in pad_batch(chunk, pad_id).items()}
                with precision.autocast():
                    fwd = answer_forward(model, batch)
                logits = fwd.logits.float()
                gold = logits.gather(-1, fwd.targets[:, None]).squeeze(-1)
                logp = -token_nll(fwd)
                counts = torch.bincount(fwd.rows, minlength=len(chunk)).tolist()
                values = {"gold_logit": gold, "logp": logp, "mean_logit": logits.mean(-1)}
                for field, per_token in values.items():
                    for offset, part in enumerate(per_token.split(counts)):
                        tensors[f"{name}/{ids[start + offset]}/{field}"] = part.cpu().contiguous()
                bar.advance(bar.task_ids[0], len(chunk))
    return tensors


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], key: str) -> None:
    """Tensors sealed with a stamp's key (in the safetensors metadata)."""
    save_file(tensors, str(path), metadata={"key": key, "format": FORMAT})


def load_tensors(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The tensors when `path` holds them for `key`; None otherwise."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("key") != key:
                return None
            return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception:  # a torn or foreign file is recomputed, never trusted
        return None


SAFETENSORS: Codec[dict[str, torch.Tensor]] = Codec(
    lambda path, tensors, stamp: save_tensors(path, tensors, stamp.key),
    lambda path, stamp: load_tensors(path, stamp.key),
)


def reference_stats(
    cache: dict[str, torch.Tensor], group: str, ids: Sequence[str], device: torch.device
) -> RefStats:
    """RefStats for a micro-batch, in the flattened order answer_forward uses (row by row)."""
    fields = {
        name: torch.cat([cache[f"{group}/{i}/{name}"] for i in ids]).to(device)
        for name in ("gold_logit", "logp", "mean_logit")
    }
    return RefStats(**fields)


def read_section(path: Path, stamp: Stamp) -> dict[str, torch.Tensor] | None:
    """The tensors of `stamp.kind`'s section of a run's theta0 file, when it was made for `stamp`."""
    if not path.is_file():
        return None
    prefix = f"{stamp.kind}/"
    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get(stamp.kind) != stamp.key:
                return None
            names = [name for name in handle.keys() if name.startswith(prefix)]  # noqa: SIM118
            return {name[len(prefix) :]: handle.get_tensor(name) for name in names}
    except Exception:  # a torn or foreign file is rebuilt, never trusted
        return None


def write_section(path: Path, tensors: dict[str, torch.Tensor], stamp: Stamp) -> None:
    """Put `stamp.kind`'s section into the theta0 file at `path`, keeping its other sections; atomic."""
    kept: dict[str, torch.Tensor] = {}
    metadata = {"format": FORMAT}
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as handle:
                old = handle.metadata() or {}
                for name in handle.keys():  # noqa: SIM118
                    kind = name.split("/", 1)[0]
                    if kind != stamp.kind and kind in old:
                        kept[name] = handle.get_tensor(name)
                        metadata[kind] = old[kind]
        except Exception:  # a torn file: only the new section is kept
            kept, metadata = {}, {"format": FORMAT}
    metadata[stamp.kind] = stamp.key
    section = {f"{stamp.kind}/{name}": value.contiguous() for name, value in tensors.items()}
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    save_file({**kept, **section}, str(tmp), metadata=metadata)
    tmp.replace(path)


def theta0_numbers(
    folder: Path,
    stamp: Stamp,
    build: Callable[[], dict[str, torch.Tensor]],
    on_hit: Callable[[Path], None] | None = None,
) -> dict[str, torch.Tensor]:
    """theta0's numbers of one kind for the run in `folder`: its theta0 file's section when made for
    `stamp`; else the user cache's file for `stamp` (`on_hit`), else `build()`; then kept in the run."""
    run_file = folder / THETA0_FILE
    found = read_section(run_file, stamp)
    if found is not None:
        return found
    value = cached(stamp.shared_path(".safetensors"), stamp, build, SAFETENSORS, on_hit)
    folder.mkdir(parents=True, exist_ok=True)
    write_section(run_file, value, stamp)
    return value
