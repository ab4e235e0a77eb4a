"""`eval mia` and `eval kl`: membership attacks between two sets, and KL to the original model.

Both read token statistics from the shared teacher-forced pass (`scoring`), so one forward per
distinct text serves every attack. The EOS token is not part of a text, so it is left out here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from tokenforget.config import PromptSettings
from tokenforget.data.encode import encode, pad_batch
from tokenforget.data.records import Sample
from tokenforget.evaluate.metrics import (
    auc,
    loss_score,
    min_k_plus_plus_score,
    min_k_score,
    token_kl,
    zlib_score,
)
from tokenforget.forward import answer_forward
from tokenforget.forward.scoring import answer_losses
from tokenforget.models import Precision, eval_mode
from tokenforget.registry import ATTACKS

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Attack:
    """A membership score: higher = more likely a training member. `score(stats, sample, k)` reads
    one answer's teacher-forced statistics (`AnswerLoss`: token_nll, and token_z when the attack
    declares `needs_distribution`, which makes the shared pass keep the full distribution)."""

    name: str
    score: Callable[[Any, Sample, float], float]
    needs_distribution: bool = False


def register_attack(attack: Attack) -> Attack:
    """Add a membership score: `eval mia`, the main job's MIA table and the report pick it up."""
    return ATTACKS.register(attack)


for _attack in (
    Attack("loss", lambda a, sample, k: loss_score(a.token_nll)),
    Attack("zlib", lambda a, sample, k: zlib_score(a.token_nll, sample.answer)),
    Attack("min_k", lambda a, sample, k: min_k_score(-a.token_nll, k)),
    Attack("min_k_plus_plus", lambda a, sample, k: min_k_plus_plus_score(a.token_z, k), True),
):
    register_attack(_attack)


def membership_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[Sample],
    prompt: PromptSettings,
    precision: Precision,
    k: float = 0.4,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Per sample, every attack's membership score (higher = more likely a training member)."""
    pairs = [(s.question, s.answer) for s in samples]
    stats = answer_losses(
        model,
        tokenizer,
        pairs,
        prompt,
        precision,
        include_eos=False,
        batch_size=batch_size,
        with_distribution=any(attack.needs_distribution for attack in ATTACKS.values()),
    )
    scores = []
    for sample, pair in zip(samples, pairs, strict=True):
        a = stats[pair]
        scores.append({"id": sample.id, **{n: at.score(a, sample, k) for n, at in ATTACKS.items()}})
    return scores


def membership_attack(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    members: Sequence[Sample],
    nonmembers: Sequence[Sample],
    prompt: PromptSettings,
    precision: Precision,
    k: float = 0.4,
    batch_size: int = 32,
) -> dict[str, Any]:
    """AUC of each attack separating members (label 1) from non-members, with per-sample scores."""
    inside = membership_scores(model, tokenizer, members, prompt, precision, k, batch_size)
    outside = membership_scores(model, tokenizer, nonmembers, prompt, precision, k, batch_size)
    return {
        "auc": {name: auc([s[name] for s in inside], [s[name] for s in outside]) for name in ATTACKS},
        "k": k,
        "members": inside,
        "nonmembers": outside,
    }


def kl_to_reference(
    model: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[Sample],
    prompt: PromptSettings,
    precision: Precision,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Mean per-token KL(reference || model) over each sample's answer tokens (EOS included),
    and its mean over samples. Both models must share the tokenizer."""
    encoded = [encode(s, tokenizer, prompt) for s in samples]
    per_sample: list[float] = []
    with eval_mode(model, dtype=precision.compute_dtype), eval_mode(reference, dtype=precision.compute_dtype):
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            batch = {k: v.to(precision.device) for k, v in pad_batch(chunk, tokenizer.pad_token_id).items()}
            with precision.autocast():
                ours, theirs = answer_forward(model, batch), answer_forward(reference, batch)
            kl = token_kl(theirs.logits, ours.logits).cpu()
            counts = torch.bincount(ours.rows.cpu(), minlength=len(chunk)).tolist()
            per_sample.extend(float(part.mean()) for part in torch.split(kl, counts))
    return {
        "mean_token_kl": float(torch.tensor(per_sample, dtype=torch.float64).mean()),
        "per_sample": [{"id": s.id, "mean_token_kl": v} for s, v in zip(samples, per_sample, strict=True)],
    }
