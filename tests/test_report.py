"""report.html building blocks: escaping, the token view, number formatting, charts."""

import json
import math

from tokenforget.report import delta_color, fmt, line_chart, token_view


def test_token_view_marks_unwanted_words_and_colours_by_probability_change():
    answer = "Basil <b>was</b> born."
    offsets = [(0, 5), (5, 9), (9, 12), (12, 16), (16, 22)]  # "Basil", " <b>", "was", "</b>", " born."
    before = [math.log(0.9), math.log(0.5), math.log(0.5), math.log(0.5), math.log(0.5)]
    after = [math.log(0.1), math.log(0.5), math.log(0.5), math.log(0.5), math.log(0.6)]
    view = token_view(answer, offsets, before, after, [(0, 5)])
    assert view.count('class="tok uw"') == 1 and ">Basil</span>" in view
    assert "<b>" not in view and "&lt;b&gt;" in view  # answer text is escaped
    assert "p 0.900 → 0.100" in view
    assert delta_color(-0.8) in view  # Basil: probability fell by 0.8
    assert delta_color(0.1) in view  # born: rose by 0.1


def test_delta_color_is_red_for_falls_and_blue_for_rises():
    assert delta_color(-0.5).startswith("rgba(220,38,38")
    assert delta_color(0.5).startswith("rgba(37,99,235")
    assert float(delta_color(-1.0).split(",")[-1][:-1]) > float(delta_color(-0.1).split(",")[-1][:-1])


def test_fmt():
    assert fmt(None) == "n/a" and fmt(float("nan")) == "n/a"
    assert fmt(0.12345) == "0.123" and fmt(0.0) == "0.000" and fmt(3e-5) == "3.00e-05" and fmt(7) == "7"


def test_line_chart_draws_each_series_inside_the_frame():
    svg = line_chart({"loss": [(0, 1.0), (1, 0.5), (2, float("nan"))], "pl": [(0, 0.2), (2, 0.3)]}, "t")
    assert svg.count("<polyline") == 2 and ">loss<" in svg and ">pl<" in svg
    assert line_chart({"x": []}, "empty") == ""


def test_pareto_ranks_by_hand():
    from tokenforget.report import pareto_ranks

    # (utility, forget quality): a and b trade off, c is dominated by a, d by everything but itself
    points = [(0.5, 0.9), (0.8, 0.2), (0.4, 0.5), (0.1, 0.1), (0.5, 0.9)]
    assert pareto_ranks(points) == [0, 0, 1, 2, 0]  # ties do not dominate each other


def fake_summary(method, fq, mu):
    row = {"forget_quality": fq, "model_utility": mu, "uw_leak_rate": 0.1, "kl_on_retain": 0.01}
    return {
        "method": method,
        "headline": {
            "unlearned": row,
            "target": {"forget_quality": 1e-4, "model_utility": 0.3},
            "retain": {"forget_quality": 1.0, "model_utility": 0.35},
        },
        "unlearn": {"seconds": 12.0},
    }


def test_compare_command_sorts_the_frontier_first_and_writes_a_self_contained_page(tmp_path):
    import json
    import re

    from typer.testing import CliRunner

    from tokenforget.cli import app

    for name, fq, mu in (("ga", 0.01, 0.1), ("npo", 0.2, 0.25), ("tpo", 0.5, 0.2), ("bad", 0.005, 0.05)):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "summary.json").write_text(json.dumps(fake_summary(name, fq, mu)))
    page = tmp_path / "compare.html"
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "runs"), "--out", str(page)])
    assert result.exit_code == 0, result.output
    html = page.read_text()
    order = re.findall(r'<tr><td class="num">(\w+)</td>', html)
    assert order == ["tpo", "npo", "ga", "bad"]  # frontier (tpo, npo) by forget quality, then ranks 1, 2
    assert html.count('stroke="#111827"') == 2  # two frontier points, ringed
    assert not re.search(r"(?:src|href)\s*=|https?://|<script", html)
    assert "4 runs" in result.output.replace("\n", " ")
    empty = CliRunner().invoke(app, ["compare", str(tmp_path / "nothing")])
    assert empty.exit_code != 0


