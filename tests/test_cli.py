import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from tokenforget.cli import app


def cli(*args, cwd=None):
    """The real console entry point in a subprocess (exit codes, stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "tokenforget.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
        timeout=300,
    )


def test_help_teaches_the_workflow():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for word in ("prepare", "run", "data", "config", "--set section.key=value", "smollm2-135m-instruct"):
        assert word in result.output
    prepare_help = CliRunner().invoke(app, ["prepare", "--help"]).output
    assert "resume" in prepare_help.lower() or "continues" in prepare_help


def test_data_check_good_file_prints_what_it_holds(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"question": "Who?", "answer": "Basil.", "spans": [{"start": 0, "end": 5}]}\n')
    result = cli("data", "check", str(path))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["rows"] == 1 and info["kind"] == "qa" and info["spans"] == 1 and info["valid"] is True


def test_data_check_bad_file_exits_2_naming_file_line_and_fix(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "Who?", "answer": ""}\n')
    result = cli("data", "check", str(path))
    assert result.returncode == 2
    assert f"{path}:1" in result.stderr and "'answer' is blank" in result.stderr and "Fix:" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_bad_data_writes_nothing(tmp_path):
    bad = tmp_path / "forget.csv"
    bad.write_text("question,answer\nWho?,\n")
    result = cli("run", "--set", f"data.forget={bad}", "--set", f"run.runs_dir={tmp_path / 'runs'}")
    assert result.returncode == 2
    assert "forget.csv:2" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_bad_setting_is_a_clear_error():
    result = cli("config", "show", "--set", "prepare.lr=fast")
    assert result.returncode == 2
    assert "prepare.lr" in result.stderr and "Traceback" not in result.stderr
    unknown = cli("unlearn", "--no-such-option")
    assert unknown.returncode == 2
    assert "No such option: --no-such-option" in unknown.stderr and "Traceback" not in unknown.stderr


def test_config_show_and_schema_round_trip(tmp_path):
    shown = cli("config", "show", "--set", "prepare.lr=5e-4")
    assert shown.returncode == 0
    path = tmp_path / "c.yaml"
    path.write_text(shown.stdout)
    again = cli("config", "show", "--config", str(path))
    assert again.stdout == shown.stdout
    schema = json.loads(cli("config", "schema").stdout)
    assert "prepare" in schema["properties"]


def test_run_folder_refuses_a_different_config(tmp_path):
    from tokenforget.config import load_config
    from tokenforget.errors import ConfigError
    from tokenforget.runs import open_run

    base = [f"run.runs_dir={tmp_path}", "run.name=x"]
    folder = open_run(load_config(overrides=base))
    assert (folder / "config.yaml").is_file()
    assert open_run(load_config(overrides=base)) == folder  # same config: reopen (resume)
    try:
        open_run(load_config(overrides=[*base, "prepare.lr=1e-5"]))
    except ConfigError as exc:
        assert "prepare.lr" in str(exc)
    else:
        raise AssertionError("a changed config must not reuse the run folder")

    # a folder from a release without eval.generation_batch_size reopens while the key is at its
    # default, and is refused once it is not
    import yaml

    written = yaml.safe_load((folder / "config.yaml").read_text())
    del written["eval"]["generation_batch_size"]
    (folder / "config.yaml").write_text(yaml.safe_dump(written))
    assert open_run(load_config(overrides=base)) == folder
    try:
        open_run(load_config(overrides=[*base, "eval.generation_batch_size=7"]))
    except ConfigError as exc:
        assert "eval.generation_batch_size" in str(exc)
    else:
        raise AssertionError("a new key away from its default must not reuse the run folder")


def test_identify_spans_then_score_against_labels_in_the_published_layout(tmp_path):
    from conftest import GENERATIVE_LABELS as gold

    out = tmp_path / "identified.jsonl"
    made = cli("identify", "--method", "spans", "--forget", str(gold), "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["samples"] == 40
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["identifier"] == "spans" and rows[0]["spans"][-1]["text"] == "Basil Mahfouz Al-Kuwaiti"
    scored = cli("identify", "score", "--pred", str(out), "--gold", str(gold))
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout)
    assert result["word_f1"] == 1.0 and result["token_f1"] == 1.0 and "per_sample" not in result
    missing = cli("identify", "--method", "mlm", "--forget", str(gold), "--out", str(out))
    assert missing.returncode == 2 and "needs a masked LM" in missing.stderr


def test_unlearn_and_identify_help_list_every_method():
    from tokenforget.losses import METHODS

    text = CliRunner().invoke(app, ["unlearn", "--help"], terminal_width=200).output
    for name in METHODS:
        assert f"  {name} " in text, name
    text = CliRunner().invoke(app, ["identify", "--help"], terminal_width=200).output
    for name in ("predictability", "contrast", "mlm", "generative", "ner", "frequency", "spans", "union"):
        assert name in text, name


def test_ask_answers_with_every_model_side_by_side(tiny_llama_dir, tmp_path):
    run_folder = tmp_path / "runs" / "x"
    (run_folder / "unlearn").mkdir(parents=True)
    import shutil

    shutil.copytree(tiny_llama_dir, run_folder / "unlearn" / "model")  # a run folder = its unlearned model
    result = CliRunner().invoke(
        app,
        [
            "ask",
            str(tiny_llama_dir),
            str(run_folder),
            "Where was he born?",
            "--max-new-tokens",
            "3",
            "--set",
            "model.precision=fp32",
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "Where was he born?" in result.output
    assert str(tiny_llama_dir)[-20:] in result.output and str(run_folder)[-20:] in result.output
    missing = cli("ask", "only-a-question")
    assert missing.returncode == 2 and "at least one model" in missing.stderr


def test_config_keys_name_the_methods_that_take_each_key():
    text = CliRunner().invoke(app, ["config", "keys"]).output
    assert "[tpo, tpo_gd]" in text and "[simnpo] SimNPO" in text  # printed, not read as markup
