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
from tokenforget.models import Precision, eval_mode
from tokenforget.train import answer_forward, token_nll

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class AnswerLoss:
    total: float  # summed NLL over the answer tokens
    tokens: int

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
) -> dict[tuple[str | None, str], AnswerLoss]:
    """NLL of each distinct (question, answer) pair's answer tokens (EOS counted when include_eos)."""
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
            nll = token_nll(fwd)
            sums = torch.zeros(len(chunk), dtype=torch.float64).index_add_(
                0, fwd.rows.cpu(), nll.double().cpu()
            )
            counts = torch.bincount(fwd.rows.cpu(), minlength=len(chunk))
            for row, index in enumerate(chunk):
                results[unique[index]] = AnswerLoss(float(sums[row]), int(counts[row]))
            bar.advance(bar.task_ids[0], len(chunk))
    return results