def test_compare_refuses_runs_that_unlearned_different_models_and_shows_the_retain_answers_cost(tmp_path):
    import json

    from typer.testing import CliRunner

    from tokenforget.cli import app
    from tokenforget.errors import TokenforgetError
    from tokenforget.report import best_point_runs, by_starting_model

    def finished(name, fq, mu, model, retain_rouge):
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        summary = fake_summary("npo", fq, mu)
        summary["headline"]["unlearned"]["retain_Q_A_ROUGE"] = retain_rouge
        summary["headline"]["target"]["retain_Q_A_ROUGE"] = 0.8
        (folder / "summary.json").write_text(json.dumps(summary))
        (folder / "receipt.json").write_text(json.dumps({"input_model": {"sha256": model}}))
        return folder

    one, other = "a" * 64, "b" * 64  # the same world settings, made on two CPUs: two targets
    finished("cpu1-lr1", 0.9, 0.3, one, 0.4)
    finished("cpu1-lr2", 0.5, 0.31, one, 0.6)
    page = tmp_path / "compare.html"
    same = CliRunner().invoke(app, ["compare", str(tmp_path / "runs"), "--out", str(page)])
    assert same.exit_code == 0, same.output
    # the rule picks cpu1-lr1 by TOFU's utility; its retain answers' ROUGE is 0.4 / 0.8 of the target's
    assert "cpu1-lr1: FQ 0.900, MU 1.00x, retain ROUGE 0.50x, KL 0.010" in page.read_text()

    finished("cpu2-lr1", 0.99, 0.3, other, 0.7)
    mixed = CliRunner().invoke(app, ["compare", str(tmp_path / "runs"), "--out", str(page)])
    assert isinstance(mixed.exception, TokenforgetError)  # the CLI's entry point prints it, exit 2
    text = " ".join(str(mixed.exception).split())
    assert "did not unlearn the same model" in text
    assert f"model {one[:12]} (target utility 0.300): cpu1-lr1, cpu1-lr2" in text
    assert f"model {other[:12]} (target utility 0.300): cpu2-lr1" in text

    # the best point is each starting model's own: cpu2-lr1 would outrank cpu1-lr1 on one plane
    entries = [
        (n, {**json.loads((tmp_path / "runs" / n / "summary.json").read_text()), "unlearned_from": m})
        for n, m in (("cpu1-lr1", one), ("cpu1-lr2", one), ("cpu2-lr1", other))
    ]
    assert [len(v) for v in by_starting_model(entries).values()] == [2, 1]
    assert best_point_runs(entries) == {"cpu1-lr1", "cpu2-lr1"}


def test_sweep_points_are_every_combination_with_readable_names():
    import pytest

    from tokenforget.errors import ConfigError
    from tokenforget.pipeline import sweep_points

    points = sweep_points(["unlearn.lr=1e-5,3e-5", "unlearn.beta=0.1"])
    assert points == [
        ("lr1e-5_beta0.1", ["unlearn.lr=1e-5", "unlearn.beta=0.1"]),
        ("lr3e-5_beta0.1", ["unlearn.lr=3e-5", "unlearn.beta=0.1"]),
    ]
    with pytest.raises(ConfigError, match=r"section\.key=v1,v2"):
        sweep_points(["lr=1e-5"])


def test_keeping_the_best_weights_keeps_each_methods_best_point_by_the_rule(tmp_path):
    from tokenforget.pipeline import keep_best_weights

    def finished(name, method, fq, mu, kl=0.01):
        model = tmp_path / name / "unlearn" / "model"
        model.mkdir(parents=True)
        (model / "config.json").write_text("{}")
        (model / "model.safetensors").write_bytes(b"w" * 100)
        summary = fake_summary(method, fq, mu)
        summary["headline"]["unlearned"]["kl_on_retain"] = kl
        return name, summary

    # target utility 0.3, so the rule reads runs with utility >= 0.27
    runs = [
        finished("npo-a", "npo", 0.9, 0.25),  # forgets most, below 0.9x: not the best point
        finished("npo-b", "npo", 0.4, 0.28, kl=0.2),
        finished("npo-c", "npo", 0.4, 0.29, kl=0.1),  # ties npo-b's forget quality at a lower KL
        finished("tpo-a", "tpo", 0.5, 0.2),  # tpo has no run at >= 0.9x: it keeps none
    ]
    gone, freed = keep_best_weights(tmp_path, runs)
    assert gone == ["npo-a", "npo-b", "tpo-a"] and freed == 300
    with_weights = [p.relative_to(tmp_path).parts[0] for p in tmp_path.glob("*/unlearn/model/*.safetensors")]
    assert with_weights == ["npo-c"]
    assert all((tmp_path / n / "unlearn" / "model" / "config.json").is_file() for n, _ in runs)
    assert keep_best_weights(tmp_path, runs) == ([], 0)  # nothing left to drop
    own_data = [(n, {**s, "headline": {"unlearned": s["headline"]["unlearned"]}}) for n, s in runs]
    assert keep_best_weights(tmp_path, own_data) is None  # no target utility: no rule to keep by


