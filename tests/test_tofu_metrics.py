"""TOFU aggregation: the published logs give the published numbers; a small log gives hand values."""

import json
import math

import numpy as np
import pytest

from conftest import TOFU_LOGS
from tokenforget.errors import DataError
from tokenforget.evaluate.tofu import (
    LOG_FILES,
    SplitStats,
    model_utility,
    read_openunlearning_eval,
    read_tofu_logs,
    summarize,
    truth_ratio,
    write_eval_log,
)

LOGS = TOFU_LOGS
FULL = LOGS / "ft_epoch5_lr1e-05_llama2-7b_full_wd0.01"
RETAIN90 = LOGS / "ft_epoch5_lr1e-05_llama2-7b_retain90_wd0.01"


def test_published_logs_give_the_published_numbers():
    full, retain = read_tofu_logs(FULL), read_tofu_logs(RETAIN90)
    assert summarize(full)["model_utility"] == pytest.approx(0.6226774, abs=1e-6)
    assert summarize(retain)["model_utility"] == pytest.approx(0.6137450, abs=1e-6)
    summary = summarize(full, retain)
    assert summary["forget_quality"] == pytest.approx(1.834e-21, rel=1e-3)
    assert summary["forget_truth_ratio"] == pytest.approx(0.516, abs=1e-3)  # open-unlearning: 0.52
    keys = {
        "forget_Q_A_Prob",
        "forget_Q_A_ROUGE",
        "forget_truth_ratio",
        "retain_Q_A_Prob",
        "retain_Q_A_ROUGE",
        "retain_Truth_Ratio",
        "ra_Q_A_Prob_normalised",
        "ra_Q_A_ROUGE",
        "ra_Truth_Ratio",
        "wf_Q_A_Prob_normalised",
        "wf_Q_A_ROUGE",
        "wf_Truth_Ratio",
    }
    assert keys <= summary.keys()
    assert "unavailable" not in summary


def small_log(forget=False):
    """Two questions, two perturbed options each; every number below is worked out by hand."""
    return {
        "avg_gt_loss": {"0": math.log(2), "1": math.log(4)},  # p_true = 0.5, 0.25
        "avg_paraphrased_loss": {"0": math.log(2), "1": math.log(4)} if not forget else {"0": 1.0, "1": 2.0},
        "average_perturb_loss": {"0": [math.log(4), math.log(4)], "1": [math.log(2), math.log(8)]},
        "rougeL_recall": {"0": 1.0, "1": 0.5},
    }


def test_small_log_by_hand(tmp_path):
    stats = SplitStats.from_log({k: list(v.values()) for k, v in small_log().items()}, "x")
    # real_authors-style probability: p_true / (p_true + sum p_false)
    # q0: 0.5 / (0.5 + 0.25 + 0.25) = 0.5 ; q1: 0.25 / (0.25 + 0.5 + 0.125) = 0.285714...
    from tokenforget.evaluate.tofu import probability, truth_ratio_score

    assert probability(stats, "real_authors") == pytest.approx((0.5 + 0.25 / 0.875) / 2)
    assert probability(stats, "retain") == pytest.approx((0.5 + 0.25) / 2)
    # R = exp(mean(perturb) - base): q0 exp(log4 - log2) = 2 ; q1 exp((log2+log8)/2 - log4) = exp(0) = 1
    assert truth_ratio(stats) == pytest.approx([2.0, 1.0])
    assert truth_ratio_score(truth_ratio(stats), "retain") == pytest.approx((0.5 + 0.0) / 2)
    assert truth_ratio_score(truth_ratio(stats), "forget") == pytest.approx((0.5 + 1.0) / 2)
    # legacy: p_base / arithmetic mean of perturbed probs: q0 0.5/0.25 = 2 ; q1 0.25/((0.5+0.125)/2) = 0.8
    assert truth_ratio(stats, "legacy-arithmetic") == pytest.approx([2.0, 0.8])


def test_summary_of_a_written_log_folder(tmp_path):
    for split, name in LOG_FILES.items():
        log = small_log(forget=split == "forget")
        write_eval_log(tmp_path / name, {k: list(v.values()) for k, v in log.items()})
    summary = summarize(read_tofu_logs(tmp_path))
    # utility numbers: retain prob .375, rouge .75, TR .25; ra/wf prob .392857, rouge .75, TR .25
    p_ra = (0.5 + 0.25 / 0.875) / 2
    expected = 9 / (1 / 0.375 + 3 / 0.75 + 3 / 0.25 + 2 / p_ra)
    assert summary["model_utility"] == pytest.approx(expected)
    assert summary["forget_quality"] is None and "retain model" in summary["unavailable"]["forget_quality"]
    same = summarize(read_tofu_logs(tmp_path), read_tofu_logs(tmp_path))
    assert same["forget_quality"] == pytest.approx(1.0)  # identical distributions


def test_both_layouts_and_the_aggregated_file_agree(tmp_path):
    plain = {k: list(v.values()) for k, v in json.loads((FULL / "eval_log_forget.json").read_text()).items()}
    (tmp_path / "eval_log_forget.json").write_text(json.dumps(plain))
    a = read_tofu_logs(tmp_path)["forget"]
    b = read_tofu_logs(FULL)["forget"]
    assert np.array_equal(a.avg_perturb_loss, b.avg_perturb_loss)
    aggregated = {name: json.loads((FULL / name).read_text()) for name in LOG_FILES.values()}
    (tmp_path / "agg").mkdir()
    (tmp_path / "agg" / "eval_log_aggregated.json").write_text(json.dumps(aggregated))
    assert summarize(read_tofu_logs(tmp_path / "agg"))["model_utility"] == pytest.approx(0.6226774, abs=1e-6)


