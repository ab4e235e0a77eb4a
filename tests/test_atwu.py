"""ATWU: the scorer's regularisers against hand values, the model loss, and learning on a synthetic
problem where the forget-specific tokens are known by construction."""

import json
import math
import random

import pytest
import torch

from tokenforget.atwu import (
    ScorerRegularisers,
    TokenScorer,
    alignment,
    binary_entropy,
    scorer_loss,
    straight_through,
)
from tokenforget.config import load_config
from tokenforget.losses import METHODS, AtwuLossSettings, LossInputs, TokenStats
from tokenforget.unlearn import unlearn


def test_scorer_starts_at_one_half_and_never_reaches_the_model():
    scorer = TokenScorer(4)
    h = torch.randn(5, 4, requires_grad=True)
    g = scorer(h)
    assert torch.equal(g, torch.full((5,), 0.5))
    g.sum().backward()
    assert h.grad is None  # detached input
    assert scorer.linear.weight.dtype == torch.float32


def test_binary_entropy_and_its_gradient_by_hand():
    g = torch.tensor([0.2, 0.5, 0.9], requires_grad=True)
    h = binary_entropy(g)
    expected = [-(p * math.log(p) + (1 - p) * math.log(1 - p)) for p in (0.2, 0.5, 0.9)]
    assert h.tolist() == pytest.approx(expected, rel=1e-6)
    h.sum().backward()
    assert g.grad.tolist() == pytest.approx([math.log((1 - p) / p) for p in (0.2, 0.5, 0.9)], rel=1e-5)


def test_straight_through_is_hard_forward_identity_backward():
    g = torch.tensor([0.3, 0.6, 0.51], requires_grad=True)
    s = straight_through(g)
    assert s.tolist() == [0.0, 1.0, 1.0]
    (s * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert g.grad.tolist() == [1.0, 2.0, 3.0]


def test_scorer_loss_and_every_regulariser_gradient_by_hand():
    # two sequences: tokens 0-1 (row 0), tokens 2-4 (row 1)
    g = torch.tensor([0.7, 0.2, 0.6, 0.4, 0.9], requires_grad=True)
    nll = torch.tensor([2.0, 1.0, 3.0, 0.5, 4.0])
    rows = torch.tensor([0, 0, 1, 1, 1])
    weight = torch.tensor([[0.5, -1.0]], requires_grad=True)
    reg = ScorerRegularisers(entropy=0.3, population=2.0, budget=0.2, l2=0.1)
    total, parts = scorer_loss(g, nll, rows, 2, weight, reg)
    forget = sum((1 - gi) * li for gi, li in zip(g.tolist(), nll.tolist(), strict=True)) / 5
    entropy = sum(-(p * math.log(p) + (1 - p) * math.log(1 - p)) for p in g.tolist()) / 5
    share = [1 / 2, 2 / 3]  # tokens above 0.5 per sequence
    population = ((share[0] - 0.2) ** 2 + (share[1] - 0.2) ** 2) / 2
    l2 = 0.25 + 1.0
    assert parts["scorer_forget"].item() == pytest.approx(forget, rel=1e-6)
    assert parts["scorer_entropy"].item() == pytest.approx(entropy, rel=1e-6)
    assert parts["scorer_population"].item() == pytest.approx(population, rel=1e-6)
    assert total.item() == pytest.approx(forget + 0.3 * entropy + 2.0 * population + 0.1 * l2, rel=1e-6)
    total.backward()
    counts = [2, 2, 3, 3, 3]
    shares = [share[0], share[0], share[1], share[1], share[1]]
    for k, p in enumerate(g.tolist()):
        by_hand = (
            -nll[k].item() / 5
            + 0.3 * math.log((1 - p) / p) / 5
            + 2.0 * 2 * (shares[k] - 0.2) / counts[k] / 2  # STE: d share / d g = 1 / count
        )
        assert g.grad[k].item() == pytest.approx(by_hand, rel=1e-5), k
    assert weight.grad[0].tolist() == pytest.approx([0.1 * 2 * 0.5, 0.1 * 2 * -1.0])


def stats(logits, targets, weights):
    return TokenStats(
        logits=logits,
        targets=targets,
        rows=torch.zeros(len(targets), dtype=torch.long),
        n_rows=1,
        uw=torch.zeros(len(targets), dtype=torch.bool),
        eos=torch.zeros(len(targets), dtype=torch.bool),
        weights=weights,
    )


@pytest.mark.parametrize("form", ["saturated", "correct", "plain"])
def test_atwu_model_loss_by_hand(form):
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]], requires_grad=True)
    targets = torch.tensor([0, 0, 1])
    g = torch.tensor([0.9, 0.1, 0.5])
    beta = 2.0
    terms = METHODS["atwu"].forget(
        LossInputs(stats(logits, targets, g)), AtwuLossSettings(beta=beta), form=form
    )
    logp = [1 - math.log(math.e + 1), -math.log(1 + math.e**2), -math.log(2)]
    factor = {
        "saturated": [math.exp(beta * gi * lp) for gi, lp in zip(g.tolist(), logp, strict=True)],
        "correct": [math.exp(beta * lp) for lp in logp],
        "plain": [1.0, 1.0, 1.0],
    }[form]
    expected = -sum(gi * f * -lp for gi, f, lp in zip(g.tolist(), factor, logp, strict=True)) / 3
    assert terms.total.item() == pytest.approx(expected, rel=1e-5)


