import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tokenforget.config import ModelSettings, PromptSettings
from tokenforget.data import encode, pad_batch, tofu_mini
from tokenforget.data.encode import IGNORE_INDEX
from tokenforget.forward import answer_forward, token_nll
from tokenforget.models import load_model
from tokenforget.train import FitSettings, batch_schedule, fit_nll


@pytest.fixture
def tiny(tiny_llama_dir):
    return load_model(ModelSettings(precision="fp32"), str(tiny_llama_dir))


def encoded_world(tok, n=24):
    return [encode(s, tok, PromptSettings()) for s in tofu_mini().retain[:n]]


def test_answer_forward_equals_the_full_forward_at_answer_positions(tiny):
    model, tok, _ = tiny
    enc = encoded_world(tok, 3)
    batch = pad_batch(enc, tok.pad_token_id)
    with torch.no_grad():
        fwd = answer_forward(model, batch, keep_hidden=True)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    where = labels != IGNORE_INDEX
    assert fwd.logits.shape[0] == sum(e.n_answer for e in enc) == where.sum()
    assert torch.allclose(fwd.logits, full[:, :-1][where], atol=1e-5)
    assert torch.equal(fwd.targets, labels[where])
    assert fwd.rows.tolist() == [k for k, e in enumerate(enc) for _ in range(e.n_answer)]
    assert fwd.hidden.shape == (fwd.logits.shape[0], model.config.hidden_size)
    ref = torch.nn.functional.cross_entropy(
        full[:, :-1].reshape(-1, full.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    assert torch.allclose(token_nll(fwd).sum(), ref, rtol=1e-5)


def test_batch_schedule_is_deterministic_and_covers_each_epoch():
    lengths = [5, 9, 3, 7, 1, 8, 2, 6, 4, 10]
    a = batch_schedule(lengths, 3, 2.0, seed=1)
    assert a == batch_schedule(lengths, 3, 2.0, seed=1)
    assert a != batch_schedule(lengths, 3, 2.0, seed=2)
    assert len(a) == 7  # ceil(2 * 10 / 3)
    flat = [i for b in a for i in b]
    counts = torch.bincount(torch.tensor(flat), minlength=10)
    assert counts.min() >= 2 and counts.sum() == 21  # 2 epochs + 1 sample of the third


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, tiny_llama_dir, lora):
    from tokenforget.config import LoraSettings
    from tokenforget.models import wrap_lora

    settings = FitSettings(epochs=1.0, lr=1e-2, batch_size=4, micro_batch_size=2, checkpoint_every=2, seed=3)

    def run(folder, stop_at=None):
        model, tok, precision = load_model(ModelSettings(precision="fp32"), str(tiny_llama_dir))
        torch.manual_seed(len(str(folder)) + (stop_at or 0))  # a different global RNG state per run
        if lora:
            model = wrap_lora(model, LoraSettings(r=4, alpha=8), seed=7)
        enc = encoded_world(tok, 24)

        def on_step(step, loss):
            if step == stop_at:
                raise KeyboardInterrupt  # a crash between checkpoints

        result = fit_nll(model, enc, tok.pad_token_id, precision, settings, folder, on_step=on_step)
        return model, result

    reference, ref_result = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop_at=5)  # checkpoint at step 4, step 5 is lost and redone
    assert (tmp_path / "b" / "state.json").is_file()
    resumed, result = run(tmp_path / "b")
    assert result.losses == ref_result.losses
    for name, value in weights(reference).items():
        assert torch.equal(value, weights(resumed)[name]), name
    assert ref_result.losses[-1] < ref_result.losses[0]  # it learns


def test_checkpoint_state_round_trips_through_safetensors_and_json():
    from tokenforget.train import _join_tensors, _split_tensors

    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.arange(4.0)}, 7: {}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 7], "eps": float("inf")}],
        "rng": torch.arange(5, dtype=torch.uint8),
        "extra": {"name": None, "flag": True},
    }
    tensors = {}
    skeleton = json.loads(json.dumps(_split_tensors(state, tensors)))
    back = _join_tensors(skeleton, tensors)
    assert set(back["state"]) == {0, 7} and back["param_groups"][0]["betas"] == (0.9, 0.999)
    assert torch.equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert back["rng"].dtype == torch.uint8 and back["extra"] == state["extra"]
    with pytest.raises(TypeError, match="cannot checkpoint a object at /odd"):
        _split_tensors({"odd": object()}, {})