def test_openunlearning_truth_ratio_scores_are_inverted(tmp_path):
    r = truth_ratio(read_tofu_logs(FULL)["forget"])
    payload = {
        "forget_truth_ratio": {
            "agg_value": 0.5,
            "value_by_index": {str(i): {"score": float(1 / v)} for i, v in enumerate(r)},
        },
        "model_utility": {"agg_value": 0.6},
    }
    (tmp_path / "TOFU_EVAL.json").write_text(json.dumps(payload))
    read = read_openunlearning_eval(tmp_path / "TOFU_EVAL.json")
    assert read["model_utility"] == 0.6
    assert np.allclose(read["forget_R"], r)
    with pytest.raises(DataError, match="open-unlearning"):
        read_tofu_logs(tmp_path / "TOFU_EVAL.json")


def test_model_utility_is_zero_when_a_component_is_zero():
    assert model_utility([0.5, 0.0, 0.7]) == 0.0
    assert model_utility([0.5, 0.5]) == pytest.approx(0.5)


def test_bad_logs_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="holds no TOFU eval log"):
        read_tofu_logs(tmp_path)
    (tmp_path / "eval_log.json").write_text('{"avg_gt_loss": {"0": 1.0}}')
    with pytest.raises(DataError, match="is missing from the eval log"):
        read_tofu_logs(tmp_path)


def test_eval_summary_command_on_published_and_openunlearning_logs(tmp_path):
    import subprocess
    import sys

    def run(*args):
        result = subprocess.run(
            [sys.executable, "-m", "tokenforget.cli", "eval", "summary", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    summary = run("--logs", str(FULL), "--retain-logs", str(RETAIN90))
    assert summary["model_utility"] == pytest.approx(0.6226774, abs=1e-6)
    assert summary["forget_quality"] == pytest.approx(1.834e-21, rel=1e-3)
    r = truth_ratio(read_tofu_logs(FULL)["forget"])
    (tmp_path / "TOFU_EVAL.json").write_text(
        json.dumps(
            {
                "forget_truth_ratio": {
                    "agg_value": 0.5,
                    "value_by_index": {str(i): {"score": float(1 / v)} for i, v in enumerate(r)},
                },
                "model_utility": {"agg_value": 0.61},
            }
        )
    )
    ou = run("--logs", str(tmp_path), "--retain-logs", str(RETAIN90))
    assert ou["model_utility"] == 0.61
    assert ou["forget_quality"] == pytest.approx(1.834e-21, rel=1e-3)
    alone = run("--logs", str(FULL))
    assert alone["forget_quality"] is None and "--retain-logs" in alone["unavailable"]["forget_quality"]


def test_aggregate_csv_has_the_published_header_and_values(tmp_path):
    import csv

    from tokenforget.evaluate.tofu import write_aggregate_csv

    summary = summarize(read_tofu_logs(FULL), read_tofu_logs(RETAIN90))
    write_aggregate_csv(tmp_path / "agg.csv", summary, "target", "tokenforget")
    with open(tmp_path / "agg.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    header = list(rows[0])
    # aggregate_eval_stat.py: f"{metric} {task}" for task in (Real Authors, Real World, Retain, Forget)
    # and metric in (ROUGE, Prob., Truth Ratio), then Model Utility, Forget Quality, Method, Submitted By
    assert header == [
        f"{m} {t}"
        for t in ("Real Authors", "Real World", "Retain", "Forget")
        for m in ("ROUGE", "Prob.", "Truth Ratio")
    ] + ["Model Utility", "Forget Quality", "Method", "Submitted By"]
    assert float(rows[0]["Model Utility"]) == pytest.approx(0.6226774, abs=1e-6)
    assert float(rows[0]["Forget Quality"]) == pytest.approx(1.834e-21, rel=1e-3)
    assert float(rows[0]["Truth Ratio Forget"]) == pytest.approx(summary["forget_truth_ratio"])
    assert rows[0]["Method"] == "target"


def test_the_headline_in_words():
    from tokenforget.evaluate.tofu import verdict

    # the default main job's numbers in issue 21
    said = verdict(
        {
            "unlearned": {"forget_quality": 5.0e-4, "model_utility": 0.297, "uw_leak_rate": 0.235},
            "target": {"forget_quality": 1.9e-4, "model_utility": 0.301, "uw_leak_rate": 0.762},
        }
    )
    assert said == [
        "Not forgotten by TOFU's test: still distinguishable from a model that never saw the forget set "
        "(KS p = 0.0005; 0.05 needed).",
        "Utility kept: model utility 0.297 is 0.99x the target's 0.301 (0.9x wanted).",
        "Unwanted words still come out: 24% of them are in the greedy answers (the target: 76%).",
    ]
    own = verdict({"unlearned": {"forget_quality": 0.4, "utility_ra_wf": 0.2, "uw_leak_rate": 0.0},
                   "target": {"utility_ra_wf": 0.25}})  # fmt: skip
    assert own[0].startswith("Forgotten by TOFU's test: cannot be told apart")
    lost = "Utility lost: utility on real authors and world facts 0.2 is 0.80x the target's 0.25"
    assert own[1] == lost + " (0.9x wanted)."
    assert own[2] == "No unwanted word comes out of the greedy answers anymore."
