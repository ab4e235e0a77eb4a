"""Identifiers on real models, the identified-set formats, and `identify score` against hand values."""

import json
import math

import pytest
import torch

from conftest import DISCRIMINATIVE_LABELS, GENERATIVE_LABELS
from tokenforget.config import ModelSettings, PromptSettings
from tokenforget.data.identified import published_spans
from tokenforget.data.records import Sample, Span
from tokenforget.identify import read_identified, write_identified
from tokenforget.identify.identifiers import (
    Contrast,
    Frequency,
    MaskedLM,
    Predictability,
    answer_token_logps,
    combine,
)
from tokenforget.identify.score import jaccard, score_labels

GPT = GENERATIVE_LABELS  # the layout of the paper's GPT-4o file
BERT = DISCRIMINATIVE_LABELS  # the layout of the paper's distilroberta file


# ----------------------------------------------------------------------------- formats


def test_published_generative_layout_gives_the_target_spans_and_expands_on_request():
    row = json.loads(GPT.read_text().splitlines()[0])
    spans = published_spans(row)
    assert [(s.start, s.end) for s in spans] == [(21, 31), (74, 77), (81, 90), (100, 124)]
    assert [row["answer"][s.start : s.end] for s in spans] == [
        "fictitious",
        "8th",
        "September",
        "Basil Mahfouz Al-Kuwaiti",
    ]
    answer = "Kuwait is small. He loves Kuwait."
    row = {"answer": answer, "target_words": json.dumps([{"word": "Kuwait", "start": 0, "end": 6}])}
    assert [(s.start, s.end) for s in published_spans(row)] == [(0, 6)]
    assert [(s.start, s.end) for s in published_spans(row, expand=True)] == [(0, 6), (26, 32)]


def test_published_discriminative_layout_marks_every_word_outside_common_words():
    rows = [json.loads(line) for line in BERT.read_text().splitlines()]
    assert [
        answer[s.start : s.end] for answer, s in [(rows[1]["answer"], s) for s in published_spans(rows[1])]
    ] == [
        "Author",
        "Basil",
        "Mahfouz",
        "Al",
        "Kuwaiti",
        "male",
    ]  # common_words holds "is" alone: every other word is UW
    third = published_spans(rows[2])
    words = [rows[2]["answer"][s.start : s.end] for s in third]
    assert "was" not in words and "in" not in words and "City" in words and "Basil" in words
    samples = read_identified(BERT)
    assert len(samples) == 40 and all(s.spans for s in samples[:3])


def test_our_format_round_trip_is_lossless(tmp_path):
    samples = read_identified(GPT)
    samples[0] = Sample(
        answer=samples[0].answer,
        question=samples[0].question,
        spans=(Span(4, 8, 0.75), Span(100, 124)),
        id=samples[0].id,
        meta={"word_scores": [{"start": 0, "end": 3, "score": 0.1}], "note": "kept"},
    )
    path = tmp_path / "identified.jsonl"
    write_identified(path, samples, "test", {"threshold": 0.5})
    again = read_identified(path)
    assert [(s.question, s.answer, s.spans, s.id) for s in again] == [
        (s.question, s.answer, s.spans, s.id) for s in samples
    ]
    assert [sp.score for sp in again[0].spans] == [0.75, None]
    assert again[0].meta["word_scores"] == samples[0].meta["word_scores"] and again[0].meta["note"] == "kept"
    row = json.loads(path.read_text().splitlines()[0])
    assert row["identifier"] == "test" and row["settings"] == {"threshold": 0.5}
    assert row["spans"][1] == {"start": 100, "end": 124, "text": "Basil Mahfouz Al-Kuwaiti"}
    write_identified(tmp_path / "twice.jsonl", again, "test", {"threshold": 0.5})
    assert (tmp_path / "twice.jsonl").read_text() == path.read_text()


