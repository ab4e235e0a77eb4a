"""The theta0 reference cache: one pass of the frozen model over the forget set, before training.

TPO, NPO, IdkPO and TNPO need theta0 only through per-token numbers of a *fixed* set of texts (the
gold logit and log-probability of every answer token of the forget answers, and of IdkPO's
preferred answers), so they are computed once, stored in `reference.safetensors` keyed by sample id,
and theta0 is never held in memory during training (trl's precomputed reference log-probs).

The cache is reused only when everything that shapes the numbers matches: the model's identity,
the exact token ids of every text (which covers data, prompt template and tokenizer) and the
resolved precision (`reference_stamp`). The stamp's key is stored in the file's metadata; a file
with another key is recomputed (`artifacts.cached` with the `SAFETENSORS` codec).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tokenforget.artifacts import Codec, Stamp
from tokenforget.data.encode import Encoded, pad_batch
from tokenforget.forward import answer_forward, token_nll
from tokenforget.losses import RefStats
from tokenforget.models import Precision, eval_mode, model_identity

FORMAT = "tokenforget-reference-2"  # 2: the mean logit over the vocabulary too


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
