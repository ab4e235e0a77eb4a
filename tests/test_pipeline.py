"""`tokenforget run` end to end on a tiny model: prepare + eval, summary.json, a rerun reuses everything."""

import json
import os
import subprocess
import sys


def test_run_end_to_end_then_rerun_reuses_the_run_folder(tmp_path, tiny_llama_dir):
    args = [
        sys.executable,
        "-m",
        "tokenforget.cli",
        "run",
        "--set",
        f"model.name={tiny_llama_dir}",
        "--set",
        "model.precision=fp32",
        "--set",
        "prepare.lora=null",
        "--set",
        "prepare.retain_epochs=0.25",
        "--set",
        "prepare.target_epochs=1",
        "--set",
        "prepare.eval_max_new_tokens=2",
        "--set",
        "eval.retain_rows=4",
        "--set",
        f"run.runs_dir={tmp_path / 'runs'}",
        "--set",
        "run.name=e2e",
    ]
    env = {**os.environ, "TOKENFORGET_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "e2e" / "summary.json").read_text())
    assert summary["stages_run"] == ["prepare", "eval"]
    assert "unlearn" in summary["stages_not_available_yet"]
    target, retain = summary["eval"]["target"], summary["eval"]["retain"]
    assert 0 <= target["forget_quality"] <= 1 and retain["forget_quality"] == 1.0  # retain vs itself
    assert target["model_utility"] is not None
    assert (tmp_path / "runs" / "e2e" / "config.yaml").is_file()
    assert "run folder:" in first.stdout and "stage times" in first.stdout
    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "cached in" in second.stderr and "eval forget" not in second.stderr  # nothing recomputed
    assert json.loads((tmp_path / "runs" / "e2e" / "summary.json").read_text())["eval"]["target"] == target
