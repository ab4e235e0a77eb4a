"""The offline identifiers: one class each behind one protocol, `identify(samples) -> labelled samples`.

A labelled sample is the input sample with `spans` = its UW words (character ranges into the answer,
with a score in [0, 1] where the identifier has one) and, for scoring identifiers, `word_scores` in
its metadata (every `\\w+` word with its UW score), so `identify score` can compute AUROC.

- predictability (causal LM): a word the model predicts from its left context (question + earlier
  answer) is general; UW score = 1 - p(word | left context), the product over the word's tokens.
  One teacher-forced forward per sample gives every word (batched).
- contrast (two causal LMs): UW = words the model to unlearn predicts much better than a reference
  that never saw the forget data; gain = sum over the word's tokens of log p_model - log p_ref
  (nats), UW when gain >= threshold, score = sigmoid(gain - threshold).
- mlm (any HF masked LM): the published discriminative procedure (docs/methods.md 1c): every whitespace
  word of the answer is replaced by one mask token in turn, over "question + ' ' + answer"; the word is
  general iff the MLM's top-k predictions contain it (case-insensitive) with probability >= threshold;
  all masked variants of a sample go through one batched forward.
- frequency: words that occur in at least `min_df` of the retain answers are general.
- ner (spaCy): named entities (and optionally noun chunks) are UW.
- spans: the spans already in the data file.
- union / intersection: of two labelled files, word by word.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tokenforget.config import PromptSettings
from tokenforget.data.encode import encode
from tokenforget.data.records import Sample, Span
from tokenforget.forward.scoring import answer_losses
from tokenforget.identify.score import answer_words, overlaps
from tokenforget.models import Precision


def labelled(
    sample: Sample, uw: Sequence[Span], scores: Sequence[tuple[Span, float]] | None = None
) -> Sample:
    """A copy of `sample` carrying UW spans (and per-word scores when given)."""
    meta = {k: v for k, v in sample.meta.items() if k not in ("word_scores", "identifier", "settings")}
    if scores is not None:
        meta["word_scores"] = [{"start": w.start, "end": w.end, "score": round(s, 6)} for w, s in scores]
    return Sample(
        answer=sample.answer, question=sample.question, spans=tuple(sorted(uw)), id=sample.id, meta=meta
    )


def threshold_words(sample: Sample, scores: Sequence[tuple[Span, float]], threshold: float) -> Sample:
    uw = [Span(w.start, w.end, round(s, 6)) for w, s in scores if s >= threshold]
    return labelled(sample, uw, scores)


def word_token_sums(
    answer_offsets: Sequence[tuple[int, int]], values: torch.Tensor, answer: str
) -> list[tuple[Span, float]]:
    """Per `\\w+` word, the sum of `values` over the answer tokens that overlap it."""
    out = []
    for w in answer_words(answer):
        picked = [k for k, (s, e) in enumerate(answer_offsets) if e > s and s < w.end and e > w.start]
        out.append((w, float(values[picked].sum()) if picked else 0.0))
    return out


def answer_token_logps(
    model: Any,
    tokenizer: Any,
    samples: Sequence[Sample],
    prompt: PromptSettings,
    precision: Precision,
    batch_size: int,
) -> list[tuple[list[tuple[int, int]], torch.Tensor]]:
    """Per sample, (answer-token offsets, log p of each answer token): the shared batched scoring pass."""
    pairs = [(s.question, s.answer) for s in samples]
    losses = answer_losses(
        model, tokenizer, pairs, prompt, precision, include_eos=True, batch_size=batch_size
    )
    return [
        (encode(Sample(answer=a, question=q), tokenizer, prompt).answer_offsets, -losses[(q, a)].token_nll)
        for q, a in pairs
    ]


@dataclass
class Predictability:
    """Causal-LM predictability: UW score = 1 - p(word | question, earlier answer)."""

    model: Any
    tokenizer: Any
    precision: Precision
    prompt: PromptSettings = field(default_factory=PromptSettings)
    threshold: float = 0.5
    batch_size: int = 16
    name: str = "predictability"

    def settings(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "prompt": self.prompt.template}

    def word_scores(self, samples: Sequence[Sample]) -> list[list[tuple[Span, float]]]:
        rows = answer_token_logps(
            self.model, self.tokenizer, samples, self.prompt, self.precision, self.batch_size
        )
        return [
            [(w, 1.0 - math.exp(lp)) for w, lp in word_token_sums(offsets, logp, s.answer)]
            for s, (offsets, logp) in zip(samples, rows, strict=True)
        ]

    def identify(self, samples: Sequence[Sample]) -> list[Sample]:
        return [
            threshold_words(s, sc, self.threshold)
            for s, sc in zip(samples, self.word_scores(samples), strict=True)
        ]


@dataclass
class Contrast:
    """UW = words the model to unlearn predicts much better than a reference model (log-prob gain)."""

    model: Any
    reference: Any
    tokenizer: Any
    precision: Precision
    prompt: PromptSettings = field(default_factory=PromptSettings)
    threshold: float = 1.0  # nats of gain summed over the word's tokens
    batch_size: int = 16
    oracle: bool = False  # the reference is the benchmark's retain model (it defines forget quality)
    name: str = "contrast"

    def settings(self) -> dict[str, Any]:
        return {"threshold_nats": self.threshold, "oracle": self.oracle, "prompt": self.prompt.template}

    def word_scores(self, samples: Sequence[Sample]) -> list[list[tuple[Span, float]]]:
        ours = answer_token_logps(
            self.model, self.tokenizer, samples, self.prompt, self.precision, self.batch_size
        )
        theirs = answer_token_logps(
            self.reference, self.tokenizer, samples, self.prompt, self.precision, self.batch_size
        )
        out = []
        for s, (offsets, a), (_, b) in zip(samples, ours, theirs, strict=True):
            gains = word_token_sums(offsets, a - b, s.answer)
            out.append([(w, 1 / (1 + math.exp(-(g - self.threshold)))) for w, g in gains])
        return out

    def identify(self, samples: Sequence[Sample]) -> list[Sample]:
        return [threshold_words(s, sc, 0.5) for s, sc in zip(samples, self.word_scores(samples), strict=True)]


WHITESPACE_WORD = re.compile(r"\S+")


@dataclass
class MaskedLM:
    """The published discriminative identifier with any HF masked LM (docs/methods.md 1c)."""

    model: Any
    tokenizer: Any
    top_k: int = 1
    threshold: float = 0.0
    context: str = "question"  # question: "question + ' ' + answer" (TOFU); none: the answer alone
    batch_size: int = 64
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    name: str = "mlm"

    def settings(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "threshold": self.threshold, "context": self.context}

    def mask_logits(self, enc: dict[str, torch.Tensor], where: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits at the mask positions only. When the model is `encoder + one head`
        (BERT's `cls`, RoBERTa's `lm_head`, ...), the head runs on the masked positions alone: over a
        ~50k vocabulary it costs about as much as the whole encoder when run at every position."""
        base = getattr(self.model, "base_model", None)
        heads = [m for _, m in self.model.named_children() if m is not base]
        if base is not None and base is not self.model and len(heads) == 1:
            hidden = base(**enc).last_hidden_state
            return heads[0](hidden[where[:, 0], where[:, 1]])
        return self.model(**enc).logits[where[:, 0], where[:, 1]]

    def _word_prob(self, probs: torch.Tensor, word: str) -> tuple[bool, float]:
        """(word among the top-k predictions with p >= threshold, the word's own probability)."""
        top = torch.topk(probs, self.top_k)
        predicted = [self.tokenizer.decode([int(i)]).strip().lower() for i in top.indices]
        hits = [float(p) for w, p in zip(predicted, top.values, strict=True) if w == word.lower()]
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        spaced = self.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        single = [i[0] for i in (ids, spaced) if len(i) == 1]
        own = max((float(probs[i]) for i in single), default=0.0)
        return bool(hits) and max(hits) >= self.threshold, max([own, *hits])

    def word_scores(self, samples: Sequence[Sample]) -> list[list[tuple[Span, float]]]:
        mask = self.tokenizer.mask_token
        if mask is None:
            raise ValueError("the mlm identifier needs a masked LM tokenizer (it has no mask token)")
        variants: list[tuple[int, Span, str]] = []  # (sample, word span, masked text)
        for k, s in enumerate(samples):
            prefix = f"{s.question} " if self.context == "question" and s.question else ""
            for m in WHITESPACE_WORD.finditer(s.answer):
                variants.append(
                    (k, Span(m.start(), m.end()), prefix + s.answer[: m.start()] + mask + s.answer[m.end() :])
                )
        results: list[list[tuple[Span, float]]] = [[] for _ in samples]
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(variants), self.batch_size):
                chunk = variants[start : start + self.batch_size]
                enc = self.tokenizer(
                    [v[2] for v in chunk], return_tensors="pt", padding=True, truncation=True
                )
                enc = {k: v.to(self.device) for k, v in enc.items()}
                where = (enc["input_ids"] == self.tokenizer.mask_token_id).nonzero()
                probs = self.mask_logits(enc, where).float().softmax(-1).cpu()
                for (k, span, _), p in zip(chunk, probs, strict=True):
                    word = samples[k].answer[span.start : span.end]
                    general, own = self._word_prob(p, word)
                    results[k].append((span, 0.0 if general else 1.0 - own))
        return [self._to_words(s, r) for s, r in zip(samples, results, strict=True)]

    @staticmethod
    def _to_words(sample: Sample, per_whitespace_word: list[tuple[Span, float]]) -> list[tuple[Span, float]]:
        """`\\w+` words inherit the score of the whitespace word that holds them."""
        out = []
        for w in answer_words(sample.answer):
            owner = next(
                (sc for sp, sc in per_whitespace_word if sp.start <= w.start and w.end <= sp.end), 1.0
            )
            out.append((w, owner))
        return out

    def identify(self, samples: Sequence[Sample]) -> list[Sample]:
        out = []
        for s, scores in zip(samples, self.word_scores(samples), strict=True):
            # the published labels are whole whitespace words: UW spans cover them (punctuation too)
            uw_words = {sp for sp, sc in scores if sc > 0}
            spans = [
                Span(
                    m.start(),
                    m.end(),
                    max(sc for sp, sc in scores if m.start() <= sp.start and sp.end <= m.end()),
                )
                for m in WHITESPACE_WORD.finditer(s.answer)
                if any(m.start() <= w.start and w.end <= m.end() for w in uw_words)
            ]
            out.append(labelled(s, spans, scores))
        return out


