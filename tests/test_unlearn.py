"""`tokenforget unlearn` end to end on a tiny random Llama with the real SmolLM2 tokenizer."""

import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tokenforget.config import load_config
from tokenforget.errors import ConfigError, DataError
from tokenforget.losses import METHODS, at_reference, holds_theta0
from tokenforget.runs import read_step_log
from tokenforget.unlearn import unlearn


def config(tiny_llama_dir, forget, method, *extra):
    return load_config(
        overrides=[
            f"model.name={tiny_llama_dir}",
            "model.precision=fp32",
            "model.device=cpu",
            f"data.forget={forget}",
            "data.retain=tofu-mini",
            f"unlearn.method={method}",
            "unlearn.epochs=1",
            "unlearn.min_steps=0",  # the tests give their budgets in epochs
            "unlearn.batch_size=4",
            "unlearn.micro_batch_size=2",
            *extra,
        ]
    )


def log_rows(folder):
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_and_saves_a_model(tmp_path, tiny_llama_dir, forget_file, method):
    cfg = config(tiny_llama_dir, forget_file, method, "unlearn.lr=1e-3")
    result = unlearn(cfg, tmp_path / "run")
    rows = log_rows(result.folder)
    assert [r["step"] for r in rows] == [1, 2]  # 8 samples, batch 4, 1 epoch
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert (result.model_dir / "model.safetensors").is_file()
    assert not (result.folder / "checkpoints").exists()  # freed once the model is safe
    before = load_file(tiny_llama_dir / "model.safetensors")
    after = load_file(result.model_dir / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before), "training changed nothing"
    m = METHODS[method]
    # a frozen theta0 for the forget loss's own needs or for a KL retain term (ga_kl, tpo_kl)
    assert result.summary["theta0_in_memory"] == holds_theta0(m, m.retain)
    assert holds_theta0(m, m.retain) == (m.needs_ref_model or m.retain in ("kl", "rmu"))
    theta0_file = result.folder / "theta0.safetensors"
    sections = set()
    if theta0_file.is_file():
        with safe_open(str(theta0_file), framework="pt") as handle:
            sections = set((handle.metadata() or {}).keys()) - {"format"}
    # one file holds every theta0 number the run uses (here the loss's reference, when it has one)
    assert sections == ({"reference"} if m.needs_ref_logp or m.needs_ref_logit else set())
    retain_part = f"retain_{m.retain}"
    assert (retain_part in rows[0]) == (m.retain != "none")
    beta = m.defaults.get("beta")
    if method in ("tpo", "tpo_gd"):  # step-0 identity on a real model: the cache is aligned
        assert rows[0]["lpl"] == pytest.approx(at_reference(beta), abs=1e-5)
        assert rows[0]["delta"] == pytest.approx(0.0, abs=1e-5)
    if method == "npo":
        assert rows[0]["forget"] == pytest.approx(at_reference(beta), abs=1e-5)


@pytest.mark.parametrize("method", ["tpo_gd", "graddiff"])
def test_a_kl_retain_term_on_any_method_loads_theta0_and_starts_at_zero(
    tmp_path, tiny_llama_dir, forget_file, method
):
    cfg = config(tiny_llama_dir, forget_file, method, "unlearn.lr=1e-3", "unlearn.retain_loss=kl")
    result = unlearn(cfg, tmp_path / "run")
    rows = log_rows(result.folder)
    assert result.summary["theta0_in_memory"] and result.summary["retain_term"] == "kl"
    assert "retain_nll" not in rows[0]
    # step 1 is taken at theta0 itself: KL(theta0 || theta) is 0 there, and the first update moves it
    assert rows[0]["retain_kl"] == pytest.approx(0.0, abs=1e-6)
    assert rows[1]["retain_kl"] > 1e-6


