"""MUSE (News) metrics as formulas, and `eval muse` end to end on a folder in MUSE-News's layout."""

import json

import pytest

from tokenforget.data.records import Sample
from tokenforget.evaluate.muse import first_line, icl_prompt, muse_privleak, rouge_l_f1


def test_rouge_l_f1_without_stemming():
    # LCS("the cat sat", "the cats sat") = 2 tokens: P = R = 2/3 -> F1 = 2/3 (a stemmer would give 1)
    assert rouge_l_f1(["the cats sat"], ["the cat sat"]) == [pytest.approx(2 / 3)]
    assert rouge_l_f1(["a b"], ["a b c d"]) == [pytest.approx(2 * (1.0 * 0.5) / 1.5)]


def test_knowmem_prompt_and_answer_cut():
    shots = [Sample(question="Q1?", answer="A1"), Sample(question="Q2?", answer="A2")]
    assert (
        icl_prompt("Q3?", shots)
        == "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\nQuestion: Q3?\nAnswer: "
    )
    assert first_line(" 1472\n\nQuestion: next?") == "1472"


def test_privleak_follows_muse_sign_convention():
    # a model that still memorises: every forget text scores above every holdout text
    memorised = muse_privleak([-1.0, -1.2, -0.9], [-3.0, -2.5, -2.8], retrain_auc=0.5)
    assert memorised["auc"] == 0.0 and memorised["privleak"] == pytest.approx(-100.0)
    # indistinguishable sets, like the retrained model: AUC 0.5 -> 0
    same = muse_privleak([-1.0, -2.0], [-1.0, -2.0], retrain_auc=0.5)
    assert same["auc"] == 0.5 and same["privleak"] == pytest.approx(0.0)
    # over-unlearned: forget texts now less likely than unseen ones
    over = muse_privleak([-5.0, -6.0], [-1.0, -2.0], retrain_auc=0.4772)
    assert over["privleak"] == pytest.approx((1.0 - 0.4772) / 0.4772 * 100)


def test_eval_muse_end_to_end_on_muse_news(tiny_llama_dir, tmp_path, muse_news_dir):
    from typer.testing import CliRunner

    from tokenforget.cli import app

    out = tmp_path / "muse.json"
    args = [
        "eval",
        "muse",
        "--model",
        str(tiny_llama_dir),
        "--data",
        str(muse_news_dir),
        "--limit",
        "2",
        "--max-length",
        "48",
        "--out",
        str(out),
        "--set",
        "model.precision=fp32",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())
    for key in ("verbmem_f", "knowmem_f", "knowmem_r"):
        assert 0 <= got[key] <= 100
    assert len(got["per_sample"]["verbmem_f"]) == 2 and len(got["per_sample"]["privleak_holdout_min_k"]) == 2
    assert got["retrain_auc"] == 0.4772
    assert got["privleak"] == pytest.approx((got["privleak_auc"] - 0.4772) / 0.4772 * 100)
    relative = tmp_path / "relative.json"
    again = CliRunner().invoke(
        app, [*args[:-4], "--retrain-logs", str(out), "--out", str(relative), "--set", "model.precision=fp32"]
    )
    assert again.exit_code == 0, again.output
    assert json.loads(relative.read_text())["privleak"] == pytest.approx(0.0)  # the same model as "retrained"
