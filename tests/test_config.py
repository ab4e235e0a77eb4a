import shutil
from pathlib import Path

import pytest

from tokenforget.config import Config, config_keys, load_config
from tokenforget.errors import ConfigError


def test_defaults_are_the_embedded_tofu_mini_job():
    cfg = load_config()
    assert cfg.model.name == "smollm2-135m-instruct"
    assert cfg.run.benchmark == "tofu-mini"
    assert cfg.prepare.recipe == "independent"  # TOFU's protocol


def test_each_recipe_brings_its_own_epochs_unless_given():
    independent = load_config().prepare
    assert (independent.retain_epochs, independent.target_epochs) == (3, 3)
    nested = load_config(overrides=["prepare.recipe=nested"]).prepare
    assert (nested.retain_epochs, nested.target_epochs) == (2, 6)  # the worlds made before, unchanged
    given = load_config(overrides=["prepare.target_epochs=1", "prepare.recipe=nested"]).prepare
    assert (given.retain_epochs, given.target_epochs) == (2, 1)  # a given number wins, in any order


def test_set_overrides_parse_yaml_scalars_and_nested_sections():
    cfg = load_config(
        overrides=[
            "prepare.lr=2e-4",
            "prepare.retain_epochs=1",
            "prepare.lora.r=8",
            "prompt.template=plain",
            "model.trust_remote_code=true",
        ]
    )
    assert cfg.prepare.lr == pytest.approx(2e-4)
    assert cfg.prepare.retain_epochs == 1
    assert cfg.prepare.lora.r == 8
    assert cfg.prompt.template == "plain"
    assert cfg.model.trust_remote_code is True
    assert load_config(overrides=["prepare.lora=null"]).prepare.lora is None


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("prepare:\n  lr: 0.0005\n  batch_size: 8\n  micro_batch_size: 4\nrun:\n  name: mine\n")
    cfg = load_config(path, ["prepare.lr=1e-5"])
    assert cfg.prepare.lr == pytest.approx(1e-5)
    assert cfg.prepare.batch_size == 8
    assert cfg.run.name == "mine"
    again = load_config(
        overrides=[
            f"{k}={v}"
            for k, v in _flat(cfg.model_dump(mode="json")).items()
            if v is not None and not isinstance(v, (dict, list))
        ]
    )
    assert again.prepare.lr == cfg.prepare.lr


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("prepare.lrr=1", "prepare.lrr: unknown key"),
        ("prepare.lr=-1", "prepare.lr: Input should be greater than 0"),
        ("prepare.recipe=magic", "prepare.recipe"),
        ("prepare.micro_batch_size=5", "must divide batch_size (8)"),
        ("prompt.plain_format=Q: {q}", "must contain the placeholder {question}"),
        ("prepare", "expected KEY=VALUE"),
        ("prepare.lr.x=1", "prepare.lr: Input should be a valid number"),
    ],
)
def test_bad_settings_say_which_key_and_why(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert fragment in str(info.value)


def test_bad_yaml_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("prepare: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_every_setting_is_documented():
    rows = config_keys()
    keys = {k for k, _, _ in rows}
    assert {"model.name", "prepare.lr", "prepare.lora.r", "prompt.template", "run.name"} <= keys
    assert not [k for k, _, d in rows if not d]
    assert Config.model_json_schema()["title"] == "Config"


def test_a_run_folder_continues_only_where_its_precision_means_the_same(tmp_path, monkeypatch):
    import json

    from tokenforget import runs

    def machine(auto: str) -> None:
        """What each setting resolves to on a machine where `auto` means `auto`."""
        meaning = {"auto": auto, "fp32": "float32", "bf16-autocast": "float32+autocast-bfloat16"}
        monkeypatch.setattr(runs, "precision_label", lambda settings: meaning[settings.precision])

    made = load_config()
    machine("float32")
    folder = runs.open_folder(tmp_path / "run", made)
    assert json.loads((folder / runs.PRECISION_FILE).read_text()) == {"precision": "float32"}
    saved = (folder / "config.yaml").read_text()
    assert runs.open_folder(folder, made) == folder
    machine("float32+autocast-bfloat16")  # a CPU with native bf16: auto means something else there
    with pytest.raises(ConfigError, match=r"meant float32; .* Continue it with --set model.precision=fp32"):
        runs.open_folder(folder, made)
    assert runs.open_folder(folder, load_config(overrides=["model.precision=fp32"])) == folder
    assert (folder / "config.yaml").read_text() == saved  # the folder keeps what made it
    # a folder made before precision.json existed compares the setting as written
    (folder / runs.PRECISION_FILE).unlink()
    with pytest.raises(ConfigError, match="different config"):
        runs.open_folder(folder, load_config(overrides=["model.precision=fp32"]))
    assert runs.open_folder(folder, made) == folder


def test_a_config_written_before_methods_had_their_own_settings_still_reads(tmp_path):
    """The flat layout (every method's and identifier's key, null = the default) maps to the new one."""
    from tokenforget.runs import open_folder

    old = Path(__file__).parent / "data" / "legacy" / "run_config_before_registries.yaml"
    cfg = load_config(old)
    assert cfg.unlearn.method == "tpo" and cfg.unlearn.beta == 0.3 and cfg.unlearn.lam == 1.0
    assert cfg.identify.method == "spans" and not hasattr(cfg.identify, "threshold")
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(old, folder / "config.yaml")
    assert open_folder(folder, cfg) == folder  # the same settings: the old folder is reopened
    with pytest.raises(ConfigError, match=r"unlearn\.lr"):
        open_folder(folder, load_config(old, ["unlearn.lr=1e-3"]))


def test_config_keys_print_a_default_made_by_a_factory():
    from tokenforget.config import config_keys

    rows = {key: default for key, default, _ in config_keys()}
    assert rows["identify.pos"] == "[]"  # a list field's factory, not pydantic's 'undefined'
    assert "PydanticUndefined" not in " ".join(rows.values())