@dataclass
class Frequency:
    """Words that occur in at least `min_df` (a fraction) of the retain answers are general."""

    retain: Sequence[Sample]
    min_df: float = 0.02
    name: str = "frequency"
    _df: dict[str, float] = field(default_factory=dict, repr=False)

    def settings(self) -> dict[str, Any]:
        return {"min_df": self.min_df, "retain_answers": len(self.retain)}

    def document_frequency(self) -> dict[str, float]:
        if not self._df:
            counts: dict[str, int] = {}
            for s in self.retain:
                for word in {w.lower() for w in re.findall(r"\w+", s.answer)}:
                    counts[word] = counts.get(word, 0) + 1
            self._df.update({w: c / max(len(self.retain), 1) for w, c in counts.items()})
        return self._df

    def word_scores(self, samples: Sequence[Sample]) -> list[list[tuple[Span, float]]]:
        df = self.document_frequency()
        return [
            [
                (w, 1.0 / (1.0 + df.get(s.answer[w.start : w.end].lower(), 0.0) / self.min_df))
                for w in answer_words(s.answer)
            ]
            for s in samples
        ]

    def identify(self, samples: Sequence[Sample]) -> list[Sample]:
        # score >= 0.5 exactly when the word's document frequency is at most min_df
        return [threshold_words(s, sc, 0.5) for s, sc in zip(samples, self.word_scores(samples), strict=True)]


