"""Membership attacks and KL on a tiny model: definitions hold per sample, training is detected."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tokenforget.config import ModelSettings, PromptSettings
from tokenforget.data import Sample, encode, tofu_mini
from tokenforget.evaluate.attacks import kl_to_reference, membership_attack, membership_scores
from tokenforget.evaluate.metrics import token_kl
from tokenforget.forward.scoring import min_k_plus_plus_z
from tokenforget.models import load_model
from tokenforget.train import FitSettings, fit_nll

PROMPT = PromptSettings()


def full_answer_logits(model, tok, sample):
    enc = encode(sample, tok, PROMPT)
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    positions = list(range(enc.prompt_len - 1, len(enc.input_ids) - 2))  # predict answer tokens, not EOS
    targets = torch.tensor(enc.input_ids[enc.prompt_len : len(enc.input_ids) - 1])
    return logits[positions], targets


def test_scores_follow_their_definitions(tiny_llama_dir):
    import zlib

    model, tok, precision = load_model(ModelSettings(precision="fp32"), str(tiny_llama_dir))
    samples = tofu_mini().forget[:3]
    scores = membership_scores(model, tok, samples, PROMPT, precision, k=0.5, batch_size=2)
    for sample, score in zip(samples, scores, strict=True):
        logits, targets = full_answer_logits(model, tok, sample)
        logp = torch.log_softmax(logits.double(), -1).gather(-1, targets[:, None]).squeeze(-1)
        assert score["loss"] == pytest.approx(float(logp.mean()), rel=1e-4)
        assert score["zlib"] == pytest.approx(
            float(logp.sum()) / len(zlib.compress(sample.answer.encode())), rel=1e-4
        )
        lowest = torch.sort(logp).values[: int(0.5 * len(logp))]
        assert score["min_k"] == pytest.approx(float(lowest.mean()), rel=1e-4)
        z = torch.sort(min_k_plus_plus_z(logits, targets)).values[: int(0.5 * len(logp))]
        assert score["min_k_plus_plus"] == pytest.approx(float(z.mean()), rel=1e-3)


def test_auc_is_half_on_identical_sets_and_high_after_training(tmp_path, tiny_llama_dir):
    model, tok, precision = load_model(ModelSettings(precision="fp32"), str(tiny_llama_dir))
    world = tofu_mini().retain
    members, nonmembers = world[:12], world[200:212]
    same = membership_attack(model, tok, members, members, PROMPT, precision)
    assert list(same["auc"].values()) == pytest.approx([0.5] * 4)
    encoded = [encode(s, tok, PROMPT) for s in members]
    fit_nll(
        model,
        encoded,
        tok.pad_token_id,
        precision,
        FitSettings(epochs=30, lr=3e-3, batch_size=4, micro_batch_size=4, checkpoint_every=10_000),
        tmp_path,
    )
    result = membership_attack(model, tok, members, nonmembers, PROMPT, precision)
    assert result["auc"]["loss"] > 0.9 and result["auc"]["min_k"] > 0.9
    assert len(result["members"]) == 12 and result["members"][0]["id"] == members[0].id


def test_kl_to_reference(tiny_llama_dir, tmp_path):
    from conftest import make_tiny_llama

    model, tok, precision = load_model(ModelSettings(precision="fp32"), str(tiny_llama_dir))
    samples = tofu_mini().retain[:3]
    assert kl_to_reference(model, model, tok, samples, PROMPT, precision)["mean_token_kl"] == pytest.approx(
        0.0, abs=1e-9
    )
    other, _, _ = load_model(
        ModelSettings(precision="fp32"), str(make_tiny_llama(tmp_path / "o", tok, seed=1))
    )
    result = kl_to_reference(other, model, tok, samples, PROMPT, precision, batch_size=2)
    enc = encode(samples[1], tok, PROMPT)
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        a, b = model(input_ids=ids).logits[0], other(input_ids=ids).logits[0]
    span = slice(enc.prompt_len - 1, len(enc.input_ids) - 1)  # every answer token, EOS included
    expected = float(token_kl(a[span], b[span]).mean())
    assert result["per_sample"][1]["mean_token_kl"] == pytest.approx(expected, rel=1e-4)
    assert result["mean_token_kl"] > 0


def test_eval_mia_command_writes_per_sample_scores(tmp_path, tiny_llama_dir):
    rows = tofu_mini().retain
    for name, part in (("in.jsonl", rows[:4]), ("out.jsonl", rows[100:104])):
        (tmp_path / name).write_text(
            "\n".join(json.dumps({"question": s.question, "answer": s.answer}) for s in part)
        )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tokenforget.cli",
            "eval",
            "mia",
            "--model",
            str(tiny_llama_dir),
            "--members",
            str(tmp_path / "in.jsonl"),
            "--nonmembers",
            str(tmp_path / "out.jsonl"),
            "--out",
            str(tmp_path / "mia.json"),
            "--set",
            "model.precision=fp32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    written = json.loads(Path(tmp_path / "mia.json").read_text())
    assert set(written["auc"]) == {"loss", "zlib", "min_k", "min_k_plus_plus"}
    assert len(written["members"]) == 4
    assert json.loads(result.stdout)["written"] == str(tmp_path / "mia.json")


def test_raw_text_sets_work_too(tiny_llama_dir):
    model, tok, precision = load_model(ModelSettings(precision="fp32"), str(tiny_llama_dir))
    texts = [
        Sample(answer="The quick brown fox jumps over the lazy dog."),
        Sample(answer="Paris is in France."),
    ]
    scores = membership_scores(model, tok, texts, PROMPT, precision)
    assert all(isinstance(s["min_k_plus_plus"], float) for s in scores)