def frozen_forward_rows(monkeypatch):
    """Spy on AnswerModel: the row count of every forward of a frozen model (theta0's copy)."""
    from tokenforget import forward

    seen = []
    original = forward.AnswerModel.forward

    def spy(self, input_ids, *args, **kwargs):
        if not any(p.requires_grad for p in self.parameters()):
            seen.append(input_ids.shape[0])
        return original(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(forward.AnswerModel, "forward", spy)
    return seen


# micro-batches of 2 forget + 2 retain rows: theta0 sees the retain rows for a KL or RMU retain term
# (a KL retain step 1 at exactly 0 shows they are the right rows), the forget rows for UNDIAL's loss
@pytest.mark.parametrize(
    "method, extra, rows",
    [
        ("tpo_kl", [], 2),
        ("ga_kl", [], 2),
        ("rmu", [], 2),
        ("undial", [], 2),
        ("undial", ["unlearn.retain_loss=kl"], 4),
    ],
)
def test_theta0_runs_on_the_rows_it_is_read_on(
    tmp_path, tiny_llama_dir, forget_file, monkeypatch, method, extra, rows
):
    seen = frozen_forward_rows(monkeypatch)
    unlearn(config(tiny_llama_dir, forget_file, method, "unlearn.lr=1e-3", *extra), tmp_path / "run")
    assert seen and set(seen) == {rows}, seen


def test_theta0_on_the_retain_rows_alone_gives_the_losses_of_a_forward_over_every_row(
    tmp_path, tiny_llama_dir, forget_file, monkeypatch
):
    from tokenforget import session

    seen = frozen_forward_rows(monkeypatch)
    cfg = config(tiny_llama_dir, forget_file, "tpo_kl", "unlearn.lr=1e-3")
    lean = log_rows(unlearn(cfg, tmp_path / "lean").folder)
    monkeypatch.setattr(session, "theta0_reads", lambda method, retain_term: (True, True))
    full = log_rows(unlearn(cfg, tmp_path / "full").folder)
    assert set(seen) == {2, 4}  # the two runs did differ in what theta0 saw
    assert [r["step"] for r in lean] == [r["step"] for r in full] == [1, 2]
    for a, b in zip(lean, full, strict=True):
        for key in ("loss", "lpl", "retain_kl"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key
    assert lean[1]["retain_kl"] > 1e-6  # the step-2 KL is a real number, not the step-1 zero


def uw_gw_logp_change(model_dir, base_dir, forget):
    """Mean change of log p over UW tokens and over GW tokens of the forget answers (after - before)."""
    from tokenforget.config import ModelSettings, PromptSettings
    from tokenforget.data import encode, pad_batch
    from tokenforget.forward import answer_forward, token_nll
    from tokenforget.identify import read_identified
    from tokenforget.models import load_model

    means = []
    for folder in (base_dir, model_dir):
        model, tok, _ = load_model(ModelSettings(precision="fp32"), str(folder))
        batch = pad_batch(
            [encode(s, tok, PromptSettings()) for s in read_identified(forget)], tok.pad_token_id
        )
        with torch.no_grad():
            logp = -token_nll(answer_forward(model, batch))
        uw = batch["uw_mask"][:, 1:][batch["labels"][:, 1:] != -100]
        means.append((logp[uw].mean().item(), logp[~uw].mean().item()))
    return means[1][0] - means[0][0], means[1][1] - means[0][1]


def test_tpo_pushes_down_unwanted_tokens_and_keeps_general_ones(tmp_path, tiny_llama_dir, forget_file):
    common = ["unlearn.lr=3e-3", "unlearn.epochs=4", "unlearn.micro_batch_size=4"]
    lpl_only = unlearn(config(tiny_llama_dir, forget_file, "tpo", *common, "unlearn.lam=0"), tmp_path / "a")
    d_uw, d_gw = uw_gw_logp_change(lpl_only.model_dir, tiny_llama_dir, forget_file)
    assert d_uw < -0.1 and abs(d_gw) < 0.05, (d_uw, d_gw)  # LPL moves UW tokens only
    faithful = unlearn(config(tiny_llama_dir, forget_file, "tpo", *common), tmp_path / "b")
    d_uw, d_gw = uw_gw_logp_change(faithful.model_dir, tiny_llama_dir, forget_file)
    # on a random model PL raises every token; UW still ends well below GW
    assert d_uw < d_gw - 0.1, (d_uw, d_gw)


def test_reference_cache_is_reused_across_runs_and_recomputed_when_the_data_change(
    tmp_path, tiny_llama_dir, forget_file, monkeypatch
):
    import tokenforget.session as module

    monkeypatch.setenv("TOKENFORGET_CACHE", str(tmp_path / "cache"))
    unlearn(config(tiny_llama_dir, forget_file, "npo"), tmp_path / "a")
    calls = []
    original = module.compute_reference
    monkeypatch.setattr(module, "compute_reference", lambda *a, **k: calls.append(1) or original(*a, **k))
    unlearn(config(tiny_llama_dir, forget_file, "npo", "unlearn.lr=2e-5"), tmp_path / "b")
    assert calls == []  # same model, texts and precision: the shared cache serves
    other = tmp_path / "other.jsonl"
    other.write_text("".join(forget_file.read_text().splitlines(keepends=True)[:4]))
    unlearn(config(tiny_llama_dir, other, "npo"), tmp_path / "c")
    assert calls == [1]


def test_inputs_that_cannot_work_are_refused_with_the_fix(tmp_path, tiny_llama_dir):
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"question": "Who?", "answer": "Basil Mahfouz."}) + "\n")
    with pytest.raises(DataError, match="run `tokenforget identify` first"):
        unlearn(config(tiny_llama_dir, plain, "tpo"), tmp_path / "a")
    with pytest.raises(DataError, match="--tokens uw"):
        unlearn(config(tiny_llama_dir, plain, "ga", "unlearn.tokens=uw"), tmp_path / "b")
    cfg = load_config(
        overrides=[f"model.name={tiny_llama_dir}", f"data.forget={plain}", "unlearn.method=graddiff"]
    )
    with pytest.raises(ConfigError, match="no retain set was given"):
        unlearn(cfg, tmp_path / "c")
    with pytest.raises(ConfigError, match="unknown method 'gd'"):
        load_config(overrides=["unlearn.method=gd"])