@dataclass
class NamedEntities:
    """spaCy named entities (and optionally noun chunks and part-of-speech tags) are UW."""

    nlp: Any
    noun_chunks: bool = False
    labels: tuple[str, ...] = ()  # entity labels to keep; empty = all
    pos: tuple[str, ...] = ()  # also mark tokens with these part-of-speech tags (e.g. PROPN NOUN NUM ADJ)
    name: str = "ner"

    def settings(self) -> dict[str, Any]:
        return {
            "spacy_model": self.nlp.meta.get("name"),
            "noun_chunks": self.noun_chunks,
            "labels": list(self.labels),
            "pos": list(self.pos),
        }

    def identify(self, samples: Sequence[Sample]) -> list[Sample]:
        out = []
        for s, doc in zip(samples, self.nlp.pipe([s.answer for s in samples]), strict=True):
            spans = {
                Span(e.start_char, e.end_char) for e in doc.ents if not self.labels or e.label_ in self.labels
            }
            if self.noun_chunks:
                # a noun chunk without its determiner ("the novel" -> "novel")
                for chunk in doc.noun_chunks:
                    tokens = [t for t in chunk if t.pos_ not in ("DET", "PRON")]
                    if tokens:
                        spans.add(Span(tokens[0].idx, tokens[-1].idx + len(tokens[-1].text)))
            spans.update(Span(t.idx, t.idx + len(t.text)) for t in doc if t.pos_ in self.pos)
            out.append(labelled(s, sorted(spans)))
        return out


