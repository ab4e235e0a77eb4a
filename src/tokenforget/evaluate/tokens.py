"""`eval tokens`: token-level forgetting. Did the unwanted words go while the general words stayed?

Two steps, so that one model is scored once whatever labelling is used afterwards:
1. `score_model` (one teacher-forced pass + one batched greedy pass of the model over the forget
   set): per answer token its text, log-probability and whether the argmax predicts it; greedy
   answers to the original and, where the data has one, the paraphrased question. Label-free,
   written as `tokens.json` and reused.
2. `token_summary` (pure): with one evaluation labelling (spans) and, optionally, the scores of the
   original model theta0, the mean change of log p on UW and on GW tokens (theta vs theta0), the UW leak
   rate (the fraction of unwanted words the greedy answer still contains, whole word,
   case-insensitive) for both questions, exact memorisation and extraction strength. A word the
   question itself contains ("Where was Basil born?") leaks nothing when the answer repeats it: it
   is left out of that question's leak rate.
The EOS token is not a word: it is neither UW nor GW here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tokenforget.artifacts import Stamp, cached, json_codec, store
from tokenforget.config import PromptSettings
from tokenforget.data.encode import encode
from tokenforget.data.records import Sample
from tokenforget.errors import ConfigError
from tokenforget.evaluate.metrics import (
    exact_memorization,
    extraction_strength,
    leak_rate,
    leaked_words,
    masked_mean_delta,
)
from tokenforget.forward.generation import generate_greedy
from tokenforget.forward.scoring import AnswerLoss, answer_losses
from tokenforget.models import Precision

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TOKENS_FILE = "tokens.json"


def sample_key(sample: Sample) -> str:
    return json.dumps([sample.question, sample.answer])


def score_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[Sample],
    prompt: PromptSettings,
    precision: Precision,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    generated: Sequence[str] | None = None,
    generation_batch_size: int | None = None,
) -> list[dict[str, Any]]:
    """Per sample: answer tokens (text, log p, argmax hit) and greedy answers, no labels needed.

    `generated` reuses greedy answers to the original questions made elsewhere (the TOFU forget
    log) with the same settings; only the paraphrased questions are generated then.
    """
    pairs = [(s.question, s.answer) for s in samples]
    stats = answer_losses(model, tokenizer, pairs, prompt, precision, False, batch_size)
    para = paraphrased_pairs(samples)
    asked = ([] if generated is not None else pairs) + para
    # the answer only closes the encoding; generation starts from the prompt tokens
    prompts = [encode(Sample(answer=a, question=q), tokenizer, prompt).prompt_ids for q, a in asked]
    texts = generate_greedy(
        model, tokenizer, prompts, precision, max_new_tokens, generation_batch_size or batch_size
    )
    split = len(asked) - len(para)
    originals = list(generated) if generated is not None else texts[:split]
    paraphrased = texts[split:]
    return token_rows(samples, tokenizer, prompt, stats, originals, paraphrased)


def paraphrased_pairs(samples: Sequence[Sample]) -> list[tuple[str, str]]:
    """(paraphrased question, answer) of the samples that have one: the prompts whose greedy
    answers give the paraphrased leak rate."""
    return [(q, s.answer) for s in samples if (q := s.meta.get("paraphrased_question"))]


def token_rows(
    samples: Sequence[Sample],
    tokenizer: PreTrainedTokenizerBase,
    prompt: PromptSettings,
    stats: dict[tuple[str | None, str], AnswerLoss],
    originals: Sequence[str],
    paraphrased: Sequence[str],
) -> list[dict[str, Any]]:
    """The label-free rows of `tokens.json`: `stats` scored without EOS, greedy answers to the
    original questions and, in order, to the paraphrased ones (`paraphrased_pairs`)."""
    answers = iter(paraphrased)
    rows = []
    for sample, original in zip(samples, originals, strict=True):
        encoded = encode(sample, tokenizer, prompt)
        a = stats[(sample.question, sample.answer)]
        offsets = encoded.answer_offsets[: a.tokens]  # EOS left out
        para = sample.meta.get("paraphrased_question")
        rows.append(
            {
                "key": sample_key(sample),
                "id": sample.id,
                "question": sample.question,
                "answer": sample.answer,
                "offsets": [list(o) for o in offsets],
                "logp": [round(-v, 6) for v in a.token_nll.tolist()],
                "hits": [bool(h) for h in a.hits.tolist()],
                "generated": original,
                "paraphrased_question": para,
                "generated_paraphrased": next(answers) if para else None,
            }
        )
    return rows


def tokens_stamp(cfg: Any, model_name: str, samples: Sequence[Sample]) -> dict[str, Any]:
    """What `tokens.json` depends on: a cached file with another stamp is scored again."""
    from tokenforget.evaluate.tofu_run import resolve_profile

    return {
        "model": str(model_name),
        "prompt": cfg.prompt.model_dump(),
        "max_new_tokens": resolve_profile(cfg.eval).max_new_tokens,
        "samples": [sample_key(s) for s in samples],
    }


TOKEN_ROWS = json_codec("rows")  # {"stamp": what the rows depend on, "rows": [...]}


def write_token_rows(out: Path, stamp: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    store(out / TOKENS_FILE, rows, Stamp("tokens", stamp), TOKEN_ROWS)


def _uw_mask(
    sample: Sample, tokenizer: PreTrainedTokenizerBase, prompt: PromptSettings, n: int
) -> torch.Tensor:
    uw = encode(sample, tokenizer, prompt).uw
    return torch.tensor((uw or [False] * (n + 1))[:n], dtype=torch.bool)


def unwanted_words(sample: Sample) -> list[str]:
    """The distinct unwanted words (span texts) of a labelled sample, in order."""
    words = [sample.answer[s.start : s.end].strip() for s in sample.spans or ()]
    return list(dict.fromkeys(w for w in words if re.search(r"\w", w)))


def not_given(words: Sequence[str], question: str | None) -> list[str]:
    """The unwanted words the question does not already contain (whole word, case-insensitive)."""
    given = leaked_words(words, question or "")
    return [w for w, g in zip(words, given, strict=True) if not g]


def token_summary(
    rows: Sequence[dict[str, Any]],
    labels: Sequence[Sample],
    tokenizer: PreTrainedTokenizerBase,
    prompt: PromptSettings,
    reference_rows: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Token-level forgetting of one scored model under one labelling (see the module docstring).

    Without reference_rows (theta0's scores) the log-prob changes are null; everything else stands.
    """
    by_key = {sample_key(s): s for s in labels}
    reference = {r["key"]: r for r in reference_rows} if reference_rows is not None else None
    missing = [r["id"] or r["question"] for r in rows if r["key"] not in by_key]
    if missing:
        raise ConfigError(
            f"the evaluation labels do not cover {len(missing)} forget sample(s), e.g. {missing[0]!r}: "
            "label the same forget set (tokenforget identify) or give its spans"
        )
    logp_all, ref_all, mask_all, per_sample = [], [], [], []
    words_per_sample, generations, para_words, para_generations = [], [], [], []
    for row in rows:
        sample = by_key[row["key"]]
        logp = torch.tensor(row["logp"], dtype=torch.float64)
        uw = _uw_mask(sample, tokenizer, prompt, logp.numel())
        hits = torch.tensor(row["hits"], dtype=torch.bool)
        words = unwanted_words(sample)
        asked = not_given(words, row["question"])
        entry: dict[str, Any] = {
            "id": row["id"],
            "uw_words": words,
            "given_in_question": [w for w in words if w not in asked],
            "leaked": [w for w, f in zip(asked, leaked_words(asked, row["generated"]), strict=True) if f],
            "exact_memorization": exact_memorization(hits),
            "extraction_strength": extraction_strength(hits),
        }
        words_per_sample.append(asked)
        generations.append(row["generated"])
        if row.get("generated_paraphrased") is not None:
            asked_para = not_given(words, row["paraphrased_question"])
            para_words.append(asked_para)
            para_generations.append(row["generated_paraphrased"])
            flags = leaked_words(asked_para, row["generated_paraphrased"])
            entry["leaked_paraphrased"] = [w for w, f in zip(asked_para, flags, strict=True) if f]
        if reference is not None:
            ref = reference.get(row["key"])
            if ref is None or len(ref["logp"]) != len(row["logp"]):
                raise ConfigError(
                    f"sample {row['id']!r}: the reference was scored on other tokens "
                    "(same tokenizer and prompt template needed)"
                )
            ref_logp = torch.tensor(ref["logp"], dtype=torch.float64)
            entry["uw_dlogp"] = masked_mean_delta(logp, ref_logp, uw)
            entry["gw_dlogp"] = masked_mean_delta(logp, ref_logp, ~uw)
            ref_all.append(ref_logp)
        logp_all.append(logp)
        mask_all.append(uw)
        per_sample.append(entry)
    summary: dict[str, Any] = {
        "uw_tokens": int(sum(int(m.sum()) for m in mask_all)),
        "gw_tokens": int(sum(int((~m).sum()) for m in mask_all)),
        "uw_leak_rate": leak_rate(words_per_sample, generations),
        "uw_leak_rate_paraphrased": leak_rate(para_words, para_generations) if para_words else None,
        "exact_memorization": _mean([e["exact_memorization"] for e in per_sample]),
        "extraction_strength": _mean([e["extraction_strength"] for e in per_sample]),
        "uw_dlogp": None,
        "gw_dlogp": None,
    }
    if ref_all:
        logp, ref_logp, mask = torch.cat(logp_all), torch.cat(ref_all), torch.cat(mask_all)
        # micro-averaged over tokens: every UW (GW) token of the forget set counts once
        summary["uw_dlogp"] = masked_mean_delta(logp, ref_logp, mask)
        summary["gw_dlogp"] = masked_mean_delta(logp, ref_logp, ~mask)
    summary["per_sample"] = per_sample
    return summary


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def scored_model(
    cfg: Any,
    model_name: str,
    samples: Sequence[Sample],
    out: Path,
    generated: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """`score_model` for a model by name, cached in out/tokens.json (same model, data and settings;
    the TOFU evaluation of the same model writes it on its own pass when it can)."""
    from tokenforget.evaluate.tofu_run import resolve_profile
    from tokenforget.models import load_model

    stamp = Stamp("tokens", tokens_stamp(cfg, model_name, samples))

    def score() -> list[dict[str, Any]]:
        model, tokenizer, precision = load_model(cfg.model, model_name)
        return score_model(
            model,
            tokenizer,
            samples,
            cfg.prompt,
            precision,
            resolve_profile(cfg.eval).max_new_tokens,
            cfg.eval.batch_size,
            generated,
            cfg.eval.generation_batch_size,
        )

    return cached(out / TOKENS_FILE, stamp, score, TOKEN_ROWS)


def forget_samples(forget: str) -> list[Sample]:
    """tofu-mini's forget rows (with their paraphrased questions) or a user data file."""
    from tokenforget.data.sets import named_set

    return named_set(forget, "eval_forget")


def token_summary_for(
    cfg: Any,
    model_name: str,
    samples: Sequence[Sample],
    out: Path,
    reference_name: str | None = None,
    labels: Path | str | None = None,
    generated: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score `model_name` (and `reference_name`, theta0) on `samples`, summarise under `labels`."""
    from tokenforget.data.identified import read_identified
    from tokenforget.models import load_tokenizer

    labelled = read_identified(labels) if labels is not None else list(samples)
    if not any(s.spans for s in labelled):
        raise ConfigError(
            "no unwanted words to evaluate: the forget samples carry no spans. Fix: --labels "
            "identified.jsonl (tokenforget identify) or a forget file with spans"
        )
    rows = scored_model(cfg, model_name, samples, out / "model", generated)
    reference = scored_model(cfg, reference_name, samples, out / "reference") if reference_name else None
    tokenizer = load_tokenizer(model_name, cfg.model.trust_remote_code)
    summary = token_summary(rows, labelled, tokenizer, cfg.prompt, reference)
    summary["labels"] = str(labels) if labels is not None else "the forget set's own spans"
    return summary
