"""The identified-set format, and the TIF paper's published layout.

Ours (`identified.jsonl`) is an ordinary data file: one JSON object per line with `question`,
`answer`, `spans` = UW character ranges `[{start, end, text, score?}]` into the answer, plus
`identifier` and `settings`; `read_samples` reads it like any forget set.

The paper's layout (JSONL, or the `save_to_disk` folder it ships): `target_words` is a JSON *string*
holding a list of `{word, start, end}` (UW), `common_words` a list of JSON strings, one
`{word, start, end}` each (GW). A row without `target_words` means UW = every answer word (a `\\w+`
run) that overlaps no common word. Targets were placed at their first occurrence only;
`expand=True` also marks every later whole-word occurrence.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tokenforget.data.records import Sample, Span, answer_words, read_samples, samples_from_rows, word_spans
from tokenforget.errors import DataError, DataIssue


def is_published_row(row: dict[str, Any]) -> bool:
    return "target_words" in row or "common_words" in row


def _ranges(raw: Any, where: str, line: int, fld: str) -> list[dict[str, Any]]:
    """{word, start, end} items from a JSON string, a list of JSON strings, or a list of objects."""
    try:
        items = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(items, list):
            raise TypeError(f"expected a list, got {type(items).__name__}")
        items = [json.loads(x) if isinstance(x, str) else x for x in items]
        for item in items:
            if not (
                isinstance(item, dict)
                and isinstance(item.get("start"), int)
                and isinstance(item.get("end"), int)
            ):
                raise TypeError(f"expected {{word, start, end}}, got {item!r}")
    except (json.JSONDecodeError, TypeError) as exc:
        raise DataError(
            [
                DataIssue(
                    where,
                    line,
                    fld,
                    f"is not in the published layout ({exc})",
                    "see tokenforget identify --help",
                )
            ]
        ) from exc
    return items


def published_spans(
    row: dict[str, Any], where: str = "<row>", line: int = 0, expand: bool = False
) -> list[Span]:
    """UW spans of one row in the paper's layout."""
    answer = row["answer"]
    if row.get("target_words") is not None:
        targets = _ranges(row["target_words"], where, line, "target_words")
        spans = {Span(t["start"], t["end"]) for t in targets if t["end"] > t["start"]}
        if expand:
            spans.update(word_spans(answer, [answer[t["start"] : t["end"]] for t in targets]))
        return sorted(spans)
    common = _ranges(row.get("common_words") or [], where, line, "common_words")
    return [
        w for w in answer_words(answer) if not any(c["start"] < w.end and c["end"] > w.start for c in common)
    ]


def _published_rows(rows: list[tuple[int, dict[str, Any]]], where: str, expand: bool) -> list[Sample]:
    converted = []
    for line, row in rows:
        if not isinstance(row, dict) or not is_published_row(row) or not isinstance(row.get("answer"), str):
            converted.append((line, row))
            continue
        spans = [s.to_dict() for s in published_spans(row, where, line, expand)]
        rest = {k: v for k, v in row.items() if k not in ("target_words", "common_words")}
        converted.append((line, {**rest, "spans": spans, "identifier": row.get("identifier", "published")}))
    return samples_from_rows(converted, where)


def read_identified(path: str | Path, expand: bool = False) -> list[Sample]:
    """An identified set in our format or the paper's (JSONL/JSON file or `save_to_disk` folder)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "dataset_info.json").is_file() and not (path / "state.json").is_file():
            raise DataError(
                [
                    DataIssue(
                        str(path),
                        None,
                        None,
                        "is a folder but not a datasets save_to_disk folder",
                        "give a .jsonl file or the folder the paper ships",
                    )
                ]
            )
        import datasets  # Arrow files: no pickle involved

        table = datasets.load_from_disk(str(path))
        if isinstance(table, datasets.DatasetDict):
            table = table[next(iter(table))]
        return _published_rows([(k + 1, dict(r)) for k, r in enumerate(table)], str(path), expand)
    first = _first_row(path)
    if first is None or not is_published_row(first):
        return read_samples(path)
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    rows = []
    for number, text in enumerate(lines, start=1):
        if text.strip():
            try:
                rows.append((number, json.loads(text)))
            except json.JSONDecodeError as exc:
                raise DataError(
                    [
                        DataIssue(
                            str(path),
                            number,
                            None,
                            f"is not valid JSON: {exc.msg}",
                            "each line must be one JSON object",
                        )
                    ]
                ) from exc
    return _published_rows(rows, str(path), expand)


def _first_row(path: Path) -> dict[str, Any] | None:
    if not path.is_file() or path.suffix.lower() not in {".jsonl", ".json"}:
        return None
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        for line in handle:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    return None
                return row if isinstance(row, dict) else None
    return None


PIECE = re.compile(r"\w+|[^\w\s]+")


def published_row(sample: Sample) -> dict[str, Any]:
    """One sample in the paper's layout: target_words = the UW spans (a JSON string), common_words =
    every other word and punctuation run (a list of JSON strings), as the published files hold them."""
    spans = list(sample.spans or ())
    targets = [{"word": sample.answer[s.start : s.end], "start": s.start, "end": s.end} for s in spans]
    common = [
        json.dumps({"word": m.group(), "start": m.start(), "end": m.end()})
        for m in PIECE.finditer(sample.answer)
        if not any(s.start < m.end() and s.end > m.start() for s in spans)
    ]
    row: dict[str, Any] = {"question": sample.question, "answer": sample.answer}
    row["target_words"] = json.dumps(targets)
    row["common_words"] = common
    return row


def write_published(path: str | Path, samples: list[Sample], folder: bool = False) -> None:
    """Write the paper's layout: JSONL, or (folder=True) a datasets `save_to_disk` folder."""
    path = Path(path)
    rows = [published_row(s) for s in samples]
    if folder:
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def write_identified(
    path: str | Path, samples: list[Sample], identifier: str, settings: dict[str, Any]
) -> None:
    """Write our format, atomically: question, answer, spans (with their text), identifier, settings."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for sample in samples:
            row = sample.to_dict()
            row["spans"] = [
                {**s.to_dict(), "text": sample.answer[s.start : s.end]} for s in sample.spans or ()
            ]
            row["identifier"] = identifier
            row["settings"] = settings
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