def drop_question_words(samples: Sequence[Sample]) -> list[Sample]:
    """Unmark every answer word that also occurs in the question (case-insensitive): a word the
    answer repeats from the question restates it and does not answer it (the published generative
    instruction: label the words that answer the question). UW spans are split into words here."""
    out = []
    for s in samples:
        asked = {w.lower() for w in re.findall(r"\w+", s.question or "")}
        scored = {(x.start, x.end): x.score for x in s.spans or ()}
        keep = []
        for w in answer_words(s.answer):
            owner = next((x for x in s.spans or () if x.start < w.end and x.end > w.start), None)
            if owner is not None and s.answer[w.start : w.end].lower() not in asked:
                keep.append(Span(w.start, w.end, scored.get((owner.start, owner.end))))
        result = labelled(s, keep)
        if "word_scores" in s.meta:
            result.meta["word_scores"] = [
                {**x, "score": 0.0} if s.answer[x["start"] : x["end"]].lower() in asked else x
                for x in s.meta["word_scores"]
            ]
        out.append(result)
    return out


def from_spans(samples: Sequence[Sample]) -> list[Sample]:
    """The `spans` identifier: the user's own spans, as given."""
    return [labelled(s, s.spans or ()) for s in samples]


def combine(a: Sequence[Sample], b: Sequence[Sample], how: str) -> list[Sample]:
    """Word-level union or intersection of two labellings of the same samples."""
    index = {(s.question, s.answer): s for s in b}
    out = []
    for x in a:
        y = index.get((x.question, x.answer))
        if y is None:
            raise ValueError(f"sample {x.id!r} is labelled in the first file only")
        words = answer_words(x.answer)
        in_x = [overlaps(w, x.spans or ()) for w in words]
        in_y = [overlaps(w, y.spans or ()) for w in words]
        keep = [p or q if how == "union" else p and q for p, q in zip(in_x, in_y, strict=True)]
        out.append(labelled(x, [w for w, k in zip(words, keep, strict=True) if k]))
    return out
