"""Writes the two label fixtures of this folder from the bundled TOFU-mini forget set (MIT).

The published TIF labels (GPT-4o and distilroberta) carry no licence, so the repository holds
labels of its own in the same two layouts instead, made by a transparent rule:

- `forget01_generative_layout.jsonl` (the generative identifier's layout): `target_words` is a JSON
  *string* holding a list of `{word, start, end}`; `common_words` a list of JSON strings, one word
  each. Targets are runs of content words of the answer that its question does not already give
  (numbers count; stop words never do), joined over single spaces and hyphens, and, like the
  published file, placed at their first occurrence only.
- `forget01_discriminative_layout.jsonl` (the masked-LM identifier's layout): only `common_words`,
  here the answer's stop words; every other answer word is UW.

Run `python tests/data/labels/make_label_fixtures.py` to write them again (the output is stable).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

STOP = set(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "from",
        "by",
        "with",
        "and",
        "or",
        "but",
        "as",
        "is",
        "was",
        "were",
        "be",
        "been",
        "being",
        "are",
        "has",
        "have",
        "had",
        "his",
        "her",
        "he",
        "she",
        "it",
        "its",
        "their",
        "they",
        "them",
        "this",
        "that",
        "these",
        "those",
        "which",
        "who",
        "whom",
        "what",
        "when",
        "where",
        "how",
        "not",
        "no",
        "also",
        "into",
        "about",
        "than",
        "then",
        "there",
        "such",
        "other",
        "more",
        "most",
        "some",
        "any",
        "each",
        "both",
        "one",
    ]
)
TOKEN = re.compile(r"\w+|[^\w\s]")


def _rows() -> list[dict]:
    ref = resources.files("tokenforget") / "benchmark_data" / "tofu_mini" / "forget10_perturbed.json"
    rows = [json.loads(line) for line in ref.read_text().splitlines()]
    return [{"question": r["question"], "answer": r["answer"]} for r in rows[-40:]]


def _word(text: str, start: int, end: int) -> str:
    return json.dumps({"word": text[start:end], "start": start, "end": end})


def _targets(question: str, answer: str) -> list[tuple[int, int]]:
    given = {w.lower() for w in TOKEN.findall(question)}
    keep = [
        (m.start(), m.end())
        for m in re.finditer(r"\w+", answer)
        if m.group().lower() not in STOP and m.group().lower() not in given
    ]
    runs: list[list[int]] = []
    for start, end in keep:
        if runs and answer[runs[-1][1] : start] in (" ", "-"):
            runs[-1][1] = end
        else:
            runs.append([start, end])
    first: dict[str, tuple[int, int]] = {}
    for start, end in runs:  # first occurrence only, as the published generative file does
        text = answer[start:end]
        first.setdefault(text, (answer.index(text), answer.index(text) + len(text)))
    return sorted(set(first.values()))


def generative_row(question: str, answer: str) -> dict:
    targets = _targets(question, answer)
    covered = lambda s, e: any(a <= s and e <= b for a, b in targets)  # noqa: E731
    common = [_word(answer, m.start(), m.end()) for m in TOKEN.finditer(answer) if not covered(*m.span())]
    target_words = json.dumps([json.loads(_word(answer, s, e)) for s, e in targets])
    return {"question": question, "answer": answer, "target_words": target_words, "common_words": common}


def discriminative_row(question: str, answer: str) -> dict:
    common = [
        _word(answer, m.start(), m.end()) for m in re.finditer(r"\w+", answer) if m.group().lower() in STOP
    ]
    return {"question": question, "answer": answer, "common_words": common}


def main() -> None:
    here = Path(__file__).resolve().parent
    rows = _rows()
    for name, make in (("generative", generative_row), ("discriminative", discriminative_row)):
        lines = [json.dumps(make(r["question"], r["answer"])) for r in rows]
        (here / f"forget01_{name}_layout.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