def test_published_layout_round_trip_is_lossless(tmp_path):
    from tokenforget.identify import write_published

    for source in (GPT, BERT):
        samples = read_identified(source)
        write_published(tmp_path / "p.jsonl", samples)
        write_published(tmp_path / "folder", samples, folder=True)
        for again in (read_identified(tmp_path / "p.jsonl"), read_identified(tmp_path / "folder")):
            assert [(s.question, s.answer, s.spans) for s in again] == [
                (s.question, s.answer, s.spans) for s in samples
            ]
    row = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[1])
    assert json.loads(row["target_words"])[0] == {"word": "Author", "start": 0, "end": 6}
    assert row["common_words"] == [
        json.dumps({"word": "-", "start": 23, "end": 24}),
        json.dumps({"word": "is", "start": 32, "end": 34}),
        json.dumps({"word": ".", "start": 39, "end": 40}),
    ]


def test_save_to_disk_folder_in_the_published_layout(tmp_path):
    import datasets

    rows = [json.loads(line) for line in GPT.read_text().splitlines()[:3]]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    from_folder = read_identified(tmp_path / "ds")
    from_jsonl = read_identified(GPT)[:3]
    assert [(s.answer, s.spans) for s in from_folder] == [(s.answer, s.spans) for s in from_jsonl]


# ----------------------------------------------------------------------------- scoring


def qa(answer, spans, **meta):
    return Sample(answer=answer, question="q?", spans=tuple(spans), id=answer[:8], meta=meta)


