"""Every input is checked before any work: one error lists every problem (file, line, fix), exit 2,
nothing written."""

import pytest

from tokenforget.config import load_config
from tokenforget.errors import ConfigError, DataError
from tokenforget.inputs import check_inputs

GOOD = '{"question": "Who?", "answer": "Basil.", "spans": [{"start": 0, "end": 5}]}\n'
BROKEN = GOOD + '{"question": "Where?"}\n'  # line 2 has no answer


@pytest.fixture
def files(tmp_path):
    good, broken = tmp_path / "good.jsonl", tmp_path / "broken.jsonl"
    good.write_text(GOOD)
    broken.write_text(BROKEN)
    return good, broken


@pytest.mark.parametrize(
    "setting",
    ["data.forget", "data.retain", "data.holdout", "identify.labels", "eval.token_labels"],
)
def test_each_data_file_is_read_before_any_work(files, setting):
    good, broken = files
    base = {"data.forget": good}
    cfg = load_config(overrides=[f"{k}={v}" for k, v in {**base, setting: broken}.items()])
    with pytest.raises(DataError) as info:
        check_inputs(cfg)
    assert [(i.file, i.line) for i in info.value.issues] == [(str(broken), 2)]
    assert "answer" in str(info.value) and "Fix:" in str(info.value)


def test_a_missing_file_and_a_missing_model_folder(tmp_path, files):
    good, _ = files
    cfg = load_config(
        overrides=[
            f"data.forget={good}",
            f"data.retain={tmp_path / 'nope.jsonl'}",
            f"model.name={tmp_path / 'm'}",
        ]
    )
    with pytest.raises(DataError) as info:
        check_inputs(cfg)
    problems = {i.file: i.problem for i in info.value.issues}
    assert problems[str(tmp_path / "nope.jsonl")] == "does not exist"
    assert problems[str(tmp_path / "m")] == f"model folder {tmp_path / 'm'} does not exist"
    (tmp_path / "m").mkdir()
    with pytest.raises(DataError, match=r"has no config\.json"):
        check_inputs(cfg)
    (tmp_path / "m" / "config.json").write_text("{}")  # weights deleted to free disk
    with pytest.raises(DataError, match=r"no weights \(\*\.safetensors\)"):
        check_inputs(cfg)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"w")
    with pytest.raises(DataError) as info:
        check_inputs(cfg)
    assert [i.file for i in info.value.issues] == [str(tmp_path / "nope.jsonl")]  # the model is whole again


def test_the_contrast_identifiers_models_are_checked(tmp_path):
    cfg = load_config(overrides=["identify.method=contrast", f"identify.reference={tmp_path / 'ref'}"])
    with pytest.raises(DataError, match=r"change identify.reference"):
        check_inputs(cfg)


def test_full_tofus_folder_names_each_missing_split(tmp_path):
    folder = tmp_path / "tofu"
    folder.mkdir()
    (folder / "forget05.json").write_text(GOOD)
    cfg = load_config(overrides=["run.benchmark=tofu", "run.tofu_split=forget05", f"data.tofu={folder}"])
    with pytest.raises(DataError) as info:
        check_inputs(cfg)
    missing = sorted(i.file.rsplit("/", 1)[1] for i in info.value.issues)
    assert missing == [
        "forget05_perturbed.json",
        "real_authors_perturbed.json",
        "retain95.json",
        "retain_perturbed.json",
        "world_facts_perturbed.json",
    ]


def test_a_token_setting_the_method_ignores_is_refused_with_the_way_out(files):
    good, _ = files
    for method in ("tpo", "atwu"):
        cfg = load_config(overrides=[f"data.forget={good}", f"unlearn.method={method}", "unlearn.tokens=uw"])
        with pytest.raises(ConfigError, match=r"has no effect on method .*Fix: drop --tokens .*: ga, "):
            check_inputs(cfg)
    check_inputs(load_config(overrides=[f"data.forget={good}", "unlearn.method=ga", "unlearn.tokens=uw"]))


def test_the_main_job_lists_every_problem_at_once_exits_2_and_writes_nothing(tmp_path, files):
    from test_cli import cli

    good, broken = files
    runs = tmp_path / "runs"
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"question": "Who?", "answer": 3}\n')
    result = cli(
        "run",
        *("--set", f"run.runs_dir={runs}", "--set", f"data.forget={good}"),
        *("--set", f"data.holdout={broken}", "--set", f"eval.token_labels={labels}"),
        *("--set", f"model.name={tmp_path / 'no-model'}"),
    )
    assert result.returncode == 2, result.stderr
    text = " ".join(result.stderr.split())
    assert "3 problem(s)" in text
    assert f"{broken}:2" in text and f"{labels}:1" in text and "no-model does not exist" in text
    assert not runs.exists()


def test_a_bad_config_file_is_named_before_any_work(tmp_path):
    from test_cli import cli

    config = tmp_path / "exp.yaml"
    config.write_text("unlearn:\n  lr: fast\n")
    result = cli("run", "--config", str(config), "--set", f"run.runs_dir={tmp_path / 'runs'}")
    assert result.returncode == 2 and "unlearn.lr" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_eval_commands_check_their_files_and_models_first(tmp_path, files):
    from test_cli import cli

    _, broken = files
    out = tmp_path / "mia.json"
    result = cli(
        "eval", "mia", "--model", str(tmp_path / "gone"), "--members", str(broken), "--nonmembers",
        str(tmp_path / "holdout.jsonl"), "--out", str(out),
    )  # fmt: skip
    text = " ".join(result.stderr.split())
    assert result.returncode == 2 and "3 problem(s)" in text
    assert f"{broken}:2" in text and "holdout.jsonl: does not exist" in text and "gone does not exist" in text
    assert not out.exists()


def test_the_default_method_on_your_own_forget_set_asks_for_a_retain_set_before_any_work(files):
    good, _ = files
    own = [f"data.forget={good}"]
    with pytest.raises(ConfigError) as info:
        check_inputs(load_config(overrides=own))  # the default, npo_kl_uw, reads retain answers
    message = str(info.value)
    assert "'npo_kl_uw' uses a retain term (kl)" in message
    assert "--set data.retain=FILE" in message and "--set unlearn.method=tpo" in message
    check_inputs(load_config(overrides=[*own, "unlearn.method=tpo"]))  # the paper's TPO needs none
    check_inputs(load_config(overrides=[*own, f"data.retain={good}"]))
    check_inputs(load_config(overrides=[]))  # a benchmark brings its own retain answers
