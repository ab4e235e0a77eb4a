"""Per-sample metrics as pure functions of token statistics (tensors in, tensors/floats out).

Membership attacks return a *membership score* per sample: higher = more likely seen in training.
- LOSS (Yeom et al.): minus the mean token NLL.
- ZLib (Carlini et al. 2021): minus the summed NLL divided by the zlib-compressed length of the text.
- Min-K% (Shi et al. 2024): mean log-prob of the k% least likely tokens.
- Min-K%++ (Zhang et al. 2024): per token z_t = (log p(x_t) - mu_t) / sigma_t, with mu_t and sigma_t
  the mean and standard deviation of log p(.) under the model's own next-token distribution; the
  score is the mean of the k% lowest z_t.
AUC separates members (label 1) from non-members with scikit-learn's roc_auc_score.

Over-forgetting: KL(theta0 || theta) per token, from both models' logits on the same text.
Memorisation (open-unlearning's definitions, from the teacher-forced argmax at each answer token):
- exact memorisation: the fraction of answer tokens the model predicts exactly;
- extraction strength: 1 - k/n, k the first position from which every remaining prediction is exact.
  As in open-unlearning, k stops at n - 1 when not even the last token matches (so ES >= 1/n).
Token-level forgetting: change of log-probability of UW and GW tokens, and the UW leak rate (the
fraction of unwanted words still produced, whole word, case-insensitive).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import torch


def loss_score(token_nll: torch.Tensor) -> float:
    return -float(token_nll.mean())


def zlib_score(token_nll: torch.Tensor, text: str) -> float:
    return -float(token_nll.sum()) / len(zlib.compress(text.encode("utf-8")))


def _lowest_fraction_mean(values: torch.Tensor, k: float) -> float:
    # int(k * n) as in Shi et al.'s code; at least one token so very short texts get a score
    count = max(1, int(k * values.numel()))
    return float(torch.sort(values).values[:count].mean())


def min_k_score(token_logp: torch.Tensor, k: float = 0.4) -> float:
    """Mean of the k fraction lowest token log-probs (MUSE uses k = 0.4)."""
    return _lowest_fraction_mean(token_logp, k)


def min_k_plus_plus_score(token_z: torch.Tensor, k: float = 0.4) -> float:
    """Mean of the k fraction lowest Min-K%++ z-scores of a text."""
    return _lowest_fraction_mean(token_z, k)


def auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    from sklearn.metrics import roc_auc_score

    labels = [1] * len(member_scores) + [0] * len(nonmember_scores)
    return float(roc_auc_score(labels, [*member_scores, *nonmember_scores]))


def privleak(auc_unlearned: float, auc_retrained: float) -> float:
    """MUSE PrivLeak in percent: (AUC_unlearned - AUC_retrained) / AUC_retrained * 100."""
    return (auc_unlearned - auc_retrained) / auc_retrained * 100


def token_kl(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p) per position, (T,), from (T, V) logits of both models."""
    ref = torch.log_softmax(reference_logits.double(), dim=-1)
    new = torch.log_softmax(logits.double(), dim=-1)
    return (ref.exp() * (ref - new)).sum(-1)


def masked_mean_delta(logp: torch.Tensor, reference_logp: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Mean of logp - reference_logp over the masked tokens (None when the mask is empty)."""
    if not bool(mask.any()):
        return None
    return float((logp - reference_logp)[mask].double().mean())


def leaked_words(words: Sequence[str], generated: str) -> list[bool]:
    """Per unwanted word: does it occur in the generation as a whole word (case-insensitive)?"""
    return [bool(re.search(rf"(?<!\w){re.escape(w)}(?!\w)", generated, re.IGNORECASE)) for w in words]


def leak_rate(words_per_sample: Sequence[Sequence[str]], generations: Sequence[str]) -> float | None:
    flags = [
        f
        for words, text in zip(words_per_sample, generations, strict=True)
        for f in leaked_words(words, text)
    ]
    return sum(flags) / len(flags) if flags else None


def exact_memorization(hits: torch.Tensor) -> float:
    """Fraction of answer tokens whose teacher-forced argmax is the answer token."""
    return float(hits.double().mean())


def extraction_strength(hits: torch.Tensor) -> float:
    """1 - k/n with k the smallest start of an all-correct suffix (open-unlearning; k <= n - 1)."""
    n = hits.numel()
    wrong = torch.nonzero(~hits.bool()).flatten()
    k = 0 if wrong.numel() == 0 else min(int(wrong[-1]) + 1, n - 1)
    return 1 - k / n


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
    """The float64 mean, NaN for no values."""
    return float(torch.tensor(list(values), dtype=torch.float64).mean()) if values else float("nan")
