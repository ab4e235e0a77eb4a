"""Evaluation building blocks: batched greedy generation and ROUGE (rouge-score, stemmer on).

Greedy generation is batched with left padding and the KV cache; the attention mask comes from
the prompt lengths, so a real EOS/end-of-turn token inside a prompt is never hidden.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from tokenforget.config import PromptSettings
from tokenforget.data.encode import encode, pad_prompts_left
from tokenforget.data.records import Sample
from tokenforget.models import Precision, eval_mode

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    precision: Precision,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    max_length: int | None = None,
) -> list[str]:
    """Greedy continuations (decoded, special tokens dropped) of tokenised prompts, in input order.

    max_length (legacy TOFU) bounds the padded prompt plus the generation, not the new tokens alone.
    """
    from tokenforget.progress import task_progress

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad less
    outputs: dict[int, str] = {}
    pad = tokenizer.pad_token_id
    with eval_mode(model), task_progress("generate", len(prompts)) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = {
                k: v.to(precision.device)
                for k, v in pad_prompts_left([prompts[i] for i in chunk], pad).items()
            }
            width = batch["input_ids"].shape[1]
            new_tokens = max_new_tokens if max_length is None else max(1, max_length - width)
            with precision.autocast():
                out = model.generate(
                    **batch,
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                    eos_token_id=tokenizer.eos_token_id,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
            new = out[:, width:]
            for row, index in enumerate(chunk):
                outputs[index] = tokenizer.decode(new[row], skip_special_tokens=True).strip()
            bar.advance(bar.task_ids[0], len(chunk))
    return [outputs[i] for i in range(len(prompts))]


def answer_questions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[Sample],
    prompt: PromptSettings,
    precision: Precision,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    max_length: int | None = None,
) -> list[str]:
    """Greedy answers to the samples' questions, with the same prompt format as training."""
    prompts = [encode(s, tokenizer, prompt).prompt_ids for s in samples]
    return generate_greedy(model, tokenizer, prompts, precision, max_new_tokens, batch_size, max_length)


_SCORER = None


def rouge_recall(predictions: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """Per pair ROUGE-1 and ROUGE-L recall of the prediction against the reference (TOFU's choice)."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    scores = []
    for prediction, reference in zip(predictions, references, strict=True):
        result = _SCORER.score(reference, prediction)
        scores.append({"rouge1_recall": result["rouge1"].recall, "rougeL_recall": result["rougeL"].recall})
    return scores


def mean(values: Sequence[float]) -> float:
    return float(torch.tensor(list(values), dtype=torch.float64).mean()) if values else float("nan")
