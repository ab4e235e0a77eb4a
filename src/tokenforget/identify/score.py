"""`identify score`: how good a UW labelling is against gold spans.

Words are `\\w+` runs of the answer. A word is UW on a side when it overlaps any of that side's UW
spans. Word-level precision / recall / F1 are micro-averaged over all answer words of all matched
samples; token-level F1 does the same over model tokens (a token is UW when it overlaps a UW span,
the rule the trainer uses). When the prediction carries scores (`word_scores`, or scores on its
spans), AUROC and average precision of the word scores against the gold word labels are added.
Gold is scored as shipped; `expand_gold` also labels every later whole-word occurrence of a gold
word (the published GPT-4o labels mark first occurrences only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenforget.data.records import Sample, Span, answer_words, word_spans


def overlaps(a: Span, spans: Sequence[Span]) -> bool:
    return any(s.start < a.end and s.end > a.start for s in spans)


def word_labels(answer: str, spans: Sequence[Span]) -> list[bool]:
    """Per `\\w+` word of the answer: does it overlap a UW span?"""
    return [overlaps(w, spans) for w in answer_words(answer)]


def expanded(answer: str, spans: Sequence[Span]) -> list[Span]:
    """The spans plus every whole-word occurrence of their text elsewhere in the answer."""
    return sorted(set(spans) | set(word_spans(answer, [answer[s.start : s.end] for s in spans])))


def word_scores(sample: Sample) -> list[float] | None:
    """Per word, the prediction's UW score: from `word_scores` in the sample's metadata, else from
    the scores of the UW spans it overlaps (0 outside them); None when the prediction has no scores."""
    words = answer_words(sample.answer)
    table = sample.meta.get("word_scores")
    if table:
        scored = [Span(int(x["start"]), int(x["end"]), float(x["score"])) for x in table]
    elif sample.spans and all(s.score is not None for s in sample.spans):
        scored = list(sample.spans)
    else:
        return None
    return [max((s.score for s in scored if s.start < w.end and s.end > w.start), default=0.0) for w in words]


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _counts(pred: Sequence[bool], gold: Sequence[bool]) -> tuple[int, int, int]:
    tp = sum(p and g for p, g in zip(pred, gold, strict=True))
    fp = sum(p and not g for p, g in zip(pred, gold, strict=True))
    fn = sum(g and not p for p, g in zip(pred, gold, strict=True))
    return tp, fp, fn


def match_samples(pred: list[Sample], gold: list[Sample]) -> list[tuple[Sample, Sample]]:
    """Pairs by (question, answer) text; samples that appear on one side only are left out."""
    index = {(g.question, g.answer): g for g in gold}
    return [(p, index[(p.question, p.answer)]) for p in pred if (p.question, p.answer) in index]


def score_labels(
    pred: list[Sample], gold: list[Sample], expand_gold: bool = False, tokenizer: Any = None
) -> dict[str, Any]:
    """Word- (and token-, with a tokenizer) level quality of `pred` against `gold`; see the module doc."""
    pairs = match_samples(pred, gold)
    if not pairs:
        raise ValueError("no sample of the prediction matches a gold sample (same question and answer)")
    word_pred: list[bool] = []
    word_gold: list[bool] = []
    scores: list[float] = []
    token_pred: list[bool] = []
    token_gold: list[bool] = []
    has_scores = True
    per_sample = []
    for p, g in pairs:
        gold_spans = list(g.spans or ())
        if expand_gold:
            gold_spans = expanded(g.answer, gold_spans)
        wp, wg = word_labels(p.answer, p.spans or ()), word_labels(g.answer, gold_spans)
        word_pred += wp
        word_gold += wg
        s = word_scores(p)
        has_scores = has_scores and s is not None
        if s is not None:
            scores += s
        tp, fp, fn = _counts(wp, wg)
        words = answer_words(p.answer)
        per_sample.append(
            {
                "id": p.id,
                "word_f1": prf(tp, fp, fn)[2],
                "pred_uw": [p.answer[w.start : w.end] for w, x in zip(words, wp, strict=True) if x],
                "gold_uw": [p.answer[w.start : w.end] for w, x in zip(words, wg, strict=True) if x],
            }
        )
        if tokenizer is not None:
            enc = tokenizer(p.answer, add_special_tokens=False, return_offsets_mapping=True)
            offsets = [tuple(o) for o in enc["offset_mapping"]]
            token_pred += [e > s and overlaps(Span(s, e), p.spans or ()) for s, e in offsets]
            token_gold += [e > s and overlaps(Span(s, e), gold_spans) for s, e in offsets]
    precision, recall, f1 = prf(*_counts(word_pred, word_gold))
    result: dict[str, Any] = {
        "samples": len(pairs),
        "unmatched_pred": len(pred) - len(pairs),
        "words": len(word_gold),
        "gold_uw_words": sum(word_gold),
        "pred_uw_words": sum(word_pred),
        "word_precision": precision,
        "word_recall": recall,
        "word_f1": f1,
        "expand_gold": expand_gold,
    }
    if tokenizer is not None:
        tp, fp, fn = _counts(token_pred, token_gold)
        result["token_precision"], result["token_recall"], result["token_f1"] = prf(tp, fp, fn)
    if has_scores and 0 < sum(word_gold) < len(word_gold):
        from sklearn.metrics import average_precision_score, roc_auc_score

        result["word_auroc"] = float(roc_auc_score(word_gold, scores))
        result["word_average_precision"] = float(average_precision_score(word_gold, scores))
    result["per_sample"] = per_sample
    return result


def jaccard(a: Sequence[Sample], b: Sequence[Sample]) -> float:
    """Mean over samples of the Jaccard similarity of the two labellings' UW word sets (1 if both empty)."""
    values = []
    for x, y in zip(a, b, strict=True):
        words = answer_words(x.answer)
        ux = {k for k, w in enumerate(words) if overlaps(w, x.spans or ())}
        uy = {k for k, w in enumerate(words) if overlaps(w, y.spans or ())}
        values.append(len(ux & uy) / len(ux | uy) if ux | uy else 1.0)
    return sum(values) / len(values) if values else float("nan")
