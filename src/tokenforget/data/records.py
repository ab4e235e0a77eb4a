"""Samples and the validation of every file a user gives us.

A sample is a question-answer pair (QA) or a raw text (then `question` is None and `answer` holds
the text). `spans` are character offsets into the answer marking unwanted words (UW). Reading a
file validates all of it first and raises one DataError listing every problem with its file, line,
field and fix; nothing downstream ever sees a half-valid file.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenforget.errors import DataError, DataIssue

MAX_ISSUES = 200


@dataclass(frozen=True, order=True)
class Span:
    """Half-open character range [start, end) into a sample's answer (or text)."""

    start: int
    end: int
    score: float | None = field(default=None, compare=False)  # identifier confidence in [0, 1]

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"start": self.start, "end": self.end}
        if self.score is not None:
            row["score"] = self.score
        return row


@dataclass
class Sample:
    """One forget/retain/eval item. `answer` is the text to learn or forget."""

    answer: str
    question: str | None = None
    spans: tuple[Span, ...] | None = None
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "text" if self.question is None else "qa"

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id}
        if self.question is None:
            row["text"] = self.answer
        else:
            row["question"] = self.question
            row["answer"] = self.answer
        if self.spans is not None:
            row["spans"] = [s.to_dict() for s in self.spans]
        row.update(self.meta)
        return row


def answer_words(answer: str) -> list[Span]:
    """The answer's words: its `\\w+` runs (the unit identifiers label and metrics score)."""
    return [Span(m.start(), m.end()) for m in re.finditer(r"\w+", answer)]


def word_spans(text: str, words: Iterable[str], ignore_case: bool = False) -> list[Span]:
    """Spans of *every* whole-word occurrence of each word in text (not only the first)."""
    flags = re.IGNORECASE if ignore_case else 0
    found: set[Span] = set()
    for word in words:
        word = word.strip()
        if not word:
            continue
        pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", flags)
        found.update(Span(m.start(), m.end()) for m in pattern.finditer(text))
    return sorted(found)


# ----------------------------------------------------------------------------- validation


class _Collector:
    def __init__(self, file: str):
        self.file = file
        self.issues: list[DataIssue] = []

    def add(self, line: int | None, fld: str | None, problem: str, fix: str) -> None:
        if len(self.issues) < MAX_ISSUES:
            self.issues.append(DataIssue(self.file, line, fld, problem, fix))


def _check_spans(raw: Any, text: str, line: int, issues: _Collector, fld: str) -> tuple[Span, ...] | None:
    if raw is None:
        return None
    if isinstance(raw, str):  # CSV cells hold the spans list as JSON
        try:
            raw = json.loads(raw) if raw.strip() else []
        except json.JSONDecodeError as exc:
            issues.add(
                line, "spans", f"is not valid JSON ({exc.msg})", 'write it as [{"start": 0, "end": 5}]'
            )
            return None
    if not isinstance(raw, list):
        issues.add(
            line, "spans", f"must be a list, got {type(raw).__name__}", 'use [{"start": 0, "end": 5}, ...]'
        )
        return None
    spans: list[Span] = []
    for k, item in enumerate(raw):
        name = f"spans[{k}]"
        if not isinstance(item, dict) or set(item) - {"start", "end", "text", "word", "score"}:
            issues.add(
                line,
                name,
                f"must be an object with start and end, got {item!r}",
                'use {"start": 0, "end": 5}',
            )
            continue
        start, end = item.get("start"), item.get("end")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
            issues.add(
                line,
                name,
                f"start and end must be integers, got {start!r}, {end!r}",
                "give character offsets as whole numbers",
            )
            continue
        if start > end:
            issues.add(line, name, f"is inverted (start {start} > end {end})", "swap start and end")
            continue
        if start == end:
            issues.add(
                line, name, f"is empty (start == end == {start})", "end is exclusive: end = start + length"
            )
            continue
        if start < 0 or end > len(text):
            issues.add(
                line,
                name,
                f"[{start}, {end}) is out of range for a {fld} of {len(text)} characters",
                f"offsets count characters of the {fld}, from 0 to {len(text)}",
            )
            continue
        score = item.get("score")
        if score is not None and (
            isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1
        ):
            issues.add(line, name, f"score must be a number in [0, 1], got {score!r}", "drop it or rescale")
            continue
        spans.append(Span(start, end, None if score is None else float(score)))
    return tuple(sorted(dict.fromkeys(spans)))


_STRING_FIELDS = ("question", "answer", "text")


def _row_to_sample(row: Any, line: int, issues: _Collector, index: int) -> Sample | None:
    if not isinstance(row, dict):
        issues.add(
            line,
            None,
            f"a row must be a JSON object, got {type(row).__name__}",
            'write one object per line: {"question": ..., "answer": ...}',
        )
        return None
    before = len(issues.issues)
    for name in _STRING_FIELDS:
        if name in row and not isinstance(row[name], str):
            issues.add(line, name, f"must be a string, got {type(row[name]).__name__}", "quote the value")
    has_qa = "question" in row or "answer" in row
    if has_qa and "text" in row:
        issues.add(
            line,
            "text",
            "a row has both 'text' and question/answer",
            "use question+answer for QA or text alone for raw text",
        )
    elif has_qa:
        for name in ("question", "answer"):
            if name not in row:
                issues.add(line, name, "is missing", "a QA row needs both 'question' and 'answer'")
    elif "text" not in row:
        issues.add(
            line,
            None,
            f"has neither question+answer nor text (fields: {sorted(row)})",
            "add 'question' and 'answer' (QA) or 'text' (raw text)",
        )
    if len(issues.issues) > before:
        return None
    fld = "answer" if has_qa else "text"
    body: str = row[fld]
    if not body.strip():
        issues.add(line, fld, "is blank", f"remove the row or give it a non-empty {fld}")
        return None
    if has_qa and not row["question"].strip():
        issues.add(line, "question", "is blank", "give the question, or use 'text' for raw text")
        return None
    spans = _check_spans(row.get("spans"), body, line, issues, fld)
    if len(issues.issues) > before:
        return None
    ident = row.get("id")
    meta = {k: v for k, v in row.items() if k not in {"question", "answer", "text", "spans", "id"}}
    return Sample(
        answer=body,
        question=row["question"] if has_qa else None,
        spans=spans,
        id=str(ident) if ident is not None else str(index),
        meta=meta,
    )


