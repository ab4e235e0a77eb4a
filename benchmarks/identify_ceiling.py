"""How far can an offline identifier get against the paper's GPT-4o labels? Two measurements.

    .venv/bin/python benchmarks/identify_ceiling.py [--out benchmarks/results/identify_ceiling.json]

1. A learned word classifier on every offline signal we have, fitted on one forget01 author's gold
   labels and reported on the other (then the other way round), like the threshold tuning of
   identify_quality.py. Per `\\w+` answer word: spaCy en_core_web_sm part of speech, dependency
   label, inside a named entity, inside a noun chunk, noun-chunk head, in the question, capitalised
   mid-answer, stop word, relative position, the base model's 1 - p(word | left context) (the
   predictability identifier's score) and the log document frequency in TOFU-mini's retain answers.
   Models: scikit-learn logistic regression (C = 1 and 0.3) and gradient-boosted trees; the decision
   threshold is tuned on the training author.
2. How consistent the gold labels are with themselves: a dictionary that labels a word type (lower
   case) UW iff most of its gold occurrences are UW, fitted on all 40 answers and scored on the same
   40 (memorisation, an upper bound for any identifier that labels a word by its type alone), and
   fitted on one author and scored on the other.

Word F1 is `identify score`'s (gold as shipped).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from published import add_labels_argument, gpt_labels

REPO = Path(__file__).resolve().parents[1]
AUTHORS = {"author1": range(0, 20), "author2": range(20, 40)}
POS = ("PROPN", "NOUN", "ADJ", "NUM", "VERB", "ADV", "ADP", "DET", "PRON", "AUX", "CCONJ", "PART", "SCONJ")
DEP = ("nsubj", "dobj", "pobj", "amod", "compound", "conj", "appos", "attr", "ROOT", "poss", "acomp", "nmod")


def word_features(sample, doc, predictability, df) -> list[list[float]]:
    from tokenforget.identify.score import answer_words

    asked = {w.lower() for w in re.findall(r"\w+", sample.question or "")}
    entities = [(e.start_char, e.end_char) for e in doc.ents]
    chunks = [(c.start_char, c.end_char, c.root.idx) for c in doc.noun_chunks]
    words = answer_words(sample.answer)
    rows = []
    for k, (w, (_, unpredictable)) in enumerate(zip(words, predictability, strict=True)):
        token = next((t for t in doc if t.idx <= w.start < t.idx + len(t.text)), None)
        text = sample.answer[w.start : w.end]
        row = [float(token is not None and token.pos_ == p) for p in POS]
        row += [float(token is not None and token.dep_ == d) for d in DEP]
        row += [
            float(any(a <= w.start < b for a, b in entities)),
            float(any(a <= w.start < b for a, b, _ in chunks)),
            float(any(root == w.start for _, _, root in chunks)),
            float(text.lower() in asked),
            float(text[:1].isupper() and w.start > 0),
            float(token is not None and token.is_stop),
            k / len(words),
            unpredictable,
            math.log(df.get(text.lower(), 0.0) + 1e-3),
        ]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    add_labels_argument(parser)
    parser.add_argument("--out", default="benchmarks/results/identify_ceiling.json")
    args = parser.parse_args()

    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    from tokenforget.config import ModelSettings, PromptSettings
    from tokenforget.data import Span, tofu_mini
    from tokenforget.identify import read_identified
    from tokenforget.identify.identifiers import Frequency, Predictability, labelled
    from tokenforget.identify.registry import load_spacy
    from tokenforget.identify.score import answer_words, score_labels
    from tokenforget.models import load_model

    gold = read_identified(gpt_labels(args.labels))
    bench = tofu_mini()
    samples = bench.forget
    base, tok, precision = load_model(ModelSettings())
    predictability = Predictability(base, tok, precision, PromptSettings()).word_scores(samples)
    df = Frequency(bench.retain).document_frequency()
    docs = list(load_spacy("en_core_web_sm").pipe([s.answer for s in samples]))
    features, is_uw, owner, spans = [], [], [], []
    for i, (s, g, doc) in enumerate(zip(samples, gold, docs, strict=True)):
        for w, row in zip(answer_words(s.answer), word_features(s, doc, predictability[i], df), strict=True):
            features.append(row)
            is_uw.append(int(any(x.start < w.end and x.end > w.start for x in g.spans or ())))
            owner.append(i)
            spans.append(w)
    x, y, owner_arr = np.array(features), np.array(is_uw), np.array(owner)

    def labelled_by(chosen: np.ndarray, rows: range) -> list:
        picked = defaultdict(list)
        for j in np.flatnonzero(chosen):
            picked[owner[j]].append(Span(spans[j].start, spans[j].end))
        return [labelled(samples[i], picked[i]) for i in rows]

    def f1(chosen: np.ndarray, rows: range) -> dict:
        result = score_labels(labelled_by(chosen, rows), gold[rows.start : rows.stop])
        return {k: round(result[k], 4) for k in ("word_precision", "word_recall", "word_f1")}

    classifiers = {
        "logistic_regression_C1": lambda: LogisticRegression(C=1.0, max_iter=5000),
        "logistic_regression_C0.3": lambda: LogisticRegression(C=0.3, max_iter=5000),
        "gradient_boosting": lambda: GradientBoostingClassifier(
            n_estimators=100, max_depth=2, random_state=0
        ),
    }
    out: dict = {"learned_classifier": {}, "gold_self_consistency": {}}
    for name, make in classifiers.items():
        entry, held = {}, []
        for fit, report in (("author1", "author2"), ("author2", "author1")):
            in_fit = np.isin(owner_arr, list(AUTHORS[fit]))
            in_report = np.isin(owner_arr, list(AUTHORS[report]))
            model = make().fit(x[in_fit], y[in_fit])
            p_uw = model.predict_proba(x)[:, 1]
            grid = [round(t, 2) for t in np.linspace(0.2, 0.8, 13)]
            best = max(grid, key=lambda t: f1(in_fit & (p_uw >= t), AUTHORS[fit])["word_f1"])
            scored = f1(in_report & (p_uw >= best), AUTHORS[report])
            entry[f"fit_on_{fit}"] = {"threshold": best, **scored}
            held.append(scored["word_f1"])
        entry["word_f1_mean_held_out"] = round(sum(held) / 2, 4)
        out["learned_classifier"][name] = entry

    def dictionary(fit_rows: range) -> dict[str, bool]:
        votes: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for j, i in enumerate(owner):
            if i in fit_rows:
                word = samples[i].answer[spans[j].start : spans[j].end].lower()
                votes[word][0] += int(y[j])
                votes[word][1] += 1
        return {w: uw * 2 > n for w, (uw, n) in votes.items()}

    def by_dictionary(words: dict[str, bool]) -> np.ndarray:
        texts = [samples[i].answer[w.start : w.end].lower() for i, w in zip(owner, spans, strict=True)]
        return np.array([words.get(t, False) for t in texts])

    everyone = range(0, 40)
    out["gold_self_consistency"]["dictionary_fit_and_scored_on_all_40"] = f1(
        by_dictionary(dictionary(everyone)), everyone
    )
    for fit, report in (("author1", "author2"), ("author2", "author1")):
        chosen = by_dictionary(dictionary(AUTHORS[fit])) & np.isin(owner_arr, list(AUTHORS[report]))
        out["gold_self_consistency"][f"dictionary_fit_on_{fit}_scored_on_{report}"] = f1(
            chosen, AUTHORS[report]
        )
    out["gold_uw_word_share"] = round(float(y.mean()), 4)
    out["command"] = "python benchmarks/identify_ceiling.py"
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
