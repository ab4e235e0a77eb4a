"""Teacher-forced answer losses: one pass per distinct (question, answer) text, in padded batches.

Every metric that needs an answer's NLL (probability, truth ratio, membership attacks, token-level
forgetting) reads it from here, so a text shared by two metrics is scored once. The forward is the
training forward (LM head at answer positions only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tokenforget.config import PromptSettings
from tokenforget.data.encode import IGNORE_INDEX, encode, pad_batch
from tokenforget.data.records import Sample
from tokenforget.evaluate.metrics import min_k_plus_plus_z
from tokenforget.models import Precision, eval_mode
from tokenforget.train import answer_forward, token_nll

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class AnswerLoss:
    """Per-token statistics of one answer under one model."""

    token_nll: torch.Tensor  # (tokens,) float64
    token_z: torch.Tensor | None = None  # Min-K%++ z per token, when asked for
    hits: torch.Tensor | None = None  # (tokens,) bool: the teacher-forced argmax is the answer token

    @property
    def total(self) -> float:
        return float(self.token_nll.sum())

    @property
    def tokens(self) -> int:
        return self.token_nll.numel()

    @property
    def mean(self) -> float:
        return self.total / self.tokens


def answer_losses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str | None, str]],
    prompt: PromptSettings,
    precision: Precision,
    include_eos: bool = True,
    batch_size: int = 32,
    with_distribution: bool = False,
) -> dict[tuple[str | None, str], AnswerLoss]:
    """Token NLLs of each distinct (question, answer) pair's answer (EOS counted when include_eos).

    with_distribution adds the Min-K%++ z-score of every token (needs a softmax over the vocabulary
    at each answer position, computed batch by batch and not kept).
    """
    from tokenforget.progress import task_progress

    unique = list(dict.fromkeys(pairs))
    encoded = [encode(Sample(answer=a, question=q), tokenizer, prompt) for q, a in unique]
    order = sorted(range(len(unique)), key=lambda i: len(encoded[i].input_ids))
    results: dict[tuple[str | None, str], AnswerLoss] = {}
    with eval_mode(model), task_progress("score answers", len(unique)) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = {
                k: v.to(precision.device)
                for k, v in pad_batch([encoded[i] for i in chunk], tokenizer.pad_token_id).items()
            }
            if not include_eos:
                lengths = batch["attention_mask"].sum(1)
                batch["labels"][torch.arange(len(chunk)), lengths - 1] = IGNORE_INDEX
            with precision.autocast():
                fwd = answer_forward(model, batch)
            nll = token_nll(fwd).double().cpu()
            counts = torch.bincount(fwd.rows.cpu(), minlength=len(chunk)).tolist()
            per_row = torch.split(nll, counts)  # positions are grouped by row, in order
            z_rows = (
                torch.split(min_k_plus_plus_z(fwd.logits, fwd.targets).cpu(), counts)
                if with_distribution
                else [None] * len(chunk)
            )
            hit_rows = torch.split((fwd.logits.argmax(-1) == fwd.targets).cpu(), counts)
            for row, index in enumerate(chunk):
                results[unique[index]] = AnswerLoss(per_row[row], z_rows[row], hit_rows[row])
            bar.advance(bar.task_ids[0], len(chunk))
    return results