def _decode_lines(raw: bytes, issues: _Collector) -> list[str] | None:
    try:
        return raw.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        pass
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            issues.add(
                number,
                None,
                f"byte 0x{line[exc.start]:02x} at column {exc.start + 1} is not UTF-8",
                "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 in > out)",
            )
    return None


def _rows_from_json_lines(lines: list[str], issues: _Collector) -> list[tuple[int, Any]]:
    rows = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            rows.append((number, json.loads(text)))
        except json.JSONDecodeError as exc:
            issues.add(
                number,
                None,
                f"is not valid JSON: {exc.msg} at column {exc.colno}",
                "each line must be one complete JSON object",
            )
    return rows


def _rows_from_json_array(text: str, issues: _Collector) -> list[tuple[int, Any]]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        issues.add(
            exc.lineno,
            None,
            f"is not valid JSON: {exc.msg} at column {exc.colno}",
            "fix the JSON array, or write one object per line (JSONL)",
        )
        return []
    # Line numbers of array elements are not tracked by json; report the element's position.
    return [(k + 1, item) for k, item in enumerate(items)]


def _rows_from_csv(text: str, issues: _Collector) -> list[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        return []
    rows = []
    for record in reader:
        line = reader.line_num
        if None in record:
            issues.add(line, None, "has more cells than the header", "quote cells that contain commas")
            continue
        rows.append((line, {k: v for k, v in record.items() if v is not None and k}))
    return rows


def read_samples(path: str | Path) -> list[Sample]:
    """Read and validate a JSONL/JSON/CSV file of QA pairs or texts; raise DataError listing all problems."""
    path = Path(path)
    issues = _Collector(str(path))
    if not path.is_file():
        raise DataError([DataIssue(str(path), None, None, "does not exist", "check the path")])
    lines = _decode_lines(path.read_bytes(), issues)
    if lines is None:
        raise DataError(issues.issues)
    text = "\n".join(lines)
    if not text.strip():
        raise DataError(
            [
                DataIssue(
                    str(path),
                    None,
                    None,
                    "is empty (no rows)",
                    "add one row per sample: JSONL objects or CSV with a header",
                )
            ]
        )
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _rows_from_csv(text, issues)
    elif suffix in {".jsonl", ".json"}:
        is_array = text.lstrip().startswith("[")
        rows = _rows_from_json_array(text, issues) if is_array else _rows_from_json_lines(lines, issues)
    else:
        raise DataError(
            [
                DataIssue(
                    str(path),
                    None,
                    None,
                    f"has an unknown extension {suffix!r}",
                    "use .jsonl (one JSON object per line), .json or .csv",
                )
            ]
        )
    samples = samples_from_rows(rows, issues)
    if not issues.issues and not samples:
        issues.add(None, None, "holds no rows", "add at least one sample")
    if issues.issues:
        raise DataError(issues.issues)
    return samples


def samples_from_rows(rows: list[tuple[int, Any]], issues: _Collector | str) -> list[Sample]:
    """Validate (line, row) pairs into samples. Raises DataError when given a file name."""
    collector = issues if isinstance(issues, _Collector) else _Collector(issues)
    samples = []
    for index, (line, row) in enumerate(rows):
        sample = _row_to_sample(row, line, collector, index)
        if sample is not None:
            samples.append(sample)
    kinds = {s.kind for s in samples}
    if len(kinds) > 1:
        first_text = next(line for (line, _), s in zip(rows, samples, strict=False) if s.kind == "text")
        collector.add(
            first_text,
            None,
            "mixes raw-text rows with QA rows",
            "split QA pairs and raw texts into two files",
        )
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        collector.add(None, "id", f"id {dup!r} is used by more than one row", "give every row a unique id")
    if isinstance(issues, str) and collector.issues:
        raise DataError(collector.issues)
    return samples


def read_json_file(path: Path, fix: str) -> Any:
    """One JSON document; a missing or unreadable file is a DataError that says `fix`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError([DataIssue(str(path), None, None, "is missing", fix)]) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise DataError([DataIssue(str(path), line, None, f"is not valid JSON ({exc})", fix)]) from exc


def describe(samples: list[Sample]) -> dict[str, Any]:
    """What a validated file holds (for `tokenforget data check`)."""
    extra = sorted({k for s in samples for k in s.meta})
    with_spans = [s for s in samples if s.spans is not None]
    return {
        "rows": len(samples),
        "kind": samples[0].kind if samples else None,
        "fields": (["question", "answer"] if samples and samples[0].kind == "qa" else ["text"]) + extra,
        "rows_with_spans": len(with_spans),
        "spans": sum(len(s.spans or ()) for s in with_spans),
        "mean_answer_chars": round(sum(len(s.answer) for s in samples) / max(len(samples), 1), 1),
    }
