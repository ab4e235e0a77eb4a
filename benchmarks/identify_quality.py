"""Identifier quality and speed on TOFU-mini's forget set, as measured in one run.

    .venv/bin/python benchmarks/identify_quality.py [--out benchmarks/results/identify_quality.json]

Quality: `identify score` of every offline identifier on the 40 TOFU-mini forget answers against the
paper's GPT-4o labels (`forget01_gpt.jsonl`, given with `--labels DIR`: see `published.py`), and
agreement with the paper's own discriminative labels (`forget01_bert.jsonl`). Thresholds are tuned
on one author (the first 20 answers) by word F1 against the GPT-4o labels and reported on the other
(the last 20), then the other way round, so no figure is tuned to itself. Scores are reported as
shipped and with `--expand-gold` (the GPT-4o labels mark a repeated word at its first occurrence
only).

Identifiers: predictability (the embedded base model, the offline default), contrast (the prepared
TOFU-mini target model vs the base model; and vs the retain model, an oracle), frequency (TOFU-mini
retain answers), ner (spaCy en_core_web_sm: entities; + noun chunks; + content-word POS tags; each
also with `drop_question_words`), and unions. No pretrained masked LM exists offline, so
`mlm` enters the speed comparison only (a randomly initialised distilroberta-sized model).

Speed: words/s of the batched predictability and mlm identifiers vs a one-word-per-forward loop on
the same data and model (predictability: a forward over the left context plus the word for each
word; mlm: one fill-mask forward per masked word with the LM head at every position, as the published
code's fill-mask pipeline runs it, and our own identifier at batch size 1, which shows batching
alone). `--speed-only` reruns the speed part and keeps the quality part of an existing --out file.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import time
from pathlib import Path

import torch
from published import add_labels_argument, bert_labels, gpt_labels

REPO = Path(__file__).resolve().parents[1]
HALVES = {"author1": slice(0, 20), "author2": slice(20, 40)}


def tune_and_report(scores_per_sample, samples, gold, grid, expand):
    """Tune the threshold on one half, report on the other (both ways); also AUROC over all 40."""
    from tokenforget.identify.identifiers import threshold_words
    from tokenforget.identify.score import score_labels

    def labelled(threshold, part):
        return [
            threshold_words(s, sc, threshold)
            for s, sc in zip(samples[part], scores_per_sample[part], strict=True)
        ]

    out = {}
    for tune, report in (("author1", "author2"), ("author2", "author1")):
        best = max(grid, key=lambda t: score_labels(labelled(t, HALVES[tune]), gold, expand)["word_f1"])
        result = score_labels(labelled(best, HALVES[report]), gold, expand)
        out[f"tuned_on_{tune}"] = {
            "threshold": best,
            **{k: round(result[k], 4) for k in ("word_precision", "word_recall", "word_f1")},
            "word_auroc": round(result.get("word_auroc", float("nan")), 4),
        }
    f1 = [out[k]["word_f1"] for k in out]
    out["word_f1_mean_held_out"] = round(sum(f1) / 2, 4)
    everything = score_labels(labelled(grid[0], slice(0, 40)), gold, expand)
    out["word_auroc_all_40"] = round(everything.get("word_auroc", float("nan")), 4)
    out["word_average_precision_all_40"] = round(everything.get("word_average_precision", float("nan")), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    add_labels_argument(parser)
    parser.add_argument("--out", default="benchmarks/results/identify_quality.json")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--speed-only", action="store_true")
    args = parser.parse_args()

    from tokenforget.config import ModelSettings, PromptSettings, load_config
    from tokenforget.data import tofu_mini
    from tokenforget.identify import read_identified
    from tokenforget.identify.identifiers import (
        Contrast,
        Frequency,
        NamedEntities,
        Predictability,
        combine,
        drop_question_words,
    )
    from tokenforget.identify.registry import load_spacy
    from tokenforget.identify.score import score_labels
    from tokenforget.models import load_model
    from tokenforget.prepare import prepare

    if args.speed_only:
        result = json.loads(Path(args.out).read_text())
        base, tok, precision = load_model(ModelSettings())
        result["speed"] = speed(base, tok, precision, tofu_mini().forget)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["speed"], indent=2))
        return
    gold = read_identified(gpt_labels(args.labels))
    paper_mlm = read_identified(bert_labels(args.labels))
    bench = tofu_mini()
    samples = bench.forget
    assert [s.answer for s in samples] == [g.answer for g in gold]
    prompt = PromptSettings()
    settings = ModelSettings()
    base, tok, precision = load_model(settings)
    prepared = prepare(load_config())
    target, _, _ = load_model(settings, str(prepared.target))
    retain_model, _, _ = load_model(settings, str(prepared.retain))

    result: dict = {"gold": "forget01_gpt.jsonl (GPT-4o, the paper's)", "quality": {}, "seconds": {}}
    scorers = {
        "predictability": (
            Predictability(base, tok, precision, prompt),
            [0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99],
        ),
        "contrast": (Contrast(target, base, tok, precision, prompt, threshold=0.0), None),
        "contrast_oracle_retain": (
            Contrast(target, retain_model, tok, precision, prompt, threshold=0.0),
            None,
        ),
        "frequency": (Frequency(bench.retain, min_df=0.01), None),
    }
    scores = {}
    for name, (ident, _) in scorers.items():
        started = time.perf_counter()
        scores[name] = ident.word_scores(samples)
        result["seconds"][name] = round(time.perf_counter() - started, 2)
    # contrast: score = sigmoid(gain); a threshold t on the score is a gain of logit(t) nats
    contrast_grid = [1 / (1 + math.exp(-g)) for g in (-1, 0, 0.5, 1, 2, 3, 4, 6, 8)]
    freq_grid = [1 / (1 + r) for r in (0.02, 0.1, 0.25, 0.5, 1, 2, 4)]  # df <= r * min_df
    grids = {
        "predictability": scorers["predictability"][1],
        "contrast": contrast_grid,
        "contrast_oracle_retain": contrast_grid,
        "frequency": freq_grid,
    }
    started = time.perf_counter()
    ner = NamedEntities(load_spacy("en_core_web_sm")).identify(samples)
    result["seconds"]["ner"] = round(time.perf_counter() - started, 2)
    ner_chunks = NamedEntities(load_spacy("en_core_web_sm"), noun_chunks=True).identify(samples)
    content = ("PROPN", "NOUN", "NUM", "ADJ")
    ner_pos = NamedEntities(load_spacy("en_core_web_sm"), pos=content).identify(samples)
    for expand in (False, True):
        tag = "expanded_gold" if expand else "gold_as_shipped"
        table = {}
        for name, grid in grids.items():
            table[name] = tune_and_report(scores[name], samples, gold, grid, expand)
        labellings = (
            ("ner", ner),
            ("ner_noun_chunks", ner_chunks),
            ("ner_noun_chunks_drop_question_words", drop_question_words(ner_chunks)),
            ("ner_pos_content_words", ner_pos),
            ("ner_pos_content_words_drop_question_words", drop_question_words(ner_pos)),
            ("paper_mlm_labels", paper_mlm),
        )
        for name, labelled in labellings:
            held = [score_labels(labelled[HALVES[h]], gold, expand)["word_f1"] for h in HALVES]
            table[name] = {"word_f1_mean_held_out": round(sum(held) / 2, 4)}
        result["quality"][tag] = table
    # agreement of our offline default with the paper's discriminative labels
    from tokenforget.identify.identifiers import threshold_words

    pred = [threshold_words(s, sc, 0.5) for s, sc in zip(samples, scores["predictability"], strict=True)]
    result["agreement_with_paper_mlm_labels"] = {
        "predictability@0.5": round(score_labels(pred, paper_mlm)["word_f1"], 4),
        "paper_mlm_vs_gpt": round(score_labels(paper_mlm, gold)["word_f1"], 4),
    }
    contrast_best = [
        threshold_words(s, sc, 1 / (1 + math.exp(-1)))
        for s, sc in zip(samples, scores["contrast"], strict=True)
    ]
    union = combine(contrast_best, ner, "union")
    result["quality"]["union_contrast@1nat_ner"] = {
        "word_f1_all_40": round(score_labels(union, gold)["word_f1"], 4),
        "word_f1_all_40_expanded": round(score_labels(union, gold, True)["word_f1"], 4),
    }
    if not args.skip_speed:
        result["speed"] = speed(base, tok, precision, samples)
    result["command"] = "python benchmarks/identify_quality.py"
    result["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def speed(model, tok, precision, samples) -> dict:
    """Words/s: batched identifiers vs one word per forward, same data, same model."""
    from tokenforget.config import PromptSettings
    from tokenforget.data.encode import encode
    from tokenforget.identify.identifiers import MaskedLM, Predictability
    from tokenforget.identify.score import answer_words

    subset = samples[:12]
    n_words = sum(len(answer_words(s.answer)) for s in subset)
    started = time.perf_counter()
    Predictability(model, tok, precision, PromptSettings(), batch_size=16).word_scores(subset)
    batched = time.perf_counter() - started
    started = time.perf_counter()
    with torch.inference_mode():
        for s in subset:  # the naive loop: one forward per word over its left context + the word
            enc = encode(s, tok, PromptSettings())
            for w in answer_words(s.answer):
                upto = max(k for k, (a, b) in enumerate(enc.answer_offsets[:-1]) if a < w.end and b > w.start)
                ids = torch.tensor([enc.input_ids[: enc.prompt_len + upto + 1]])
                model(input_ids=ids).logits[0, -1].log_softmax(-1)
    naive = time.perf_counter() - started
    out = {
        "predictability": {
            "words": n_words,
            "batched_words_per_s": round(n_words / batched, 1),
            "one_word_per_forward_words_per_s": round(n_words / naive, 1),
            "speedup": round(naive / batched, 2),
        }
    }
    mlm, mlm_tok = random_roberta(tok)
    ident = MaskedLM(mlm, mlm_tok, batch_size=64)
    whitespace_words = sum(len(s.answer.split()) for s in subset)
    started = time.perf_counter()
    ident.word_scores(subset)
    batched = time.perf_counter() - started
    started = time.perf_counter()
    MaskedLM(mlm, mlm_tok, batch_size=1).word_scores(subset)
    ours_one_at_a_time = time.perf_counter() - started
    general = []
    started = time.perf_counter()
    with torch.inference_mode():
        for s in subset:  # the published loop (a fill-mask call per word): full logits, top-1 decoded
            for m in re.finditer(r"\S+", s.answer):
                text = f"{s.question} {s.answer[: m.start()]}{mlm_tok.mask_token}{s.answer[m.end() :]}"
                enc = mlm_tok(text, return_tensors="pt", truncation=True)
                logits = mlm(**enc).logits[0]
                at = (enc["input_ids"][0] == mlm_tok.mask_token_id).nonzero()[0, 0]
                top = logits[at].softmax(-1).topk(1).indices
                general.append(mlm_tok.decode(top).strip().lower() == s.answer[m.start() : m.end()].lower())
    naive = time.perf_counter() - started
    assert len(general) == whitespace_words
    out["mlm"] = {
        "model": "random RobertaForMaskedLM, distilroberta size (6 layers, 768 hidden)",
        "masked_variants": whitespace_words,
        "batched_words_per_s": round(whitespace_words / batched, 1),
        "one_word_per_forward_words_per_s": round(whitespace_words / naive, 1),
        "speedup": round(naive / batched, 2),
        "one_word_per_forward": "the published procedure's loop: one fill-mask forward per masked word, "
        "LM head at every position",
        "batching_alone": {
            "ours_one_variant_per_forward_words_per_s": round(whitespace_words / ours_one_at_a_time, 1),
            "speedup": round(ours_one_at_a_time / batched, 2),
            "note": "our identifier at batch size 1 already runs the LM head at the mask position only",
        },
    }
    return out


def random_roberta(tok):
    """A distilroberta-sized masked LM with random weights over the SmolLM2 vocabulary plus a mask token."""
    import copy

    from transformers import RobertaConfig, RobertaForMaskedLM

    mlm_tok = copy.deepcopy(tok)
    mlm_tok.add_special_tokens({"mask_token": "<mask>"})
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(mlm_tok),
        hidden_size=768,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
        pad_token_id=mlm_tok.pad_token_id,
    )
    return RobertaForMaskedLM(config).eval(), mlm_tok


if __name__ == "__main__":
    main()