def test_trajectory_charts_draw_forget_retain_and_uw_gw_curves(tmp_path):
    from tokenforget.report import trajectory_charts

    assert trajectory_charts(tmp_path / "trajectory.jsonl") == ""  # no in-training evaluation
    rows = [
        {"step": 0, "forget_Q_A_Prob": 0.9, "retain_Q_A_Prob": 0.3, "uw_dlogp": 0.0, "gw_dlogp": 0.0},
        {"step": 5, "forget_Q_A_Prob": 0.4, "retain_Q_A_Prob": 0.28, "uw_dlogp": -1.5, "gw_dlogp": None},
    ]
    (tmp_path / "trajectory.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    html = trajectory_charts(tmp_path / "trajectory.jsonl")
    assert html.count("<svg") == 2 and html.count("<polyline") == 4
    for legend in (">forget<", ">retain<", ">UW<", ">GW<"):
        assert legend in html


def test_compare_ranks_each_group_on_its_own_frontier(tmp_path):
    from tokenforget.report import write_compare

    runs = [
        ("ga-a", fake_summary("ga", 0.01, 0.1)),
        ("ga-b", fake_summary("ga", 0.02, 0.05)),  # ga's own frontier, dominated overall
        ("ga-c", fake_summary("ga", 0.005, 0.04)),  # dominated by ga-a and ga-b
        ("tpo-a", fake_summary("tpo", 0.5, 0.2)),
    ]
    rows = {
        r["run"]: r
        for r in write_compare(tmp_path / "c.html", runs, {"ga-a": "GA", "ga-b": "GA", "ga-c": "GA"})
    }
    assert {k: r["group_rank"] for k, r in rows.items()} == {"ga-a": 0, "ga-b": 0, "ga-c": 1, "tpo-a": 0}
    assert {k: r["pareto_rank"] for k, r in rows.items()} == {"ga-a": 1, "ga-b": 1, "ga-c": 2, "tpo-a": 0}
    assert rows["tpo-a"]["group"] == "tpo"  # no group given: its method
    html = (tmp_path / "c.html").read_text()
    assert html.count("stroke-dasharray") == 1  # GA's two-point frontier; tpo's has one point
    assert ">GA<" in html and ">tpo<" in html  # the legend


def test_each_methods_frontier_is_its_best_forget_quality_at_each_share_of_the_targets_utility():
    from tokenforget.report import utility_frontier

    def run(name, group, fq, mu, kl):
        return {"run": name, "group": group, "forget_quality": fq, "model_utility": mu, "kl_on_retain": kl}

    rows = [
        run("a1", "A", 0.9, 0.25, 0.1),  # 0.83x of 0.3
        run("a2", "A", 0.4, 0.29, 0.1),  # 0.97x
        run("b1", "B", 0.6, 0.28, 0.5),  # 0.93x
        run("b2", "B", 0.6, 0.30, 0.2),  # 1.0x, same forget quality, lower KL: the rule's pick
        run("c1", "C", None, 0.3, 0.0),  # not evaluated: left out
    ]
    table = {e["group"]: e for e in utility_frontier(rows, 0.3)}
    assert set(table) == {"A", "B"}
    assert (table["A"]["fq_at_0.8x"], table["A"]["fq_at_0.9x"], table["A"]["fq_at_0.95x"]) == (0.9, 0.4, 0.4)
    assert table["A"]["best_run"] == "a2"  # a1 keeps only 0.83x of the target's utility
    assert table["B"]["best_run"] == "b2" and table["B"]["fq_at_0.95x"] == 0.6


def test_a_seed_run_is_its_points_replica_not_a_better_point_and_the_best_points_seeds_stay():
    from tokenforget.report import best_point_runs, utility_frontier

    def run(name, point, seed, fq, mu=0.3):
        return {
            "run": name, "group": "A", "point": point, "seed": seed,
            "forget_quality": fq, "model_utility": mu, "kl_on_retain": 0.1,
        }  # fmt: skip

    rows = [
        run("lr1", "lr1", 0, 0.4),
        run("lr1-seed1", "lr1", 1, 0.99),  # a lucky seed of lr1: not a point of its own
        run("lr2", "lr2", 0, 0.5),
        run("lr2-seed2", "lr2", 2, 0.1),
        run("lr2-seed1", "lr2", 1, 0.2, mu=0.2),  # below 0.9x at this seed: still listed
    ]
    (entry,) = utility_frontier(rows, 0.3)
    assert entry["best_run"] == "lr2" and entry["fq_at_0.9x"] == 0.5 and entry["points"] == 2
    assert [(r["run"], r["seed"]) for r in entry["seeds"]] == [("lr2", 0), ("lr2-seed1", 1), ("lr2-seed2", 2)]
    summaries = [
        (r["run"], {**fake_summary("a", r["forget_quality"], r["model_utility"]), "point": r["point"],
                    "seed": r["seed"]})
        for r in rows
    ]  # fmt: skip
    assert best_point_runs(summaries) == {"lr2", "lr2-seed1", "lr2-seed2"}  # --keep best keeps every seed
    # by another yardstick of what is kept (the retain answers' ROUGE), another best point
    rouge = {"lr1": 0.8, "lr1-seed1": 0.8, "lr2": 0.5, "lr2-seed2": 0.5, "lr2-seed1": 0.5}
    (kept,) = utility_frontier(
        [{**r, "retain_Q_A_ROUGE": rouge[r["run"]]} for r in rows], 0.8, (0.9,), by="retain_Q_A_ROUGE"
    )
    assert kept["best_run"] == "lr1" and kept["fq_at_0.9x"] == 0.4


def test_runs_with_the_same_settings_made_by_different_code_are_two_points_and_compare_says_so(tmp_path):
    import json

    from typer.testing import CliRunner

    from tokenforget.cli import app
    from tokenforget.report import compare_rows, run_entry, utility_frontier

    def finished(name, seed, fq, code):
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(fake_summary("atwu", fq, 0.3)))
        (folder / "config.yaml").write_text(f"run: {{name: {name}}}\nunlearn: {{lr: 0.0001, seed: {seed}}}\n")
        receipt = {"input_model": {"sha256": "a" * 64}, "code": {"source_sha256": code}}
        (folder / "receipt.json").write_text(json.dumps(receipt))
        return folder

    before, after = "1" * 64, "2" * 64  # the same settings before and after a fix of the method
    folders = [
        finished("old", 0, 0.9, before),
        finished("new", 0, 0.1, after),
        finished("new-seed1", 1, 0.2, after),
    ]
    entries = [run_entry(f, json.loads((f / "summary.json").read_text())) for f in folders]
    (entry,) = utility_frontier(compare_rows(entries), 0.3)
    # two points; the old code's run is no seed of the new one's, and the new one's seed stays with it
    assert entry["points"] == 2 and entry["best_run"] == "old"
    assert [r["run"] for r in entry["seeds"]] == ["old"]
    new_point = next(r for r in compare_rows(entries) if r["run"] == "new")["point"]
    assert new_point == next(r for r in compare_rows(entries) if r["run"] == "new-seed1")["point"]
    page = tmp_path / "compare.html"
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "runs"), "--out", str(page)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "same settings, different code" in said
    assert f"new, new-seed1 (code {after[:12]}) vs old (code {before[:12]})" in said


