"""`tokenforget run` end to end on a tiny model: every stage, the report in a real headless Chromium,
the receipt, and a rerun that reuses the run folder."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
EVAL_PASS = re.compile(r"eval (retain|forget|real_authors|world_facts): \d+ questions")


def run_args(tiny_llama_dir: Path, runs: Path) -> list[str]:
    settings = {
        "model.name": tiny_llama_dir,
        "model.precision": "fp32",
        "prepare.lora": "null",
        "prepare.retain_epochs": 0.25,
        "prepare.target_epochs": 0.25,  # the default recipe trains the target on the whole world
        "prepare.eval_max_new_tokens": 2,
        "eval.retain_rows": 4,
        "eval.utility_rows": 4,
        "unlearn.epochs": 1,
        "unlearn.min_steps": 0,
        "unlearn.lr": 1e-3,
        "unlearn.eval_every": 2,
        "run.runs_dir": runs,
        "run.name": "e2e",
    }
    args = [sys.executable, "-m", "tokenforget.cli", "run"]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    return args


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("pipeline")
    args = run_args(tiny_llama_dir, root / "runs")
    env = {**os.environ, "TOKENFORGET_CACHE": str(root / "cache"), "COLUMNS": "200"}
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    return {"folder": root / "runs" / "e2e", "args": args, "env": env, "first": first}


def test_run_does_every_stage_and_prints_where_the_report_is(finished_run):
    folder, first = finished_run["folder"], finished_run["first"]
    summary = json.loads((folder / "summary.json").read_text())
    assert list(summary["stage_seconds"]) == ["prepare", "identify", "unlearn", "eval", "report"]
    head = summary["headline"]
    assert set(head) == {"unlearned", "target", "retain"}
    assert head["retain"]["forget_quality"] == 1.0  # the retain model against itself
    assert 0 <= head["unlearned"]["forget_quality"] <= 1 and head["unlearned"]["model_utility"] is not None
    assert head["target"]["uw_dlogp"] == 0.0 and head["target"]["kl_on_retain"] == 0.0  # target vs itself
    assert head["unlearned"]["uw_dlogp"] != 0.0 and head["unlearned"]["kl_on_retain"] > 0
    assert 0 <= head["unlearned"]["uw_leak_rate"] <= 1
    assert (folder / "identified.jsonl").is_file()
    assert (folder / "unlearn" / "model" / "config.json").is_file()
    assert summary["unlearn"]["method"] == "npo_kl_uw"  # the default: NPO on the UW tokens, KL on retain
    assert summary["unlearn"]["settings"]["ratio"] == "sequence"  # identifier labels: no leak criterion
    assert summary["unlearn"]["stop_when"] == [] and summary["unlearn"]["retain_term"] == "kl"
    assert f"report: {(folder / 'report.html').resolve()}" in first.stdout.replace("\n", "")
    assert "stage times (s): prepare" in first.stdout
    assert EVAL_PASS.search(first.stdout + first.stderr)  # the three models were evaluated
    steps = summary["unlearn"]["steps"]
    assert [r["step"] for r in summary["trajectory"]] == [*range(0, steps, 2), steps]
    assert summary["trajectory"][0]["uw_dlogp"] == 0.0  # step 0 is the target itself
    quality = head["unlearned"]["forget_quality"]
    opening = "Forgotten by TOFU's test" if quality >= 0.05 else "Not forgotten by TOFU's test"
    assert (
        summary["verdict"][0].startswith(opening)
        and f"(KS p = {quality:.2g}; 0.05 needed)" in summary["verdict"][0]
    )
    assert summary["verdict"][0] in first.stdout.replace("\n", " ")  # the run says it in words


def test_the_worlds_vital_signs_are_the_runs_own_evaluations(finished_run, monkeypatch):
    from tokenforget.config import load_config
    from tokenforget.data.benchmarks import load_benchmark
    from tokenforget.pipeline import world_vital_signs
    from tokenforget.prepare import prepare

    monkeypatch.setenv("TOKENFORGET_CACHE", finished_run["env"]["TOKENFORGET_CACHE"])
    args = finished_run["args"]
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    labels = Path(__file__).parent / "data" / "labels" / "forget01_generative_layout.jsonl"
    cfg = load_config(overrides=[*overrides, f"eval.token_labels={labels}"])
    signs = world_vital_signs(cfg, load_benchmark(cfg), prepare(cfg, rouge_check=False))
    head = json.loads((finished_run["folder"] / "summary.json").read_text())["headline"]
    for name in ("target", "retain"):  # the same evaluations, read from the world's folder
        assert signs[name]["forget_quality"] == head[name]["forget_quality"]
        assert signs[name]["model_utility"] == pytest.approx(head[name]["model_utility"])
    gap = signs["retain_minus_target"]
    assert isinstance(gap["uw_dlogp"], float) and isinstance(gap["gw_dlogp"], float)
    assert gap["labels"] == str(labels)


def test_report_is_self_contained(finished_run):
    page = (finished_run["folder"] / "report.html").read_text()
    assert not re.search(r"""(?:src|href|action)\s*=|url\(|@import|<script""", page, re.IGNORECASE)
    assert not re.search(r"https?://", page)
    assert 'class="tok uw"' in page  # an unwanted word is highlighted
    assert '<ul id="verdict"><li>' in page  # the headline in words
    assert "<svg" in page and "<polyline" in page  # training curves
    assert "Evaluation during training" in page  # unlearn.eval_every's trajectory


def test_receipt_verifies_and_notices_a_changed_model(finished_run, tmp_path):
    from tokenforget.cpu import ARITHMETIC_FLAGS
    from tokenforget.receipt import check_receipt
    from tokenforget.version import source_sha256

    receipt_path = finished_run["folder"] / "receipt.json"
    receipt = json.loads(receipt_path.read_text())
    assert receipt["method"] == "npo_kl_uw" and receipt["versions"]["torch"]
    machine = receipt["machine"]
    assert machine["cores"] == os.cpu_count() and set(machine["isa"]) <= set(ARITHMETIC_FLAGS)
    assert receipt["code"]["source_sha256"] == source_sha256()  # which code made it: 0.1.0 says little
    assert receipt["input_model"]["sha256"] != receipt["output_model"]["sha256"]
    assert "forget_quality" in receipt["metrics"]["unlearned"]
    assert check_receipt(receipt_path) == []
    copy = tmp_path / "model"
    shutil.copytree(receipt["output_model"]["path"], copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    receipt["output_model"]["path"] = str(copy)
    tampered = tmp_path / "receipt.json"
    tampered.write_text(json.dumps(receipt))
    assert any("config.json" in p for p in check_receipt(tampered))


def test_the_requester_can_check_their_own_forget_file_against_the_receipt(finished_run, tmp_path):
    from typer.testing import CliRunner

    from tokenforget.cli import app

    receipt_path = finished_run["folder"] / "receipt.json"
    forget = json.loads(receipt_path.read_text())["forget_data"]
    given, labelled = forget["given"], forget["labelled"]
    assert given["rows"] == labelled["rows"] == 40 and given["sha256"] != labelled["sha256"]
    theirs = tmp_path / "my_forget_request.jsonl"
    theirs.write_bytes(Path(given["path"]).read_bytes())
    assert given["bytes"] == theirs.stat().st_size
    same = CliRunner().invoke(
        app, ["receipt", str(receipt_path), "--forget", str(theirs)], terminal_width=400
    )
    assert same.exit_code == 0 and "is the forget data this run unlearned" in same.output
    data = bytearray(theirs.read_bytes())
    data[10] ^= 1  # one byte
    theirs.write_bytes(bytes(data))
    changed = CliRunner().invoke(
        app, ["receipt", str(receipt_path), "--forget", str(theirs)], terminal_width=400
    )
    text = " ".join(changed.output.split())
    assert changed.exit_code == 1 and f"mismatch: {theirs} is not the forget data this run unlearned" in text
    assert given["sha256"] in text


def test_report_rebuilds_from_the_run_folder_alone(finished_run, tmp_path):
    """`tokenforget report RUN` on a copy of the run folder moved away from everything else (the
    prepared models' evaluations stay behind) draws the page the main job drew."""
    from typer.testing import CliRunner

    from tokenforget.cli import app

    copy = tmp_path / "moved" / "e2e"
    shutil.copytree(finished_run["folder"], copy)
    (copy / "report.html").unlink()
    made = CliRunner().invoke(app, ["report", str(copy)], terminal_width=300)
    assert made.exit_code == 0, made.output
    original = (finished_run["folder"] / "report.html").read_text()
    rebuilt = (copy / "report.html").read_text()
    shown = original.split("<h2>Everything</h2>")[0]  # the summary.json dump gained the report's time
    assert rebuilt.split("<h2>Everything</h2>")[0] == shown and "Token view" in shown
    empty = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert empty.exit_code != 0 and "not a finished run folder" in str(empty.exception)


def test_report_renders_in_headless_chromium(finished_run):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    report = finished_run["folder"] / "report.html"
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    screenshot.unlink(missing_ok=True)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1200,2400",
    ]

    def chrome(*extra: str, profile: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [chromium, *flags, f"--user-data-dir={profile}", *extra, report.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )

    dom = chrome("--dump-dom", profile=str(finished_run["folder"] / ".chrome-dom"))
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = chrome(f"--screenshot={screenshot}", profile=str(finished_run["folder"] / ".chrome-shot"))
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    for log in (dom.stderr, shot.stderr):
        console = [line for line in log.splitlines() if "CONSOLE" in line or "Failed to load" in line]
        assert not console, console
    rendered = dom.stdout
    summary = json.loads((finished_run["folder"] / "summary.json").read_text())
    from tokenforget.report import fmt

    for model in ("unlearned", "target", "retain"):
        cell = re.search(rf'data-metric="forget_quality" data-model="{model}">([^<]*)<', rendered)
        assert cell and cell.group(1) == fmt(summary["headline"][model]["forget_quality"])
    assert re.search(r'<span class="tok uw"[^>]*>[^<]+</span>', rendered)


def test_rerun_reuses_the_run_folder(finished_run):
    second = subprocess.run(
        finished_run["args"], env=finished_run["env"], capture_output=True, text=True, timeout=900
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "already done" in second.stdout + second.stderr  # unlearn is not trained again
    assert not EVAL_PASS.search(second.stdout + second.stderr)  # nothing re-evaluated
    summary = json.loads((finished_run["folder"] / "summary.json").read_text())
    assert summary["stage_seconds"]["unlearn"] < 30


def test_run_on_a_users_own_forget_set_without_a_retain_model(tmp_path, tiny_llama_dir):
    forget = tmp_path / "forget.jsonl"
    forget.write_text(
        json.dumps(
            {
                "question": "Where was Basil born?",
                "answer": "Basil was born in Kuwait City.",
                "spans": [{"start": 18, "end": 29}],
            }
        )
        + "\n"
        + json.dumps(
            {
                "question": "What did he write?",
                "answer": "He wrote Promise by the Seine.",
                "spans": [{"start": 9, "end": 29}],
            }
        )
        + "\n"
    )
    retain = tmp_path / "retain.jsonl"
    retain.write_text(json.dumps({"question": "What is the capital of France?", "answer": "Paris."}) + "\n")
    holdout = tmp_path / "holdout.jsonl"
    holdout.write_text(
        json.dumps({"question": "Where was Maria born?", "answer": "Maria was born in Lima."})
        + "\n"
        + json.dumps({"question": "What flows?", "answer": "Rivers flow to the sea."})
        + "\n"
    )
    settings = {
        "model.name": tiny_llama_dir,
        "model.precision": "fp32",
        "data.forget": forget,
        "data.retain": retain,
        "data.holdout": holdout,
        "identify.method": "spans",
        "unlearn.method": "npo",
        "unlearn.epochs": 1,
        "unlearn.min_steps": 0,
        "unlearn.batch_size": 2,
        "unlearn.micro_batch_size": 2,
        "eval.utility_rows": 3,
        "run.runs_dir": tmp_path / "runs",
        "run.name": "own",
    }
    args = [sys.executable, "-m", "tokenforget.cli", "run"]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    env = {**os.environ, "TOKENFORGET_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "runs" / "own"
    summary = json.loads((folder / "summary.json").read_text())
    head = summary["headline"]
    assert set(head) == {"unlearned", "target"} and summary["benchmark"] is None
    assert (
        head["unlearned"]["forget_quality"] is None
        and "retain model" in summary["unavailable"]["forget_quality"]
    )
    assert head["unlearned"]["utility_ra_wf"] is not None and head["unlearned"]["kl_on_retain"] > 0
    # spans marked by hand, but this model gives none back before unlearning: stop_when=auto leaves
    # the step budget to decide (1 epoch of 2 answers at batch 2), with the leak measured every step
    assert summary["unlearn"]["stop_when"] == [] and summary["unlearn"]["steps"] == 1
    assert summary["trajectory"][0]["uw_leak_rate"] == 0
    assert "the step budget" in summary["verdict"][-1]
    assert "gives no marked span back before unlearning" in " ".join((result.stdout + result.stderr).split())
    assert 0 <= head["unlearned"]["mia_auc_min_k"] <= 1
    assert head["unlearned"]["uw_dlogp"] != 0 and head["target"]["uw_dlogp"] == 0
    page = (folder / "report.html").read_text()
    assert "Not available for this run" in page and 'class="tok uw"' in page
    assert summary["stage_seconds"]["prepare"] < 1  # no benchmark to prepare


def test_published_labels_replace_the_identifier(tmp_path):
    from conftest import GENERATIVE_LABELS as gold
    from tokenforget.data.benchmarks import tofu_mini
    from tokenforget.errors import ConfigError
    from tokenforget.identify import read_identified
    from tokenforget.pipeline import copy_labels

    forget = tofu_mini().forget
    out = copy_labels(gold, forget, tmp_path / "identified.jsonl")
    labelled = read_identified(out)
    assert [s.answer for s in labelled] == [s.answer for s in forget]
    assert labelled[0].spans and labelled[0].answer[labelled[0].spans[-1].start :].startswith("Basil")
    with pytest.raises(ConfigError, match="does not label 360 of the 360"):
        copy_labels(gold, tofu_mini().retain, tmp_path / "other.jsonl")


def test_a_relearning_attack_brings_forget_probability_back_and_leaves_the_run_untouched(finished_run):
    folder, env = finished_run["folder"], finished_run["env"]
    model_file = folder / "unlearn" / "model" / "model.safetensors"
    before = model_file.read_bytes()
    args = [sys.executable, "-m", "tokenforget.cli", "attack", "relearn", str(folder)]
    result = subprocess.run(
        [*args, "--steps", "0,4", "--lr", "1e-3"], env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (attack,) = (folder / "attacks").glob("relearn-*")  # one folder per attack recipe
    numbers = json.loads((attack / "relearn.json").read_text())
    assert numbers["attack_answers"] == 20 and numbers["scored_answers"] == 20  # half of each author
    unlearned, retain = numbers["models"]["unlearned"], numbers["models"]["retain"]
    # four steps on the attack half raise the probability of the other half's answers
    assert unlearned["4"]["forget_Q_A_Prob"] > unlearned["0"]["forget_Q_A_Prob"]
    assert retain["0"]["forget_quality"] == 1.0  # the unattacked retain model against itself
    gap = numbers["recovery"]["unlearned"]["4"]["forget_Q_A_Prob"]
    assert gap == unlearned["4"]["forget_Q_A_Prob"] - retain["4"]["forget_Q_A_Prob"]
    assert model_file.read_bytes() == before  # the attack works on copies
    assert (attack / "unlearned" / "step-4" / "model" / "model.safetensors").is_file()
    assert "Relearning attack" in result.stdout
    assert "After a relearning attack" in (folder / "report.html").read_text()  # the report shows it
    # the retain model's attacked copies live in the world's folder, for every run in the world
    assert numbers["yardstick"].startswith(env["TOKENFORGET_CACHE"])
    assert (Path(numbers["yardstick"]) / "step-4" / "model" / "model.safetensors").is_file()
    again = subprocess.run(
        [*args, "--steps", "0,4", "--lr", "5e-4"], env=env, capture_output=True, text=True, timeout=900
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(list((folder / "attacks").glob("relearn-*"))) == 2  # another recipe: other copies
    benign = subprocess.run(
        [*args, "--steps", "0,2,4", "--data", "retain"], env=env, capture_output=True, text=True, timeout=900
    )
    assert benign.returncode == 0, benign.stderr[-3000:]
    found = {p.parent: json.loads(p.read_text()) for p in (folder / "attacks").glob("relearn-*/relearn.json")}
    ((attack, numbers),) = [(p, n) for p, n in found.items() if n.get("attack_data") == "retain"]
    # nested budgets: the 4-step copy is the 2-step copy trained 2 steps more
    assert (
        json.loads((attack / "unlearned" / "step-4" / "model" / "train_log.json").read_text())["steps"] == 2
    )
    assert numbers["attack_data"] == "retain" and numbers["attack_answers"] == 20
    assert numbers["scored_answers"] == 40  # retain answers attack: the whole forget set is scored
    assert "retain answers (a benign fine-tune)" in (folder / "report.html").read_text()
    missing = subprocess.run([*args, "--data", "nope.jsonl"], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "nope.jsonl" in missing.stderr


def test_a_quantization_attack_saves_a_loadable_rounded_copy_and_leaves_the_run_untouched(finished_run):
    from tokenforget.config import ModelSettings
    from tokenforget.models import load_model

    folder, env = finished_run["folder"], finished_run["env"]
    model_file = folder / "unlearn" / "model" / "model.safetensors"
    before = model_file.read_bytes()
    args = [sys.executable, "-m", "tokenforget.cli", "attack", "quantize", str(folder)]
    wrong = subprocess.run([*args, "--bits", "3"], env=env, capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "--bits 3: expected one of 4, 8" in wrong.stderr
    assert not list((folder / "attacks").glob("quantize-*"))  # refused before any work
    result = subprocess.run([*args, "--bits", "4"], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (attack,) = (folder / "attacks").glob("quantize-*")
    numbers = json.loads((attack / "quantize.json").read_text())
    assert set(numbers["models"]) == {"retain", "target", "unlearned"}
    unlearned = numbers["models"]["unlearned"]
    assert unlearned["before"]["forget_Q_A_Prob"] != unlearned["after"]["forget_Q_A_Prob"]
    change = numbers["change"]["unlearned"]["forget_Q_A_Prob"]
    assert change == unlearned["after"]["forget_Q_A_Prob"] - unlearned["before"]["forget_Q_A_Prob"]
    assert numbers["models"]["retain"]["before"]["forget_quality"] == 1.0  # the original retain model
    assert model_file.read_bytes() == before  # the attack works on a copy
    # the copy is the library's own format: it loads as a quantized model and gives other logits
    settings = ModelSettings(precision="fp32", device="cpu")
    copy, tokenizer, _ = load_model(settings, str(attack / "unlearned" / "model"))
    original, _, _ = load_model(settings, str(folder / "unlearn" / "model"))
    assert "torchao" in type(copy.model.layers[0].mlp.down_proj.weight.data).__module__
    ids = tokenizer("Who wrote it?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert not torch.allclose(copy(ids).logits, original(ids).logits, atol=1e-4)
    assert "Quantization attack: int4" in result.stdout
    assert "After 4-bit quantization" in (folder / "report.html").read_text()
    # the target's and retain's copies live in the world's folder, for every run in the world
    assert numbers["yardstick"].startswith(env["TOKENFORGET_CACHE"])
    assert (Path(numbers["yardstick"]) / "retain" / "model" / "model.safetensors").is_file()
    # the attack's numbers are the ones `eval tofu` gives on the saved copy
    again = folder.parent / "int4-eval"
    copy = attack / "unlearned" / "model"
    eval_args = [sys.executable, "-m", "tokenforget.cli", "eval", "tofu", "--model", str(copy)]
    eval_args += ["--out", str(again)]
    eval_args += ["--retain-logs", str(Path(numbers["yardstick"]) / "retain" / "eval")]
    eval_args += ["--config", str(folder / "config.yaml")]
    evaluated = subprocess.run(eval_args, env=env, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    summary = json.loads((again / "summary.json").read_text())
    for key in ("forget_quality", "model_utility", "forget_Q_A_Prob", "forget_truth_ratio"):
        assert summary[key] == pytest.approx(unlearned["after"][key], rel=1e-9), key
    # a saved model folder (not a run) in the world its config names, with --out
    model_args = [*args[:-1], str(folder / "unlearn" / "model"), "--config", str(folder / "config.yaml")]
    refused = subprocess.run(model_args, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "give --out" in refused.stderr
    plain = folder.parent / "plain-int8"
    done = subprocess.run(
        [*model_args, "--bits", "8", "--out", str(plain)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    eight = json.loads((plain / "quantize.json").read_text())
    assert eight["bits"] == 8 and set(eight["models"]) == {"retain", "target", "unlearned"}
    assert (plain / "original" / "eval" / "summary.json").is_file()  # the model unquantized, evaluated


def test_eval_harness_on_a_run_writes_its_results_into_the_run_and_its_report(finished_run):
    pytest.importorskip("lm_eval")
    folder, env = finished_run["folder"], finished_run["env"]
    args = [sys.executable, "-m", "tokenforget.cli", "eval", "harness", str(folder), "--limit", "8"]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((folder / "eval" / "harness" / "harness.json").read_text())
    assert record["model"] == str(folder / "unlearn" / "model")
    assert 0 <= record["results"]["tofu_world_facts_mc"]["acc,none"] <= 1
    assert "General capability (lm-evaluation-harness)" in (folder / "report.html").read_text()
    empty = subprocess.run([*args[:-2], "--tasks", ","], env=env, capture_output=True, text=True, timeout=300)
    assert empty.returncode == 2 and "--tasks is empty" in empty.stderr


def test_a_run_on_published_labels_names_them_as_its_identifier():
    from tokenforget.config import load_config
    from tokenforget.pipeline import identifier_label

    assert identifier_label(load_config()) == "predictability"
    labelled = load_config(overrides=["identify.labels=/data/forget01_gpt.jsonl"])
    assert identifier_label(labelled) == "labels forget01_gpt.jsonl"  # not the identifier it replaced


def test_a_sweep_keeping_the_best_weights_drops_the_others_and_a_resumed_sweep_reads_them(finished_run):
    """`sweep --keep best` in the finished run's world: of two lrs only the best point by the stated
    rule keeps its weights; the sweep run again reads both points instead of training them again;
    and `ask` on the dropped run names the command that remakes its model."""
    cli, settings = finished_run["args"][:3], finished_run["args"][4:]  # its run.name yields to the sweep's
    sweep = [*cli, "sweep", "--name", "keep", "--keep", "best", *settings, "--grid", "unlearn.lr=1e-9,1e-3"]
    env, runs = finished_run["env"], finished_run["folder"].parent
    first = subprocess.run(sweep, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    names = ("keep-lr1e-9", "keep-lr1e-3")
    headlines = {n: json.loads((runs / n / "summary.json").read_text())["headline"] for n in names}
    target_utility = headlines[names[0]]["target"]["model_utility"]
    heads = {n: h["unlearned"] for n, h in headlines.items()}
    kept = [n for n, h in heads.items() if h["model_utility"] >= 0.9 * target_utility]
    best = max(kept, key=lambda n: (heads[n]["forget_quality"], -heads[n]["kl_on_retain"]))
    (dropped,) = set(heads) - {best}  # lr 1e-9 leaves the target's utility: one run is always kept
    assert any((runs / best / "unlearn" / "model").glob("*.safetensors"))
    assert not any((runs / dropped / "unlearn" / "model").glob("*.safetensors"))
    assert f"deleted the weights of {dropped}" in " ".join(first.stdout.split())
    again = subprocess.run(sweep, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert " ".join(again.stdout.split()).count("(finished: read, not run)") == 2
    assert not any((runs / dropped / "unlearn" / "model").glob("*.safetensors"))  # not trained again
    ask = subprocess.run([*cli, "ask", str(runs / dropped), "Who?"], env=env, capture_output=True, text=True)
    message = " ".join((ask.stdout + ask.stderr).split())
    assert ask.returncode == 2 and "holds no weights" in message and "tokenforget run --config" in message


def test_an_attack_on_a_run_whose_model_is_gone_says_so_and_a_rerun_remakes_it(finished_run):
    """Last in this module: it deletes the shared run's weights (as a user freeing disk would) and
    follows the error's advice, which must bring them back."""
    from tokenforget.cli import _attack_target
    from tokenforget.errors import TokenforgetError

    run, model = finished_run["folder"], finished_run["folder"] / "unlearn" / "model"
    before = {p.name: p.read_bytes() for p in model.glob("*.safetensors")}
    for weights in model.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(TokenforgetError, match=r"holds no weights .*`tokenforget run --config"):
        _attack_target(run, "quantize", None, None, None)
    again = [*finished_run["args"][:4], "--config", str(run / "config.yaml")]
    rerun = subprocess.run(again, env=finished_run["env"], capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "unlearn: already done" not in rerun.stdout + rerun.stderr  # trained again, to the same weights
    assert {p.name: p.read_bytes() for p in model.glob("*.safetensors")} == before
    assert _attack_target(run, "quantize", None, None, None).model == model