def test_nan_loss_stops_with_a_checkpoint_naming_step_and_term(tmp_path, tiny_llama_dir, forget_file):
    from transformers import LlamaForCausalLM

    broken = tmp_path / "broken"
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    for file in tiny_llama_dir.iterdir():
        if not (broken / file.name).exists():  # the tokenizer files
            (broken / file.name).write_bytes(file.read_bytes())
    cfg = config(broken, forget_file, "ga")
    with pytest.raises(FloatingPointError, match=r"loss term '.*' is nan at step 1"):
        unlearn(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "state.json").is_file()


def cli_args(tiny_llama_dir, forget, out, method, *extra):
    return [
        "-m",
        "tokenforget.cli",
        "unlearn",
        "--forget",
        str(forget),
        "--out",
        str(out),
        "--model",
        str(tiny_llama_dir),
        "--method",
        method,
        "--set",
        "model.precision=fp32",
        "--set",
        "model.device=cpu",
        "--set",
        "unlearn.lr=1e-3",
        "--set",
        "unlearn.min_steps=0",  # the tests give their budgets in epochs
        *extra,
    ]


def accelerate_launch(processes: int, *flags: str) -> list[str]:
    """`accelerate launch` of N processes on this machine, without mixed precision or compilation."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    fixed = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launcher, "--num_processes", str(processes), *fixed, *flags]


def weights_of(folder):
    return load_file(folder / "model" / "model.safetensors")


def assert_same_training(tiny_llama_dir, reference, other, tolerance: float) -> None:
    """`other` trained like `reference`: the same weight names, final weights apart by less than
    `tolerance` x how far training moved them, and the same per-step losses (rel 1e-4)."""
    base = load_file(tiny_llama_dir / "model.safetensors")
    a, b = weights_of(reference), weights_of(other)
    assert set(a) == set(b)
    moved = max(float((a[k] - base[k]).abs().max()) for k in a)
    gap = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved > 1e-3  # training really moved the weights
    assert gap < tolerance * moved, (gap, moved)
    assert [r["loss"] for r in log_rows(other)] == pytest.approx(
        [r["loss"] for r in log_rows(reference)], rel=1e-4
    )


@pytest.mark.parametrize(
    ("method", "more"),
    [
        ("npo_rt", ["--set", "unlearn.eval_every=2"]),
        ("atwu", ["--set", "atwu.update_every=2", "--set", "atwu.scorer_lr=0.5"]),
    ],
    ids=["npo_rt-with-trajectory", "atwu-scorer-state"],
)
def test_unlearn_survives_kill_9_and_resumes_to_the_same_weights(
    tmp_path, tiny_llama_dir, forget_file, method, more
):
    extra = [
        "--retain",
        "tofu-mini",
        "--set",
        "unlearn.epochs=6",
        "--set",
        "unlearn.checkpoint_every=2",
        *more,
    ]
    env = {**os.environ, "TOKENFORGET_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    clean_args = cli_args(tiny_llama_dir, forget_file, tmp_path / "clean", method, *extra)
    clean = subprocess.run(
        [sys.executable, *clean_args], env=env, capture_output=True, text=True, timeout=600
    )
    assert clean.returncode == 0, clean.stderr[-3000:]
    shared_theta0 = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("trajectory/*.safetensors")}
    args = [sys.executable, *cli_args(tiny_llama_dir, forget_file, tmp_path / "killed", method, *extra)]
    victim = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    state = tmp_path / "killed" / "checkpoints" / "state.json"
    while time.time() < deadline and victim.poll() is None and not state.is_file():
        time.sleep(0.02)
    assert victim.poll() is None, "unlearn finished before a checkpoint could be killed"
    victim.kill()  # SIGKILL: no chance to clean up
    victim.wait()
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step" in resumed.stderr
    a, b = weights_of(tmp_path / "clean"), weights_of(tmp_path / "killed")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    clean_log, resumed_log = log_rows(tmp_path / "clean"), log_rows(tmp_path / "killed")
    assert [r["step"] for r in resumed_log] == list(range(1, 7))  # no step logged twice or lost
    assert [r["loss"] for r in resumed_log] == [r["loss"] for r in clean_log]
    if "unlearn.eval_every=2" in more:  # the in-training evaluation resumed on the same curve
        from tokenforget.runs import read_step_log

        clean_t = read_step_log(tmp_path / "clean" / "trajectory.jsonl")
        resumed_t = read_step_log(tmp_path / "killed" / "trajectory.jsonl")
        assert [r["step"] for r in resumed_t] == [0, 2, 4, 6]
        for a_row, b_row in zip(clean_t, resumed_t, strict=True):
            assert b_row == pytest.approx(a_row, abs=1e-9)
        assert clean_t[0]["uw_dlogp"] == 0.0 and clean_t[0]["gw_dlogp"] == 0.0  # step 0 is theta0
        # the second run read the first one's step-0 scores from the user cache, not rewriting them
        assert len(shared_theta0) == 1
        assert shared_theta0 == {p: p.stat().st_mtime_ns for p in shared_theta0}
        assert not any((tmp_path / "cache" / "trajectory").glob("*.tmp*"))
        with safe_open(str(tmp_path / "killed" / "theta0.safetensors"), framework="pt") as handle:
            assert set(handle.metadata()) == {"format", "reference", "trajectory"}  # one theta0 file
        assert clean_t[-1]["uw_dlogp"] < 0  # NPO pushed the forget answers down
        unlearn_json = json.loads((tmp_path / "clean" / "unlearn.json").read_text())
        assert 0 < unlearn_json["eval_every_seconds"] < unlearn_json["seconds"]
    if method == "atwu":  # the scorer resumed exactly too: the same learned weights
        a_w = (tmp_path / "clean" / "token_weights.jsonl").read_text()
        assert a_w == (tmp_path / "killed" / "token_weights.jsonl").read_text()
        assert any(r["mean_g"] != 0.5 for r in clean_log[2:])  # the scorer did learn


@pytest.mark.parametrize(
    ("method", "more"),
    [
        ("ga", []),
        ("npo", []),
        ("atwu", ["--retain", "tofu-mini", "--set", "atwu.update_every=1", "--set", "atwu.scorer_lr=0.5"]),
    ],
    ids=["ga", "npo", "atwu-scorer-reduced"],
)
def test_two_processes_match_one_with_the_same_global_batch(
    tmp_path, tiny_llama_dir, forget_file, method, more
):
    """DDP over 2 CPU processes (accelerate launch) = 1 process with micro-batches of half the batch
    (ATWU: the scorer's gradients are averaged over processes, so it stays the same everywhere)."""
    env = {**os.environ, "TOKENFORGET_CACHE": str(tmp_path / "cache")}
    extra = [
        "--set",
        "unlearn.epochs=2",
        "--set",
        "unlearn.batch_size=4",
        "--set",
        "unlearn.micro_batch_size=2",
        *more,
    ]
    one = subprocess.run(
        [sys.executable, *cli_args(tiny_llama_dir, forget_file, tmp_path / "one", method, *extra)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            # torchrun + gloo; with model.device=cpu the processes run on the CPU
            *accelerate_launch(2, "--multi_gpu"),
            *cli_args(tiny_llama_dir, forget_file, tmp_path / "two", method, *extra),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "unlearn.json").read_text())["processes"] == 2
    # ATWU's scorer (lr 0.5, a step after every model step) feeds each step's all-reduce-ordered
    # gradient sums back into the next step's token weights, which magnifies float32 rounding: on an
    # Intel Xeon with AMX the final weights differ by 3.5e-3 x how far they moved (below 1e-3 on an AMD
    # EPYC). The per-step losses (rel 1e-4) and the learned token weights (abs 1e-4) still agree; the
    # latter is the check that catches a scorer left unreduced across the processes (tried: without
    # the reduce its scores differ by about 6e-3).
    tolerance = 1e-2 if method == "atwu" else 1e-3
    assert_same_training(tiny_llama_dir, tmp_path / "one", tmp_path / "two", tolerance=tolerance)
    if method == "atwu":  # the learned weights agree too (written by the main process at the end)
        one_w = [json.loads(x) for x in (tmp_path / "one" / "token_weights.jsonl").read_text().splitlines()]
        two_w = [json.loads(x) for x in (tmp_path / "two" / "token_weights.jsonl").read_text().splitlines()]
        a_scores = [t["score"] for row in one_w for t in row["token_scores"]]
        b_scores = [t["score"] for row in two_w for t in row["token_scores"]]
        assert b_scores == pytest.approx(a_scores, abs=1e-4)
        assert any(abs(v - 0.5) > 1e-3 for v in a_scores)  # the scorer moved


def test_lora_run_writes_the_adapter_or_merged_weights(tmp_path, tiny_llama_dir, forget_file):
    lora = ["unlearn.lora.r=4", "unlearn.lr=1e-2"]
    merged = unlearn(config(tiny_llama_dir, forget_file, "ga", *lora), tmp_path / "merged")
    assert (merged.model_dir / "model.safetensors").is_file()
    adapter = unlearn(
        config(tiny_llama_dir, forget_file, "ga", *lora, "unlearn.merge_lora=false"), tmp_path / "a"
    )
    assert (adapter.model_dir / "adapter_model.safetensors").is_file()
    assert not (adapter.model_dir / "model.safetensors").exists()


def test_a_finished_run_is_not_trained_again_and_a_changed_config_is_refused(
    tmp_path, tiny_llama_dir, forget_file
):
    first = unlearn(config(tiny_llama_dir, forget_file, "ga"), tmp_path / "run")
    again = unlearn(config(tiny_llama_dir, forget_file, "ga"), tmp_path / "run")
    assert again.summary == first.summary
    with pytest.raises(ConfigError, match="different config"):
        unlearn(config(tiny_llama_dir, forget_file, "ga", "unlearn.lr=1"), tmp_path / "run")
    # how often checkpoints are written changes no result: the run reopens, its config is kept
    saved = (tmp_path / "run" / "config.yaml").read_text()
    rarer = config(tiny_llama_dir, forget_file, "ga", "unlearn.checkpoint_every=99")
    reopened = unlearn(rarer, tmp_path / "run")
    assert reopened.summary == first.summary
    assert (tmp_path / "run" / "config.yaml").read_text() == saved


def test_deepspeed_auto_values_come_from_the_run_and_contradictions_are_refused():
    from types import SimpleNamespace

    from tokenforget.distributed import configure_deepspeed

    def accelerator(config: dict) -> SimpleNamespace:
        plugin = SimpleNamespace(deepspeed_config=config)
        return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), gradient_accumulation_steps=1)

    # what `accelerate launch --use_deepspeed --zero_stage 2` writes when no flag sets the rest
    launched = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": 1,
        "gradient_clipping": "auto",
    }
    acc = accelerator(launched)
    configure_deepspeed(acc, micro=2, n_micro=4, max_grad_norm=0.5)
    assert launched["train_micro_batch_size_per_gpu"] == 2
    assert launched["gradient_accumulation_steps"] == 4
    assert launched["gradient_clipping"] == 0.5
    assert acc.gradient_accumulation_steps == 4
    with pytest.raises(ConfigError, match=r"train_micro_batch_size_per_gpu=8, this run needs 2"):
        configure_deepspeed(accelerator({"train_micro_batch_size_per_gpu": 8}), 2, 4, 1.0)
    with pytest.raises(ConfigError, match=r"gradient_accumulation_steps=3, this run needs 4"):
        configure_deepspeed(accelerator({"gradient_accumulation_steps": 3}), 2, 4, 1.0)
    with pytest.raises(ConfigError, match=r"'optimizer' section: remove it"):
        configure_deepspeed(accelerator({"optimizer": {"type": "AdamW"}}), 2, 4, 1.0)


