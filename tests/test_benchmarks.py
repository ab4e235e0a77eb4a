import json

import pytest

from conftest import TOFU_DIR
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


def bundled_tofu_folder(folder):
    """A TOFU folder in the published layout made of the bundled files (a miniature full TOFU: the 20
    authors of forget10, of which the last one is `forget05`)."""
    from importlib import resources

    bundled = resources.files("tokenforget") / "benchmark_data" / "tofu_mini"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("forget10_perturbed", "real_authors_perturbed", "world_facts_perturbed"):
        (folder / f"{name}.json").write_text((bundled / f"{name}.json").read_text())
    rows = (folder / "forget10_perturbed.json").read_text().splitlines(keepends=True)
    plain = [json.dumps({k: json.loads(r)[k] for k in ("question", "answer")}) + "\n" for r in rows]
    (folder / "forget05.json").write_text("".join(plain[-20:]))
    (folder / "retain95.json").write_text("".join(plain[:-20]))
    (folder / "forget05_perturbed.json").write_text("".join(rows[-20:]))
    (folder / "retain_perturbed.json").write_text("".join(rows[:-20]))
    return folder


def test_bundled_copy_equals_the_published_files(tmp_path):
    forget10 = [json.loads(line) for line in (TOFU_DIR / "forget10.json").read_text().splitlines()]
    bench = tofu_mini()
    assert [(s.question, s.answer) for s in bench.eval_forget + bench.eval_retain] == [
        (r["question"], r["answer"]) for r in forget10[-40:] + forget10[:-40]
    ]
    bundled, local = bench, tofu_mini(str(bundled_tofu_folder(tmp_path / "tofu")))
    for name in ("forget", "retain", "eval_forget", "eval_real_authors", "eval_world_facts"):
        a, b = getattr(bundled, name), getattr(local, name)
        assert [(s.question, s.answer, s.meta) for s in a] == [(s.question, s.answer, s.meta) for s in b]


def test_full_tofu_from_a_local_folder(tmp_path):
    bench = tofu(str(bundled_tofu_folder(tmp_path / "tofu")), "forget05")
    assert (len(bench.forget), len(bench.retain)) == (20, 380)
    assert len(bench.eval_forget) == 20 and len(bench.eval_retain) == 380
    assert bench.forget[0].question == bench.eval_forget[0].question and bench.forget[0].meta == {}


def test_missing_split_and_offline_hub_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="TOFU split 'forget77' is not in"):
        load_tofu_split("forget77", str(TOFU_DIR))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(DataError) as info:
        load_tofu_split("forget01", "locuslab/TOFU")
    assert "--set data.tofu=DIR" in str(info.value)


def test_muse_news_local_folder(muse_news_dir):
    news = muse_news(muse_news_dir)
    assert news.verbmem and set(news.verbmem[0]) == {"prompt", "gt"}
    assert news.knowmem_forget[0].kind == "qa" and news.knowmem_retain_icl
    assert {len(v) > 0 for v in news.privleak.values()} == {True}
    assert set(news.privleak) == {"forget", "retain", "holdout"}
    assert news.forget_corpus.startswith("The council in Orkney") and len(news.verbmem) == 3


def test_muse_bad_layout(tmp_path):
    with pytest.raises(DataError, match="MUSE's News layout"):
        muse_news(tmp_path)