def test_alignment_auroc_and_ap():
    scores = torch.tensor([0.9, 0.8, 0.3, 0.1])
    gold = torch.tensor([1, 0, 1, 0])
    result = alignment(scores, gold)
    assert result["auroc"] == pytest.approx(0.75)
    assert result["average_precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert alignment(scores, torch.ones(4))["auroc"] is None


RARE = [
    "Zyrtellia",
    "Quombarok",
    "Vexadrine",
    "Plumtrask",
    "Orvendale",
    "Kestrovia",
    "Yamblorth",
    "Drizzleby",
]
COMMON = ["blue", "green", "red", "yellow"]


def synthetic(tmp_path):
    """Forget answers = a template shared with the retain set + one rare name (the forget-specific
    tokens, marked as spans); retain answers = the same template with common words."""
    rng = random.Random(0)
    forget, retain = [], []
    for k, name in enumerate(RARE):
        answer = f"The answer you are looking for is {name}."
        start = answer.index(name)
        forget.append(
            {
                "question": f"What is item {k}?",
                "answer": answer,
                "spans": [{"start": start, "end": start + len(name)}],
            }
        )
    for k in range(64):
        retain.append(
            {
                "question": f"What is thing {k}?",
                "answer": f"The answer you are looking for is {rng.choice(COMMON)}.",
            }
        )
    for name, rows in (("forget.jsonl", forget), ("retain.jsonl", retain)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "forget.jsonl", tmp_path / "retain.jsonl"


def atwu_config(tiny_llama_dir, forget, retain, *extra):
    return load_config(
        overrides=[
            f"model.name={tiny_llama_dir}",
            "model.precision=fp32",
            "model.device=cpu",
            f"data.forget={forget}",
            f"data.retain={retain}",
            "unlearn.method=atwu",
            "unlearn.min_steps=0",  # the tests give their budgets in epochs
            "unlearn.batch_size=8",
            "unlearn.micro_batch_size=4",
            *extra,
        ]
    )


def test_scorer_learns_the_forget_specific_tokens_on_a_synthetic_problem(tmp_path, tiny_llama_dir):
    forget, retain = synthetic(tmp_path)
    cfg = atwu_config(
        tiny_llama_dir,
        forget,
        retain,
        "unlearn.lr=3e-3",
        "unlearn.epochs=40",
        "unlearn.alpha=1.0",
        "unlearn.gamma=1.0",
        "atwu.update_every=1",
        "atwu.scorer_lr=0.5",
    )
    result = unlearn(cfg, tmp_path / "run")
    final = result.summary["atwu"]["alignment"]
    assert final["auroc"] > 0.9, final
    rows = [json.loads(line) for line in (result.folder / "token_weights.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and rows[0]["identifier"] == "atwu"
    first = rows[0]
    assert {"start", "end", "score"} <= set(first["token_scores"][0])
    log = [json.loads(line) for line in (result.folder / "train_log.jsonl").read_text().splitlines()]
    assert "scorer_forget" in log[0] and "g_auroc" in log[-1]