def test_the_source_fingerprint_follows_the_code_and_nothing_else(tmp_path):
    import shutil
    from pathlib import Path

    import tokenforget
    from tokenforget.version import source_sha256

    package = Path(tokenforget.__file__).resolve().parent
    copy = tmp_path / "tokenforget"
    shutil.copytree(package, copy)
    assert source_sha256(copy) == source_sha256()
    (copy / "notes.txt").write_text("not code")
    assert source_sha256(copy) == source_sha256()
    (copy / "losses.py").write_text((copy / "losses.py").read_text() + "\n# a fix\n")
    changed = tmp_path / "changed" / "tokenforget"
    shutil.copytree(copy, changed)  # a fresh path: the fingerprint is cached per folder
    assert source_sha256(changed) != source_sha256()


def test_a_runs_group_names_its_method_and_the_settings_it_changed():
    from tokenforget.report import method_label

    def summary(method, settings, retain_term=None):
        return {"unlearn": {"method": method, "settings": settings, "retain_term": retain_term}}

    assert method_label(summary("tpo", {"beta": 0.3, "lam": 1.0, "lpl_space": "logit"})) == "tpo"
    assert method_label(summary("tpo", {"beta": 0.3, "lpl_space": "centered"})) == "tpo lpl_space=centered"
    assert method_label(summary("npo", {"beta": 0.1, "lam": 1.0, "tokens": "uw"})) == "npo tokens=uw"
    assert method_label(summary("atwu+tpo", {"beta": 0.3, "tokens": "weighted"})) == "atwu+tpo"
    # a retain term swapped by unlearn.retain_loss is part of the group; the method's own is not
    assert method_label(summary("tpo_gd", {"beta": 0.3}, "kl")) == "tpo_gd retain=kl"
    assert method_label(summary("tpo_gd", {"beta": 0.3}, "nll")) == "tpo_gd"
    assert method_label(summary("tpo", {"beta": 0.3}, "nll")) == "tpo retain=nll"
    assert method_label(summary("atwu+tpo", {"beta": 0.3, "tokens": "weighted"}, "nll")) == "atwu+tpo"
    # what labelled the unwanted words is part of a token-level run's group, and only of those
    labelled = {**summary("tpo", {"beta": 0.3}), "identifier": "labels forget01_gpt.jsonl"}
    assert method_label(labelled) == "tpo [labels forget01_gpt.jsonl]"
    ner = {**summary("npo", {"beta": 0.1, "tokens": "uw"}), "identifier": "ner"}
    assert method_label(ner) == "npo tokens=uw [ner]"
    assert method_label({**summary("npo", {"beta": 0.1}), "identifier": "ner"}) == "npo"  # every token


