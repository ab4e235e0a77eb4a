"""Disk space: the peak a run writes, refused before any work when it does not fit, and a disk that
fills anyway explained (what is free, that the run resumes) instead of a traceback."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest
from safetensors import SafetensorError

from tokenforget import disk
from tokenforget.disk import DiskSpaceError, Need, check_space, checkpoint_bytes, is_disk_full, peak_bytes


def test_a_full_fine_tuning_checkpoint_pair_is_six_times_the_weights_and_lora_adds_nothing():
    # trainable weights + AdamW's two moments, twice while the next checkpoint is written
    assert checkpoint_bytes(100, lora=False) == 600
    assert checkpoint_bytes(100, lora=True) == 0


def test_the_peak_is_the_kept_models_plus_the_largest_checkpoint_pair(tmp_path):
    needs = [
        Need(tmp_path, 100, 0, "the retain model"),  # a LoRA world stage
        Need(tmp_path, 100, 0, "the target model"),
        Need(tmp_path, 100, 600, "the unlearned model"),
    ]
    assert peak_bytes(needs) == 900
    assert peak_bytes([]) == 0


def test_a_run_that_does_not_fit_is_refused_with_every_folder_and_size(tmp_path, monkeypatch):
    cache, runs = tmp_path / "cache" / "prepared", tmp_path / "runs" / "r" / "unlearn"
    needs = [
        Need(cache, 2_000_000_000, 0, "the target model"),
        Need(runs, 500_000_000, 3_000_000_000, "the unlearned model"),
    ]
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 5_000_000_000)
    with pytest.raises(DiskSpaceError) as caught:
        check_space(needs)
    message = str(caught.value)
    # one file system (both under tmp_path): 2.0 + 0.5 kept + 3.0 of checkpoints = 5.5 GB > 5.0
    assert "about 5.5 GB needed at the peak" in message and "5.0 GB free" in message
    assert str(cache) in message and str(runs) in message and "Fix:" in message
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 5_500_000_000)
    check_space(needs)  # exactly enough


def test_a_folder_that_does_not_exist_yet_is_measured_on_its_nearest_parent(tmp_path):
    assert disk.free_bytes(tmp_path / "not" / "yet") == disk.free_bytes(tmp_path)


def test_only_a_write_that_found_no_space_counts_as_a_full_disk():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    )
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(SafetensorError("Error while deserializing header: HeaderTooLarge"))
    assert not is_disk_full(ValueError("No space left on device"))


def _main(monkeypatch, args: list[str]) -> None:
    from tokenforget.cli import main

    monkeypatch.setattr(sys, "argv", ["tokenforget", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2


def test_run_refuses_before_it_makes_the_run_folder_or_the_world(
    tmp_path, monkeypatch, capsys, tiny_llama_dir
):
    monkeypatch.setenv("TOKENFORGET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 1000)
    runs = tmp_path / "runs"
    settings = {
        "model.name": tiny_llama_dir,
        "model.precision": "fp32",
        "run.runs_dir": runs,
        "run.name": "r",
    }
    _main(monkeypatch, ["run", *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]])
    message = capsys.readouterr().err
    assert "not enough free disk space" in message and "the retain model" in message
    assert "the unlearned model" in message and "1000" not in message  # sizes in GB, not raw bytes
    assert not runs.exists() and not (tmp_path / "cache" / "prepared").exists()


def test_a_disk_that_fills_during_a_run_is_explained_not_a_traceback(
    tmp_path, monkeypatch, capsys, tiny_llama_dir
):
    import tokenforget.pipeline

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tokenforget.pipeline, "check_space", full)
    _main(monkeypatch, ["run", "--set", f"model.name={tiny_llama_dir}", "--set", f"run.runs_dir={tmp_path}"])
    message = capsys.readouterr().err
    assert "the disk is full" in message and "GB free" in message
    assert "run the same command again" in message and "Traceback" not in message
    assert str(Path.cwd()) in message.replace("\n", "")


def test_prepare_refuses_a_world_that_does_not_fit_and_a_lora_world_writes_no_checkpoints(
    tmp_path, monkeypatch, capsys, tiny_llama_dir
):
    from tokenforget.config import Config
    from tokenforget.disk import world_needs
    from tokenforget.prepare import prepared_folder

    monkeypatch.setenv("TOKENFORGET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 1000)
    _main(monkeypatch, ["prepare", "--model", str(tiny_llama_dir), "--set", "model.precision=fp32"])
    assert "the retain model" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "prepared").exists()
    cfg = Config.model_validate({"model": {"name": str(tiny_llama_dir), "precision": "fp32"}})
    [retain, target] = world_needs(cfg, prepared_folder(cfg))
    assert retain.kept == disk.weight_bytes(tiny_llama_dir) and target.transient == 0  # LoRA world


def test_an_attack_counts_each_copy_it_has_yet_to_write_and_a_relearning_budget_its_checkpoints(tmp_path):
    from tokenforget.disk import copy_needs
    from tokenforget.models import MANIFEST
    from tokenforget.relearn import relearn_copies

    out, world = tmp_path / "run" / "attacks" / "relearn-x", tmp_path / "world" / "relearn-x" / "retain"
    copies = relearn_copies(["unlearned", "retain"], out, world, (0, 5, 10))
    # budget 0 is the model itself; the retain model's copies live in the world's folder
    assert sorted(copies) == sorted(
        [out / "unlearned" / "step-5", out / "unlearned" / "step-10", world / "step-5", world / "step-10"]
    )
    made = world / "step-5" / "model"
    made.mkdir(parents=True)
    (made / MANIFEST).write_text("{}")  # an earlier attack's copy, reused
    needs = copy_needs(copies, 100, trained=True)
    assert [n.what for n in needs] == [
        "the unlearned model after 5 relearning steps",
        "the unlearned model after 10 relearning steps",
        "the retain model after 10 relearning steps",
    ]
    assert peak_bytes(needs) == 3 * 100 + 600  # three copies kept + one fine-tune's checkpoint pair
    assert peak_bytes(copy_needs(copies, 100, trained=False)) == 300  # quantized copies: no training


@pytest.mark.parametrize("attack", ["relearn", "quantize"])
def test_an_attack_refuses_before_it_makes_a_world_or_a_copy(
    attack, tmp_path, monkeypatch, capsys, tiny_llama_dir
):
    if attack == "quantize":
        pytest.importorskip("torchao")
    monkeypatch.setenv("TOKENFORGET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 1000)
    out = tmp_path / "attack"
    model = ["--set", f"model.name={tiny_llama_dir}", "--set", "model.precision=fp32"]
    _main(monkeypatch, ["attack", attack, str(tiny_llama_dir), "--out", str(out), *model])
    message = " ".join(capsys.readouterr().err.split())
    assert "not enough free disk space" in message
    assert f"the target model in {tmp_path / 'cache' / 'prepared'}" in message  # its world, made first
    copy = (
        "the unlearned model after 5 relearning steps" if attack == "relearn" else "the target model in int4"
    )
    assert copy in message
    assert not out.exists() and not (tmp_path / "cache" / "prepared").exists()


def test_a_quantized_copy_is_counted_at_the_model_s_float32_size(tmp_path):
    import torch
    from safetensors.torch import save_file

    weights = {"a": torch.zeros(3, 4, dtype=torch.bfloat16), "b": torch.zeros(5)}
    save_file(weights, str(tmp_path / "model.safetensors"))
    assert disk.float32_bytes(tmp_path) == (12 + 5) * 4  # a bf16 model: its float32 copy is larger


def test_a_sweep_that_keeps_every_run_is_refused_before_its_first_point_when_all_do_not_fit(
    tmp_path, monkeypatch, capsys, tiny_llama_dir
):
    from tokenforget.config import load_config
    from tokenforget.pipeline import run_needs

    monkeypatch.setenv("TOKENFORGET_CACHE", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    settings = {"model.name": tiny_llama_dir, "model.precision": "fp32", "run.runs_dir": runs}
    sets = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    one_point = peak_bytes(run_needs(load_config(None, [f"{k}={v}" for k, v in settings.items()])))
    weights = disk.weight_bytes(tiny_llama_dir)
    # one point: retain + target + its unlearned model + a checkpoint pair (LoRA world, full unlearning)
    assert one_point == 2 * weights + weights + 6 * weights
    monkeypatch.setattr(
        disk, "free_bytes", lambda folder: one_point + weights
    )  # room for two points, not three
    sets = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    _main(monkeypatch, ["sweep", "--name", "s", *sets, "--grid", "unlearn.lr=1e-5,2e-5,3e-5"])
    message = " ".join(capsys.readouterr().err.split())
    assert "not enough free disk space" in message
    assert message.count("the retain model in") == 1  # the world the points share, counted once
    assert message.count("the unlearned model in") == 3
    assert not runs.exists() and not (tmp_path / "cache" / "prepared").exists()
