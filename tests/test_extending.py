"""docs/extending.md stays true: its three example files, run as written, add a working method, identifier
and membership metric through the registries alone."""

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tokenforget.config import config_keys, load_config
from tokenforget.data.records import read_samples
from tokenforget.errors import ConfigError
from tokenforget.evaluate.attacks import ATTACKS, membership_attack
from tokenforget.forward.scoring import answer_losses
from tokenforget.identify.registry import IDENTIFIERS
from tokenforget.losses import METHODS
from tokenforget.models import load_model

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def guide_files() -> dict[str, str]:
    """The guide's example files: each ```python block that starts with `# file: NAME`."""
    blocks = re.findall(r"```python\n# file: (\S+)\n(.*?)```", GUIDE.read_text(), flags=re.S)
    return {name: f"# file: {name}\n{code}" for name, code in blocks}


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """The guide's files in a folder on sys.path; every registry is restored afterwards."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    for name, code in guide_files().items():
        (folder / name).write_text(code)
    monkeypatch.syspath_prepend(str(folder))
    saved = [(registry, dict(registry)) for registry in (METHODS, IDENTIFIERS, ATTACKS)]
    yield folder
    for registry, content in saved:
        registry.clear()
        registry.update(content)
    for name in ("toy_method", "toy_identifier", "toy_metric"):
        sys.modules.pop(name, None)


def test_the_guide_has_one_file_per_kind():
    assert set(guide_files()) == {"toy_method.py", "toy_identifier.py", "toy_metric.py"}


def test_a_method_from_its_own_file_runs_through_the_cli(plugin_dir, tmp_path, tiny_llama_dir, forget_file):
    env = {**os.environ, "TOKENFORGET_PLUGINS": "toy_method", "PYTHONPATH": str(plugin_dir), "COLUMNS": "200"}
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "tokenforget.cli",
        "unlearn",
        "--forget",
        str(forget_file),
        "--out",
        str(out),
    ]
    args += ["--model", str(tiny_llama_dir), "--method", "toy_ga", "--retain", "tofu-mini"]
    for setting in ("model.precision=fp32", "model.device=cpu", "unlearn.min_steps=0", "unlearn.epochs=1"):
        args += ["--set", setting]
    result = subprocess.run([*args, "--set", "unlearn.scale=3"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    # loss = gamma * (-scale * nll) + alpha * retain_nll, with gamma = alpha = 1
    assert rows[0]["loss"] == pytest.approx(-3 * rows[0]["forget_nll"] + rows[0]["retain_nll"], rel=1e-5)
    assert (out / "model" / "model.safetensors").is_file()
    refused = subprocess.run([*args, "--set", "unlearn.lam=1"], capture_output=True, text=True, env=env)
    assert refused.returncode == 2
    assert (
        "unlearn.lam: unknown key for method toy_ga (its own keys: gamma, alpha, tokens, scale)"
        in refused.stderr
    )
    listed = subprocess.run([*args[:4], "--help"], capture_output=True, text=True, env=env)
    assert "toy_ga" in listed.stdout and "scale=2.0" in listed.stdout


def test_a_method_registered_in_python_gets_its_keys(plugin_dir):
    importlib.import_module("toy_method")
    cfg = load_config(overrides=["unlearn.method=toy_ga"])
    assert cfg.unlearn.scale == 2.0
    assert any(key == "unlearn.scale" and "[toy_ga]" in text for key, _, text in config_keys())
    with pytest.raises(ConfigError, match=r"unlearn\.scale: Input should be greater than 0"):
        load_config(overrides=["unlearn.method=toy_ga", "unlearn.scale=-1"])


def test_an_identifier_from_its_own_file_labels_and_is_configured(plugin_dir, tmp_path):
    from tokenforget.identify.run import identify_file

    importlib.import_module("toy_identifier")
    forget = tmp_path / "f.jsonl"
    forget.write_text(json.dumps({"question": "Who?", "answer": "Basil lives in Paris with Ana."}) + "\n")
    cfg = load_config(overrides=["identify.method=capitalised"])
    report = identify_file(cfg, forget, tmp_path / "identified.jsonl")
    (sample,) = read_samples(tmp_path / "identified.jsonl")
    assert [sample.answer[s.start : s.end] for s in sample.spans] == ["Paris", "Ana"]
    assert report["identifier"] == "capitalised" and report["uw_spans"] == 2
    cfg = load_config(overrides=["identify.method=capitalised", "identify.skip_first=false"])
    identify_file(cfg, forget, tmp_path / "all.jsonl")
    (sample,) = read_samples(tmp_path / "all.jsonl")
    assert [sample.answer[s.start : s.end] for s in sample.spans] == ["Basil", "Paris", "Ana"]
    with pytest.raises(ConfigError, match="unknown key for identifier capitalised"):
        load_config(overrides=["identify.method=capitalised", "identify.threshold=0.5"])


def test_a_membership_metric_from_its_own_file_is_scored(plugin_dir, tiny_llama_dir):
    from tokenforget.config import ModelSettings, PromptSettings
    from tokenforget.data.benchmarks import tofu_mini

    importlib.import_module("toy_metric")
    bench = tofu_mini()
    members, others = bench.forget[:3], bench.retain[:3]
    model, tok, precision = load_model(
        ModelSettings(name=str(tiny_llama_dir), precision="fp32"), str(tiny_llama_dir)
    )
    result = membership_attack(model, tok, members, others, PromptSettings(), precision)
    assert set(result["auc"]) == {"loss", "zlib", "min_k", "min_k_plus_plus", "worst_token"}
    stats = answer_losses(
        model, tok, [(s.question, s.answer) for s in members], PromptSettings(), precision, include_eos=False
    )
    for sample, row in zip(members, result["members"], strict=True):
        expected = -float(torch.as_tensor(stats[(sample.question, sample.answer)].token_nll).max())
        assert row["worst_token"] == pytest.approx(expected, rel=1e-6)