def test_compare_shows_the_attacks_run_on_each_methods_best_point(tmp_path):
    import json

    from typer.testing import CliRunner

    from tokenforget.cli import app
    from tokenforget.report import attack_sections, robustness

    for name, fq, mu in (("npo", 0.2, 0.3), ("tpo", 0.5, 0.29)):  # both best points of their method
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "summary.json").write_text(json.dumps(fake_summary(name, fq, mu)))
    tpo = tmp_path / "runs" / "tpo"
    relearn = {
        "steps": [0, 20],
        "lr": 1e-4,
        "attack_answers": 20,
        "scored_answers": 20,
        "models": {
            "retain": {"0": {"uw_leak_rate": 0.05}, "20": {"uw_leak_rate": 0.06}},
            "unlearned": {"0": {"uw_leak_rate": 0.1}, "20": {"uw_leak_rate": 0.25}},
        },
        "recovery": {"unlearned": {"0": {"uw_leak_rate": 0.05}, "20": {"uw_leak_rate": 0.19}}},
    }
    (tpo / "attacks" / "relearn-abc").mkdir(parents=True)
    (tpo / "attacks" / "relearn-abc" / "relearn.json").write_text(json.dumps(relearn))
    for bits, leak in ((8, 0.11), (4, 0.03)):
        after = {"forget_quality": 0.4, "uw_leak_rate": leak}
        quantized = {
            "bits": bits,
            "backend": "torchao",
            "models": {"unlearned": {"before": {}, "after": after}},
        }
        (tpo / "attacks" / f"quantize-{bits}").mkdir(parents=True)
        (tpo / "attacks" / f"quantize-{bits}" / "quantize.json").write_text(json.dumps(quantized))
    # the largest budget's leak and its gap over the attacked retain model; each bit width's numbers
    assert robustness(tpo) == {
        "relearn_uw_leak": 0.25,
        "relearn_uw_gap": 0.19,
        "int4_fq": 0.4,
        "int4_uw_leak": 0.03,
        "int8_fq": 0.4,
        "int8_uw_leak": 0.11,
    }
    assert robustness(tmp_path / "runs" / "npo") == dict.fromkeys(robustness(tpo))
    sections = attack_sections(tpo)
    assert "After a relearning attack" in sections and "After 4-bit quantization" in sections
    assert "After 8-bit quantization" in sections and "int8" in sections
    page = tmp_path / "compare.html"
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "runs"), "--out", str(page)])
    assert result.exit_code == 0, result.output
    frontier = page.read_text().split('id="frontier"')[1].split("</table>")[0]
    assert "UW leak after relearning" in frontier and "FQ after int4" in frontier
    assert '<td class="num">0.190</td>' in frontier and '<td class="num">n/a</td>' in frontier  # npo: none