def test_score_word_level_micro_f1_by_hand():
    # words: [Basil, was, born, in, Kuwait, City] and [He, wrote, Dune]
    gold = [
        qa("Basil was born in Kuwait City", [Span(0, 5), Span(18, 29)]),
        qa("He wrote Dune", [Span(9, 13)]),
    ]
    pred = [qa("Basil was born in Kuwait City", [Span(0, 5), Span(6, 9)]), qa("He wrote Dune", [Span(9, 13)])]
    result = score_labels(pred, gold)
    # tp: Basil, Dune (2); fp: was (1); fn: Kuwait, City (2)
    assert result["word_precision"] == pytest.approx(2 / 3)
    assert result["word_recall"] == pytest.approx(2 / 4)
    assert result["word_f1"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    assert result["words"] == 9 and result["gold_uw_words"] == 4 and result["pred_uw_words"] == 3
    assert "word_auroc" not in result  # no scores in the prediction
    assert result["per_sample"][1]["word_f1"] == 1.0


def test_score_auroc_from_word_scores_and_expand_gold(smollm_tokenizer):
    gold = [qa("Kuwait is far. Kuwait is hot", [Span(0, 6)])]
    scores = [0.9, 0.2, 0.1, 0.8, 0.3, 0.4]  # Kuwait is far Kuwait is hot
    words = [(0, 6), (7, 9), (10, 13), (15, 21), (22, 24), (25, 28)]
    table = [{"start": s, "end": e, "score": v} for (s, e), v in zip(words, scores, strict=True)]
    pred = [qa("Kuwait is far. Kuwait is hot", [Span(0, 6), Span(15, 21)], word_scores=table)]
    shipped = score_labels(pred, gold)
    assert shipped["word_precision"] == 0.5 and shipped["word_recall"] == 1.0
    # gold = {word 0}; its score 0.9 beats all 5 others: AUROC 1
    assert shipped["word_auroc"] == 1.0
    expanded = score_labels(pred, gold, expand_gold=True, tokenizer=smollm_tokenizer)
    assert expanded["word_f1"] == 1.0 and expanded["token_f1"] == 1.0
    # gold = {0, 3}: scores 0.9, 0.8 vs 0.2, 0.1, 0.3, 0.4 -> AUROC 1, AP 1
    assert expanded["word_auroc"] == 1.0 and expanded["word_average_precision"] == 1.0


def test_scoring_the_two_fixture_layouts_against_each_other():
    """The fixtures' rules make every generative-layout UW word (a content word the question does not
    give) a discriminative-layout UW word (any content word) too, so scored as prediction against
    gold the latter has recall 1 and precision below 1. (The paper's own two files give word F1
    about 0.45: `benchmarks/identify_quality.py --labels DIR` reads them.)"""
    result = score_labels(read_identified(BERT), read_identified(GPT))
    assert result["samples"] == 40
    assert result["word_recall"] == 1.0 and 0.2 < result["word_precision"] < 1.0


def test_jaccard_and_combine():
    a = [qa("Basil was born in Kuwait", [Span(0, 5), Span(18, 24)])]
    b = [qa("Basil was born in Kuwait", [Span(0, 5), Span(6, 9)])]
    assert jaccard(a, b) == pytest.approx(1 / 3)  # {Basil, Kuwait} vs {Basil, was}
    union = combine(a, b, "union")[0]
    inter = combine(a, b, "intersection")[0]
    assert [union.answer[s.start : s.end] for s in union.spans] == ["Basil", "was", "Kuwait"]
    assert [inter.answer[s.start : s.end] for s in inter.spans] == ["Basil"]


# ----------------------------------------------------------------------------- identifiers


@pytest.fixture(scope="module")
def smollm(smollm_dir):
    from tokenforget.models import load_model

    return load_model(ModelSettings(precision="fp32"), str(smollm_dir))


@pytest.mark.slow
def test_predictability_on_smollm2_marks_the_unpredictable_name_not_the_known_fact(smollm):
    model, tok, precision = smollm
    samples = [
        Sample(answer="The capital of France is Paris.", question="What is the capital of France?", id="a"),
        Sample(answer="Her name is Zyrtellia Quombarok.", question="Who wrote the novel?", id="b"),
    ]
    ident = Predictability(model, tok, precision, PromptSettings(), threshold=0.5, batch_size=2)
    out = ident.identify(samples)
    uw = [[s.answer[x.start : x.end] for x in s.spans] for s in out]
    assert "Paris" not in uw[0] and "capital" not in uw[0]
    assert "Zyrtellia" in uw[1] and "Quombarok" in uw[1]
    # one batched forward equals one sample at a time, and repeats exactly
    one_by_one = Predictability(model, tok, precision, PromptSettings(), 0.5, batch_size=1).word_scores(
        samples
    )
    for x, y in zip(ident.word_scores(samples), one_by_one, strict=True):
        assert [w for w, _ in x] == [w for w, _ in y]
        assert [s for _, s in x] == pytest.approx([s for _, s in y], abs=1e-5)
    assert ident.word_scores(samples) == ident.word_scores(samples)
    # the score is 1 - p(word): recompute "Paris" by hand from a plain forward
    prompt = tok.apply_chat_template(
        [{"role": "system", "content": ""}, {"role": "user", "content": samples[0].question}],
        tokenize=False,
        add_generation_prompt=True,
    )
    before = tok(prompt + "The capital of France is", add_special_tokens=False)["input_ids"]
    paris = tok(prompt + "The capital of France is Paris", add_special_tokens=False)["input_ids"][
        len(before) :
    ]
    with torch.no_grad():
        logp = model(torch.tensor([before + paris])).logits[0].log_softmax(-1)
    by_hand = sum(float(logp[len(before) - 1 + k, t]) for k, t in enumerate(paris))
    score = dict((samples[0].answer[w.start : w.end], s) for w, s in ident.word_scores(samples)[0])["Paris"]
    assert score == pytest.approx(1 - math.exp(by_hand), abs=1e-4)


def test_contrast_scores_the_log_prob_gain_per_word(tiny_llama_dir, tmp_path, smollm_tokenizer):
    from conftest import make_tiny_llama
    from tokenforget.models import load_model

    other = make_tiny_llama(tmp_path / "other", smollm_tokenizer, seed=1)
    model, tok, precision = load_model(ModelSettings(precision="fp32"), str(tiny_llama_dir))
    reference, _, _ = load_model(ModelSettings(precision="fp32"), str(other))
    samples = [Sample(answer="Basil was born in Kuwait City.", question="Where was Basil born?", id="a")]
    same = Contrast(model, model, tok, precision, threshold=1.0)
    assert all(s == pytest.approx(1 / (1 + math.e)) for _, s in same.word_scores(samples)[0])  # gain 0
    assert same.identify(samples)[0].spans == ()
    ident = Contrast(model, reference, tok, precision, threshold=0.0)
    scores = ident.word_scores(samples)[0]
    ((offsets, a),) = answer_token_logps(model, tok, samples, PromptSettings(), precision, 4)
    ((_, b),) = answer_token_logps(reference, tok, samples, PromptSettings(), precision, 4)
    kuwait = next(k for k, (w, _) in enumerate(scores) if samples[0].answer[w.start : w.end] == "Kuwait")
    word = scores[kuwait][0]
    tokens = [k for k, (s, e) in enumerate(offsets) if e > s and s < word.end and e > word.start]
    gain = float((a - b)[tokens].sum())
    assert scores[kuwait][1] == pytest.approx(1 / (1 + math.exp(-gain)), abs=1e-6)
    labelled = ident.identify(samples)[0]
    assert {(s.start, s.end) for s in labelled.spans} == {(w.start, w.end) for w, sc in scores if sc >= 0.5}


@pytest.fixture
def rigged_bert(bert_tokenizer):
    """A tiny random BERT whose MLM head always predicts 'the' (a huge bias on that token)."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(bert_tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=256,
    )
    model = BertForMaskedLM(config).eval()
    the = bert_tokenizer.convert_tokens_to_ids("the")
    with torch.no_grad():
        model.cls.predictions.bias.zero_()
        model.cls.predictions.bias[the] = 50.0
    return model, bert_tokenizer


def test_mlm_follows_the_published_procedure_on_a_rigged_bert(rigged_bert):
    model, tok = rigged_bert
    samples = [
        Sample(
            answer="the author was born in the city of paris.", question="where was the author born?", id="a"
        ),
        Sample(answer="The novel won the prize", question="what won?", id="b"),
    ]
    ident = MaskedLM(model, tok, top_k=1, batch_size=64)
    out = ident.identify(samples)
    uw = [[s.answer[x.start : x.end] for x in o.spans] for s, o in zip(samples, out, strict=True)]
    # every 'the' is recovered (case-insensitive) -> general; every other whitespace word is UW,
    # with its punctuation ("paris." is one whitespace word, as published)
    assert uw[0] == ["author", "was", "born", "in", "city", "of", "paris."]
    assert uw[1] == ["novel", "won", "prize"]
    # all masked variants in one batch == one variant per forward
    single = MaskedLM(model, tok, top_k=1, batch_size=1).word_scores(samples)
    assert single == ident.word_scores(samples)
    # threshold: 'the' has p ~ 1 here, so even a 0.99 threshold keeps it general
    strict = MaskedLM(model, tok, top_k=1, threshold=0.99).identify(samples)
    assert [len(s.spans) for s in strict] == [7, 3]
    # the head at the mask positions only == the full forward's logits there
    enc = tok(["where was the [MASK] born?", "the [MASK] won"], return_tensors="pt", padding=True)
    where = (enc["input_ids"] == tok.mask_token_id).nonzero()
    with torch.no_grad():
        full = model(**enc).logits[where[:, 0], where[:, 1]]
        assert torch.allclose(ident.mask_logits(dict(enc), where), full, atol=1e-5)


def test_frequency_identifier_by_hand():
    retain = [
        Sample(answer=a, question="q", id=str(k))
        for k, a in enumerate(["he was born", "she was here", "x y"])
    ]
    ident = Frequency(retain, min_df=0.5)
    sample = Sample(answer="Basil was born", question="q", id="s")
    scores = dict((sample.answer[w.start : w.end], s) for w, s in ident.word_scores([sample])[0])
    # df: was 2/3, born 1/3, basil 0 -> score 1 / (1 + df / 0.5)
    assert scores == pytest.approx(
        {"Basil": 1.0, "was": 1 / (1 + (2 / 3) / 0.5), "born": 1 / (1 + (1 / 3) / 0.5)}
    )
    labelled = ident.identify([sample])[0]
    assert [sample.answer[s.start : s.end] for s in labelled.spans] == ["Basil", "born"]


def test_drop_question_words_keeps_only_words_that_answer():
    from tokenforget.identify.identifiers import drop_question_words

    sample = Sample(
        answer="Basil Mahfouz was born in Kuwait City.",
        question="Where was Basil Mahfouz born?",
        spans=(Span(0, 13, 0.9), Span(26, 37)),
        id="a",
        meta={"word_scores": [{"start": 0, "end": 5, "score": 0.9}, {"start": 26, "end": 32, "score": 0.8}]},
    )
    (out,) = drop_question_words([sample])
    assert [sample.answer[s.start : s.end] for s in out.spans] == ["Kuwait", "City"]
    assert out.meta["word_scores"][0]["score"] == 0.0 and out.meta["word_scores"][1]["score"] == 0.8


def test_ner_marks_entities(tmp_path):
    pytest.importorskip("spacy")
    from tokenforget.identify.identifiers import NamedEntities
    from tokenforget.identify.registry import load_spacy

    ident = NamedEntities(load_spacy("en_core_web_sm"), noun_chunks=True)
    sample = Sample(
        answer="Basil Mahfouz Al-Kuwaiti was born in Kuwait City in 1956.", question="Where?", id="a"
    )
    (out,) = ident.identify([sample])
    marked = [sample.answer[s.start : s.end] for s in out.spans]
    assert any("Kuwait City" in m for m in marked) and any("1956" in m for m in marked)
    assert not any(m in ("was", "born", "in") for m in marked)
    (pos,) = NamedEntities(load_spacy("en_core_web_sm"), pos=("NUM",)).identify(
        [Sample(answer="He wrote 12 novels.", question="How many?", id="b")]
    )
    assert [pos.answer[s.start : s.end] for s in pos.spans] == ["12"]


# ----------------------------------------------------------------------------- cache


def test_model_identifier_labels_are_cached_by_model_data_and_settings(tmp_path, monkeypatch, tiny_llama_dir):
    import os
    import shutil

    from tokenforget.config import load_config
    from tokenforget.identify import run as identify_run

    monkeypatch.setenv("TOKENFORGET_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    forget = tmp_path / "forget.jsonl"
    rows = [
        {"id": "a", "question": "Who wrote it?", "answer": "Zyrtellia Quombarok wrote it in Paris."},
        {"id": "b", "question": "Where was she born?", "answer": "She was born in Oslo."},
    ]
    forget.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def config(*extra: str):
        return load_config(overrides=[f"model.name={model}", "model.precision=fp32", *extra])

    first = identify_run.identify_file(config(), forget, tmp_path / "one.jsonl")
    assert "cached" not in first
    assert len(list((tmp_path / "cache" / "identified").glob("predictability-*.jsonl"))) == 1

    def no_model(*args, **kwargs):
        raise AssertionError("a cached labelling must not load the identifier's model")

    monkeypatch.setattr(identify_run, "build", no_model)
    second = identify_run.identify_file(config(), forget, tmp_path / "two.jsonl")
    assert second["cached"] and second["uw_spans"] == first["uw_spans"]
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
    # anything that shapes the labels is a miss: a setting, the data, the model's weights
    with pytest.raises(AssertionError, match="must not load"):
        identify_run.identify_file(config("identify.threshold=0.9"), forget, tmp_path / "three.jsonl")
    forget.write_text("".join(json.dumps(r) + "\n" for r in rows[:1]))
    with pytest.raises(AssertionError, match="must not load"):
        identify_run.identify_file(config(), forget, tmp_path / "three.jsonl")
    forget.write_text("".join(json.dumps(r) + "\n" for r in rows))
    weights = model / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(AssertionError, match="must not load"):
        identify_run.identify_file(config(), forget, tmp_path / "three.jsonl")