class Killed(BaseException):
    """A kill -9 at a chosen instant, in-process: nothing catches it and nothing is cleaned up."""


def kill_inside_a_checkpoint_write(monkeypatch, point: str, on_write: int = 2) -> None:
    """Make the `on_write`-th checkpoint write die at `point` of its renames: before them (the new
    checkpoint staged, the old one in place), between them (the old one moved aside to `.old`, the
    new one still staged) or after them (the new one in place, `.old` not yet removed)."""
    import tokenforget.train as train

    real, writes = train._swap_into_place, [0]

    def swap(staging, folder):
        writes[0] += 1
        if writes[0] != on_write:
            return real(staging, folder)
        if point == "before":
            raise Killed
        folder.replace(folder.with_name(folder.name + ".old"))
        if point == "between":
            raise Killed
        staging.replace(folder)
        raise Killed

    monkeypatch.setattr(train, "_swap_into_place", swap)


@pytest.mark.parametrize("point", ["before", "between", "after"])
def test_a_kill_at_each_point_of_a_checkpoint_write_resumes_to_the_uninterrupted_run(
    tmp_path, tiny_llama_dir, forget_file, monkeypatch, point
):
    """One function decides where a run resumes, for the weights and for train_log.jsonl alike: the
    resumed run ends with the uninterrupted run's weights and log, no step logged twice or lost."""
    settings = ("unlearn.epochs=6", "unlearn.checkpoint_every=2", "unlearn.lr=1e-3")
    cfg = config(tiny_llama_dir, forget_file, "npo_rt", *settings)
    unlearn(cfg, tmp_path / "clean")
    with monkeypatch.context() as patch:
        kill_inside_a_checkpoint_write(patch, point)  # the checkpoint of step 4 (of 12)
        with pytest.raises(Killed):
            unlearn(cfg, tmp_path / "killed")
    killed = tmp_path / "killed"
    assert [r["step"] for r in log_rows(killed)] == list(range(1, 5))  # logged before the write died
    unlearn(cfg, killed)
    a, b = weights_of(tmp_path / "clean"), weights_of(killed)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    clean_log, resumed_log = log_rows(tmp_path / "clean"), log_rows(killed)
    assert [r["step"] for r in resumed_log] == list(range(1, 13))
    assert [r["loss"] for r in resumed_log] == [r["loss"] for r in clean_log]
    assert not any(killed.glob("checkpoints*"))


