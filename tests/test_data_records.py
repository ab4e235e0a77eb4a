import json

import pytest

from tokenforget.data import Span, describe, read_samples, word_spans
from tokenforget.errors import DataError


def write(tmp_path, name, text, mode="w"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def issues_of(path):
    with pytest.raises(DataError) as info:
        read_samples(path)
    return info.value.issues


def test_valid_qa_jsonl_with_spans(tmp_path):
    rows = [
        {"question": "Who?", "answer": "Basil was born in Kuwait.", "spans": [{"start": 0, "end": 5}]},
        {"question": "Where?", "answer": "In Kuwait City.", "source": "tofu"},
    ]
    path = write(tmp_path, "f.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    samples = read_samples(path)
    assert [s.kind for s in samples] == ["qa", "qa"]
    assert samples[0].spans == (Span(0, 5),)
    assert samples[1].spans is None
    assert samples[1].meta == {"source": "tofu"}
    info = describe(samples)
    assert info["rows"] == 2 and info["rows_with_spans"] == 1 and info["spans"] == 1
    assert "source" in info["fields"]


def test_raw_text_and_csv_with_json_spans(tmp_path):
    path = write(
        tmp_path, "t.csv", 'text,spans\n"Hello, Basil.","[{""start"": 7, ""end"": 12}]"\nSecond text,\n'
    )
    samples = read_samples(path)
    assert [s.kind for s in samples] == ["text", "text"]
    assert samples[0].answer == "Hello, Basil." and samples[0].question is None
    assert samples[0].spans == (Span(7, 12),)
    assert samples[1].spans == ()


def test_json_array_layout(tmp_path):
    path = write(tmp_path, "a.json", json.dumps([{"question": "q", "answer": "a"}]))
    assert read_samples(path)[0].answer == "a"


@pytest.mark.parametrize(
    ("content", "line", "field", "fragment"),
    [
        ('{"question": "q", "answer": "a"}\n{"question": "q", "answer": \n', 2, None, "is not valid JSON"),
        ('{"question": "q"}\n', 1, "answer", "is missing"),
        ('{"question": "q", "answer": 5}\n', 1, "answer", "must be a string, got int"),
        ('{"question": "q", "answer": "   "}\n', 1, "answer", "is blank"),
        ('{"question": "", "answer": "a"}\n', 1, "question", "is blank"),
        (
            '{"text": "abc", "spans": [{"start": 1, "end": 9}]}\n',
            1,
            "spans[0]",
            "out of range for a text of 3",
        ),
        (
            '{"question": "q", "answer": "abc", "spans": [{"start": 2, "end": 1}]}\n',
            1,
            "spans[0]",
            "inverted",
        ),
        (
            '{"question": "q", "answer": "abc", "spans": [{"start": 1, "end": 1}]}\n',
            1,
            "spans[0]",
            "is empty",
        ),
        (
            '{"question": "q", "answer": "abc", "spans": [{"start": "1", "end": 2}]}\n',
            1,
            "spans[0]",
            "integers",
        ),
        ('{"question": "q", "answer": "abc", "spans": {"start": 1}}\n', 1, "spans", "must be a list"),
        ('{"note": "x"}\n', 1, None, "neither question+answer nor text"),
        ('["q", "a"]\n', 1, None, "must be a JSON object"),
        ('{"question": "q", "answer": "a", "text": "t"}\n', 1, "text", "both 'text' and question/answer"),
        ('{"question": "q", "answer": "a"}\n{"text": "t"}\n', 2, None, "mixes raw-text rows with QA rows"),
    ],
)
def test_every_bad_input_names_line_field_and_fix(tmp_path, content, line, field, fragment):
    path = write(tmp_path, "bad.jsonl", content)
    issues = issues_of(path)
    match = [i for i in issues if fragment in i.problem]
    assert match, [str(i) for i in issues]
    issue = match[0]
    assert issue.file == str(path)
    assert issue.line == line
    assert issue.field == field
    assert issue.fix  # every issue says how to fix it
    assert str(path) in str(issue)


def test_all_problems_reported_at_once_in_line_order(tmp_path):
    path = write(
        tmp_path, "bad.jsonl", '{"question": "q", "answer": ""}\n{oops\n{"question": 1, "answer": "a"}\n'
    )
    assert [i.line for i in issues_of(path)] == [1, 2, 3]


def test_non_utf8_bytes_are_located(tmp_path):
    path = write(
        tmp_path,
        "latin.jsonl",
        b'{"question": "q", "answer": "ok"}\n{"question": "q", "answer": "caf\xe9"}\n',
    )
    (issue,) = issues_of(path)
    assert issue.line == 2
    assert "0xe9" in issue.problem and "column 33" in issue.problem
    assert "UTF-8" in issue.fix


@pytest.mark.parametrize(
    ("name", "content"), [("empty.jsonl", ""), ("blank.jsonl", "\n  \n"), ("h.csv", "question,answer\n")]
)
def test_empty_files(tmp_path, name, content):
    issues = issues_of(write(tmp_path, name, content))
    assert "empty" in issues[0].problem or "no rows" in issues[0].problem


def test_missing_file_and_unknown_extension(tmp_path):
    assert "does not exist" in issues_of(tmp_path / "nope.jsonl")[0].problem
    assert "unknown extension" in issues_of(write(tmp_path, "x.txt", "hello"))[0].problem


def test_csv_extra_cells_and_duplicate_ids(tmp_path):
    issues = issues_of(write(tmp_path, "x.csv", "question,answer\nq,a,extra\n"))
    assert issues[0].line == 2 and "more cells" in issues[0].problem
    issues = issues_of(write(tmp_path, "d.jsonl", '{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n'))
    assert "used by more than one row" in issues[0].problem


def test_word_spans_label_every_occurrence_whole_words_only():
    text = "Basil met Basil's editor; Basilica is not Basil."
    spans = word_spans(text, ["Basil"])
    assert [text[s.start : s.end] for s in spans] == ["Basil"] * 3
    assert [s.start for s in spans] == [0, 10, 42]
    assert word_spans("the The", ["the"], ignore_case=True) == [Span(0, 3), Span(4, 7)]
    assert word_spans("Kuwait City, Kuwait", ["Kuwait City", "Kuwait"]) == [
        Span(0, 6),
        Span(0, 11),
        Span(13, 19),
    ]