def test_background_checkpoint_holds_the_state_at_save_time_and_reports_a_failed_write(tmp_path, tiny):
    from tokenforget.train import CheckpointWriter, load_checkpoint

    model, _, _ = tiny
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    saved = weights(model)
    saved_moments = {k: v["exp_avg"].clone() for k, v in optimizer.state_dict()["state"].items()}
    writer = CheckpointWriter(background=True)
    writer.save(tmp_path / "ck", model, optimizer, scheduler, {"step": 1})
    optimizer.step()  # training goes on while the write is in flight: the file must not see it
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    writer.wait()
    fresh_optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, lambda step: 1.0)
    assert load_checkpoint(tmp_path / "ck", model, fresh_optimizer, fresh_scheduler) == {"step": 1}
    for name, value in saved.items():
        assert torch.equal(weights(model)[name], value), name
    for k, moment in fresh_optimizer.state_dict()["state"].items():
        assert torch.equal(moment["exp_avg"], saved_moments[k])

    (tmp_path / "file").write_text("")  # a checkpoint folder that cannot be created
    writer.save(tmp_path / "file" / "ck", model, optimizer, scheduler, {"step": 2})
    with pytest.raises(RuntimeError, match="writing a checkpoint failed"):
        writer.wait()
    writer.wait()  # the failure is reported once


def test_nan_loss_stops_with_a_checkpoint_and_names_the_step(tmp_path, tiny):
    model, tok, precision = tiny
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    settings = FitSettings(epochs=1.0, lr=1e-3, batch_size=4, micro_batch_size=4)
    with pytest.raises(FloatingPointError, match="loss term 'loss' is nan at step 1"):
        fit_nll(model, encoded_world(tok, 8), tok.pad_token_id, precision, settings, tmp_path / "ck")
    assert (tmp_path / "ck" / "state.json").is_file()