def test_a_small_forget_set_gets_at_least_min_steps(tmp_path, tiny_llama_dir, forget_file):
    result = unlearn(config(tiny_llama_dir, forget_file, "ga", "unlearn.min_steps=5"), tmp_path / "run")
    assert [r["step"] for r in log_rows(result.folder)] == [1, 2, 3, 4, 5]  # epochs alone: 2 steps
    assert result.summary["steps"] == 5 and result.summary["stopped"] == {
        "reason": "the step budget: unlearn.min_steps=5 (1 epoch of 8 forget answers at batch 4 would be 2)",
        "step": 5,
    }


def test_unlearning_stops_when_its_criterion_is_met_and_says_why(tmp_path, tiny_llama_dir, forget_file):
    """stop_when ends the run at the first evaluation point where every condition holds (here the
    forget answers' UW log-probability 0.05 below theta0's); the run records what stopped it and when."""
    stop = ("unlearn.stop_when=[uw_dlogp<=-0.05]", "unlearn.eval_every=1", "unlearn.max_steps=30")
    result = unlearn(config(tiny_llama_dir, forget_file, "ga", "unlearn.lr=1e-3", *stop), tmp_path / "run")
    steps = result.summary["steps"]
    points = read_step_log(result.folder / "trajectory.jsonl")
    assert 1 <= steps < 30 and [p["step"] for p in points] == list(range(steps + 1))
    assert points[-1]["uw_dlogp"] <= -0.05 < min(p["uw_dlogp"] for p in points[:-1])  # the first point met
    assert result.summary["stopped"]["step"] == steps
    assert result.summary["stopped"]["reason"].startswith("stop_when met: uw_dlogp ")
    assert [r["step"] for r in log_rows(result.folder)] == list(range(1, steps + 1))
    assert (result.model_dir / "model.safetensors").is_file()


