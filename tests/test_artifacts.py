"""One cache discipline: an artifact is reused only for its stamp, rebuilt otherwise, written atomically."""

import json

from tokenforget.artifacts import Stamp, cached, json_codec
from tokenforget.models import json_digest

ROWS = json_codec("rows")


def test_an_artifact_is_built_once_per_stamp_and_rebuilt_when_the_stamp_or_the_file_changes(tmp_path):
    path = tmp_path / "a" / "rows.json"
    calls = []

    def build(value):
        return lambda: calls.append(value) or [value]

    first = Stamp("rows", {"model": "m", "texts": [[1, 2]]})
    hits = []
    assert cached(path, first, build(1), ROWS, on_hit=hits.append) == [1]
    assert cached(path, Stamp("rows", {"model": "m", "texts": [[1, 2]]}), build(2), ROWS, hits.append) == [1]
    assert calls == [1] and hits == [path]
    assert cached(path, Stamp("rows", {"model": "other", "texts": [[1, 2]]}), build(3), ROWS) == [3]
    path.write_text(path.read_text()[:10])  # torn by a crash elsewhere: rebuilt, never trusted
    assert cached(path, Stamp("rows", {"model": "other", "texts": [[1, 2]]}), build(4), ROWS) == [4]
    assert calls == [1, 3, 4]
    assert [p.name for p in path.parent.iterdir()] == ["rows.json"]  # no temporary file left
    assert json.loads(path.read_text())["stamp"] == {"model": "other", "texts": [[1, 2]]}


def test_a_stamp_key_is_the_digest_of_its_payload_and_names_its_file_in_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENFORGET_CACHE", str(tmp_path))
    stamp = Stamp("reference", {"b": 1, "a": [2]})
    assert stamp.key == json_digest({"a": [2], "b": 1})  # the recipe every earlier cache key used
    assert (
        stamp.shared_path(".safetensors", "x-") == tmp_path / "reference" / f"x-{stamp.key[:24]}.safetensors"
    )