def test_prepare_survives_kill_9_and_resumes_to_the_same_weights(tmp_path, tiny_llama_dir):
    """`tokenforget prepare` killed with SIGKILL mid-training, run again: same models as a clean run."""
    args = [
        sys.executable,
        "-m",
        "tokenforget.cli",
        "prepare",
        "tofu-mini",
        "--model",
        str(tiny_llama_dir),
        "--set",
        "prepare.lora=null",
        "--set",
        "prepare.recipe=nested",  # the target stage's 20 steps, whatever the default recipe
        "--set",
        "prepare.retain_epochs=1",
        "--set",
        "prepare.target_epochs=2",
        "--set",
        "prepare.batch_size=8",
        "--set",
        "prepare.micro_batch_size=8",
        "--set",
        "prepare.lr=1e-3",
        "--set",
        "prepare.checkpoint_every=3",
        "--set",
        "prepare.eval_max_new_tokens=2",
        "--set",
        "model.precision=fp32",
    ]

    def env(cache):
        import os

        return {**os.environ, "TOKENFORGET_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}

    clean = subprocess.run(args, env=env(tmp_path / "clean"), capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-3000:]
    victim = subprocess.Popen(
        args, env=env(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    checkpoints = []
    while time.time() < deadline and victim.poll() is None:
        checkpoints = list((tmp_path / "killed").glob("prepared/*/work-*/checkpoint/state.json"))
        if checkpoints:
            break
        time.sleep(0.02)
    assert victim.poll() is None, "prepare finished before a checkpoint could be killed"
    victim.kill()  # SIGKILL: no chance to clean up
    victim.wait()
    resumed = subprocess.run(args, env=env(tmp_path / "killed"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step" in resumed.stderr
    for stage in ("retain", "target"):
        (a,) = (tmp_path / "clean").glob(f"prepared/*/{stage}/model.safetensors")
        (b,) = (tmp_path / "killed").glob(f"prepared/*/{stage}/model.safetensors")
        wa, wb = load_file(a), load_file(b)
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), (stage, key)
    assert "ROUGE-L" in clean.stdout and "retain model:" in clean.stdout
    # the world's vital signs: the retain model is, by definition, indistinguishable from itself
    assert "world vital signs" in clean.stdout
    (report,) = (tmp_path / "clean").glob("prepared/*/report.json")
    signs = json.loads(report.read_text())["vital_signs"]
    assert signs["retain"]["forget_quality"] == pytest.approx(1.0)
    assert 0 <= signs["target"]["forget_quality"] <= 1 and signs["target"]["model_utility"] >= 0
    assert "eval.token_labels" in signs["retain_minus_target"]  # no gold labels given: said, not guessed


def test_independent_recipe_trains_both_models_from_the_base(tmp_path, tiny_llama_dir, monkeypatch, capsys):
    import json

    from tokenforget.config import load_config
    from tokenforget.prepare import prepare

    monkeypatch.setenv("TOKENFORGET_CACHE", str(tmp_path))
    cfg = load_config(
        overrides=[
            f"model.name={tiny_llama_dir}",
            "model.precision=fp32",
            "prepare.lora=null",
            "prepare.recipe=independent",
            "prepare.retain_epochs=0.05",
            "prepare.target_epochs=0.05",
            "prepare.eval_max_new_tokens=1",
        ]
    )
    prepared = prepare(cfg)
    retain_log = json.loads((prepared.retain / "train_log.json").read_text())
    target_log = json.loads((prepared.target / "train_log.json").read_text())
    assert retain_log["samples"] == 360 and target_log["samples"] == 400  # target: the whole world
    recipe = json.loads((prepared.folder / "recipe.json").read_text())
    assert recipe["prepare"]["recipe"] == "independent"
    assert recipe["machine"]["cores"] == os.cpu_count()  # where the world was made: its arithmetic
    assert "was made on" not in capsys.readouterr().err
    recipe["machine"] = {"cpu": "AMD EPYC 9B14", "isa": ["avx2", "avx512f", "avx512_bf16"], "cores": 2}
    (prepared.folder / "recipe.json").write_text(json.dumps(recipe))
    again = prepare(cfg)  # reused as it is, and said so: the same settings here could make another target
    assert again.folder == prepared.folder
    said = " ".join(capsys.readouterr().err.split())  # the console writes to stderr
    assert "this world was made on AMD EPYC 9B14 (avx2, avx512f, avx512_bf16), not on this machine's" in said
    assert "TOKENFORGET_CACHE" in said
    nested = prepare(load_config(overrides=[*cfg_overrides(cfg), "prepare.recipe=nested"]))
    assert nested.folder != prepared.folder  # a different recipe never reuses the other's models
    assert json.loads((nested.target / "train_log.json").read_text())["samples"] == 80  # forget + replay


def cfg_overrides(cfg):
    return [
        f"model.name={cfg.model.name}",
        "model.precision=fp32",
        "prepare.lora=null",
        "prepare.retain_epochs=0.05",
        "prepare.target_epochs=0.05",
        "prepare.eval_max_new_tokens=1",
    ]


def test_sharded_checkpoint_goes_through_accelerate_and_lands_whole(tmp_path):
    """The FSDP / DeepSpeed checkpoint path (`save_state` + state.json, renamed into place) on a
    plain CPU accelerator: weights, AdamW state, scheduler and RNG come back; a kill between the two
    renames leaves `.old`, which the next load puts back."""
    from accelerate import Accelerator

    from tokenforget.train import load_sharded_checkpoint, save_sharded_checkpoint

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    folder = tmp_path / "checkpoints"
    assert load_sharded_checkpoint(accelerator, folder, "run-a") is None
    save_sharded_checkpoint(accelerator, folder, {"step": 1, "total_steps": 5}, "run-a")
    saved_weight = model.weight.detach().clone()
    saved_moment = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    next_draw = torch.rand(3)
    with torch.no_grad():
        model.weight.add_(1.0)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr() != [0.1 / 2]
    assert load_sharded_checkpoint(accelerator, folder, "run-a") == {"step": 1, "total_steps": 5}
    assert torch.equal(model.weight, saved_weight)
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], saved_moment)
    assert scheduler.get_last_lr() == [0.1 / 2]
    assert torch.equal(torch.rand(3), next_draw)  # the RNG resumes where the checkpoint was taken
    folder.replace(folder.with_name("checkpoints.old"))  # killed between the two renames
    assert not folder.exists()
    assert load_sharded_checkpoint(accelerator, folder, "run-a")["step"] == 1
    assert folder.is_dir() and not folder.with_name("checkpoints.old").exists()
    assert not folder.with_name("checkpoints.tmp").exists()


def test_a_sharded_run_resumes_only_from_a_folder_it_wrote(tmp_path):
    """accelerate's load_state unpickles: a folder whose stamp names another run, that has no stamp,
    or whose files changed since this run wrote them is refused before anything is read."""
    import json

    from accelerate import Accelerator

    from tokenforget.train import load_sharded_checkpoint, save_sharded_checkpoint

    accelerator = Accelerator(cpu=True)
    layer = torch.nn.Linear(4, 3)
    accelerator.prepare(layer, torch.optim.AdamW(layer.parameters()))  # something for save_state to write
    folder = tmp_path / "checkpoints"
    save_sharded_checkpoint(accelerator, folder, {"step": 1, "total_steps": 5}, "run-a")
    with pytest.raises(RuntimeError, match="not written by this run"):
        load_sharded_checkpoint(accelerator, folder, "run-b")
    pickled = next(p for p in folder.rglob("*") if p.is_file() and p.name != "state.json")
    pickled.write_bytes(pickled.read_bytes() + b"\0")
    with pytest.raises(RuntimeError, match="files differ from the ones this run wrote"):
        load_sharded_checkpoint(accelerator, folder, "run-a")
    state = json.loads((folder / "state.json").read_text())
    del state["stamp"]
    (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(RuntimeError, match=r"Delete the folder to start over"):
        load_sharded_checkpoint(accelerator, folder, "run-a")