def test_auto_stop_when_asks_hand_marked_spans_to_stop_leaking_and_leaves_the_rest_to_the_budget(
    tmp_path, tiny_llama_dir, forget_file
):
    """stop_when=auto (the default): with spans marked by hand (identify.method=spans) the run goes on
    until no unwanted word comes out of the greedy answers, checked once per epoch, at most
    max_steps; with an identifier's labels, or a model that gives no span back before unlearning
    (this random one), the step budget decides."""
    from tokenforget.unlearn import concrete_stopping

    def concrete(n, *extra, one_process=True):
        u = concrete_stopping(load_config(overrides=list(extra)), n, one_process).unlearn
        return u.stop_when, u.eval_every

    assert concrete(4, "identify.method=spans") == (["uw_leak_rate<=0"], 1)  # a deletion request
    assert concrete(40, "identify.method=spans") == (["uw_leak_rate<=0"], 5)  # once per epoch at batch 8
    assert concrete(40, "identify.method=spans", "unlearn.eval_every=2") == (["uw_leak_rate<=0"], 2)
    assert concrete(400, "identify.method=spans") == ([], None)  # 500 steps by epochs: over the cap
    assert concrete(4) == ([], None)  # identifier labels
    assert concrete(4, "identify.method=spans", one_process=False) == ([], None)
    assert concrete(4, "identify.method=spans", "unlearn.stop_when=[]") == ([], None)

    marked = unlearn(
        config(tiny_llama_dir, forget_file, "npo_kl_uw", "identify.method=spans"), tmp_path / "marked"
    )
    points = read_step_log(marked.folder / "trajectory.jsonl")
    assert points[0]["uw_leak_rate"] == 0  # nothing to wait for
    assert marked.summary["stop_when"] == [] and marked.summary["settings"]["ratio"] == "sequence"
    assert marked.summary["steps"] == 2 and [p["step"] for p in points] == [0, 2]  # once per epoch
    plain = unlearn(config(tiny_llama_dir, forget_file, "ga"), tmp_path / "plain")
    assert plain.summary["stop_when"] == [] and plain.summary["steps"] == 2  # 1 epoch of 8 at batch 4
    assert not (plain.folder / "trajectory.jsonl").exists()
    assert plain.summary["stopped"]["reason"].startswith("the step budget: 1 epoch of 8")


def test_the_utility_guard_and_the_greedy_leak_criterion(tmp_path, tiny_llama_dir, forget_file):
    guard = (
        "unlearn.guard=[retain_Q_A_Prob>=1.5x]",
        "unlearn.eval_every=1",
        "unlearn.stop_when=[uw_leak_rate<=0]",
    )
    result = unlearn(config(tiny_llama_dir, forget_file, "ga", "unlearn.lr=1e-3", *guard), tmp_path / "run")
    assert result.summary["steps"] == 1  # no model keeps 1.5x its retain probability after a GA step
    assert result.summary["stopped"]["reason"].startswith("utility guard: retain_Q_A_Prob ")
    points = read_step_log(result.folder / "trajectory.jsonl")
    assert all(0 <= p["uw_leak_rate"] <= 1 for p in points)  # measured at every point (it generates)
    with pytest.raises(ConfigError, match=r"Fix: --set unlearn.eval_every=N"):
        unlearn(
            config(tiny_llama_dir, forget_file, "ga", "unlearn.stop_when=[uw_leak_rate<=0]"), tmp_path / "b"
        )
