import json

import pytest

from conftest import SHARED, TOFU_DIR
from tokenforget.data import load_tofu_split, muse_news, tofu, tofu_mini
from tokenforget.errors import DataError


def test_tofu_mini_is_forget10_split_into_forget01_and_retain():
    bench = tofu_mini()
    assert (len(bench.world), len(bench.forget), len(bench.retain)) == (400, 40, 360)
    forget01 = [json.loads(line) for line in (TOFU_DIR / "forget01.json").read_text().splitlines()]
    assert [(s.question, s.answer) for s in bench.forget] == [(r["question"], r["answer"]) for r in forget01]
    assert not {s.question for s in bench.forget} & {s.question for s in bench.retain}
    assert len(bench.eval_real_authors) == 100 and len(bench.eval_world_facts) == 117
    assert len(bench.eval_forget[0].meta["perturbed_answer"]) == 5
    assert "paraphrased_answer" in bench.eval_retain[0].meta
    assert "paraphrased_answer" not in bench.eval_real_authors[0].meta  # the answer is the base there
    assert bench.forget[0].meta == {}  # training view: question and answer only


def test_bundled_copy_equals_the_published_files():
    bundled, local = tofu_mini(), tofu_mini(str(TOFU_DIR))
    for name in ("forget", "retain", "eval_forget", "eval_real_authors", "eval_world_facts"):
        a, b = getattr(bundled, name), getattr(local, name)
        assert [(s.question, s.answer, s.meta) for s in a] == [(s.question, s.answer, s.meta) for s in b]


def test_full_tofu_from_a_local_folder():
    bench = tofu(str(TOFU_DIR), "forget05")
    assert (len(bench.forget), len(bench.retain)) == (200, 3800)
    assert len(bench.eval_forget) == 200 and len(bench.eval_retain) == 400


def test_missing_split_and_offline_hub_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="TOFU split 'forget77' is not in"):
        load_tofu_split("forget77", str(TOFU_DIR))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(DataError) as info:
        load_tofu_split("forget01", "locuslab/TOFU")
    assert "--set data.tofu=DIR" in str(info.value)


def test_muse_news_local_folder():
    news = muse_news(SHARED / "data" / "muse" / "news")
    assert news.verbmem and set(news.verbmem[0]) == {"prompt", "gt"}
    assert news.knowmem_forget[0].kind == "qa" and news.knowmem_retain_icl
    assert {len(v) > 0 for v in news.privleak.values()} == {True}
    assert set(news.privleak) == {"forget", "retain", "holdout"}
    assert len(news.forget_corpus) > 1_000_000


def test_muse_bad_layout(tmp_path):
    with pytest.raises(DataError, match="MUSE's News layout"):
        muse_news(tmp_path)
