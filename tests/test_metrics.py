"""Membership attacks, KL and token-level metrics against their published definitions, by hand."""

import math
import zlib

import pytest
import torch

from tokenforget.evaluate.metrics import (
    auc,
    leak_rate,
    leaked_words,
    loss_score,
    masked_mean_delta,
    min_k_plus_plus_score,
    min_k_score,
    privleak,
    token_kl,
    zlib_score,
)
from tokenforget.forward.scoring import min_k_plus_plus_z


def test_loss_and_zlib_scores():
    nll = torch.tensor([1.0, 2.0, 3.0])
    assert loss_score(nll) == pytest.approx(-2.0)
    text = "hello hello hello"
    assert zlib_score(nll, text) == pytest.approx(-6.0 / len(zlib.compress(text.encode())))


def test_min_k_takes_the_lowest_fraction_rounding_up():
    logp = torch.tensor([-0.1, -5.0, -2.0, -0.5, -3.0])
    assert min_k_score(logp, 0.4) == pytest.approx((-5.0 - 3.0) / 2)  # int(0.4 * 5) = 2 tokens
    assert min_k_score(logp, 0.01) == pytest.approx(-5.0)  # int(0.05) = 0 -> at least one token
    assert min_k_score(logp, 0.5) == pytest.approx((-5.0 - 3.0) / 2)  # int(2.5) = 2
    assert min_k_score(logp, 1.0) == pytest.approx(float(logp.mean()))


def test_min_k_plus_plus_by_hand():
    # two positions over a 3-token vocabulary
    logits = torch.tensor(
        [[math.log(0.5), math.log(0.25), math.log(0.25)], [math.log(0.8), math.log(0.1), math.log(0.1)]]
    )
    targets = torch.tensor([0, 1])
    z = []
    for row, t in zip(logits, targets, strict=True):
        p = torch.softmax(row.double(), -1)
        lp = p.log()
        mu = float((p * lp).sum())
        sigma = math.sqrt(float((p * lp * lp).sum()) - mu * mu)
        z.append((float(lp[t]) - mu) / sigma)
    token_z = min_k_plus_plus_z(logits, targets)
    assert token_z.tolist() == pytest.approx(z)
    assert min_k_plus_plus_score(token_z, k=0.5) == pytest.approx(min(z))
    assert min_k_plus_plus_score(token_z, k=1.0) == pytest.approx(sum(z) / 2)


def test_auc_and_privleak():
    assert auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auc([0.1, 0.2], [0.9, 0.8]) == 0.0
    assert auc([0.5, 0.1], [0.3, 0.2]) == pytest.approx(0.5)
    assert privleak(0.4772, 0.4772) == 0.0
    assert privleak(0.0, 0.4772) == pytest.approx(-100.0)  # still memorised: MUSE sign convention


def test_token_kl_by_hand():
    ref = torch.tensor([[math.log(0.5), math.log(0.5)]])
    new = torch.tensor([[math.log(0.25), math.log(0.75)]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(token_kl(ref, new)[0]) == pytest.approx(expected)
    assert float(token_kl(ref, ref)[0]) == pytest.approx(0.0)
    assert float(token_kl(ref, ref + 3.0)[0]) == pytest.approx(
        0.0, abs=1e-12
    )  # a logit shift changes nothing


def test_uw_gw_deltas_and_leak_rate():
    logp = torch.tensor([-1.0, -2.0, -3.0])
    ref = torch.tensor([-0.5, -0.5, -0.5])
    uw = torch.tensor([True, False, True])
    assert masked_mean_delta(logp, ref, uw) == pytest.approx(((-1.0 + 0.5) + (-3.0 + 0.5)) / 2)
    assert masked_mean_delta(logp, ref, ~uw) == pytest.approx(-1.5)
    assert masked_mean_delta(logp, ref, torch.zeros(3, dtype=torch.bool)) is None
    assert leaked_words(["Basil", "Kuwait City"], "basil was born in Kuwait city.") == [True, True]
    assert leaked_words(["Basil"], "Basilica") == [False]  # whole words only
    assert leak_rate([["Basil", "Kuwait"], ["1956"]], ["Basil was here", "in 1956"]) == pytest.approx(2 / 3)
    assert leak_rate([[]], ["anything"]) is None


def test_exact_memorization_and_extraction_strength_as_open_unlearning_defines_them():
    from tokenforget.evaluate.metrics import exact_memorization, extraction_strength

    hits = torch.tensor([True, False, True, True, True])
    assert exact_memorization(hits) == pytest.approx(4 / 5)
    assert extraction_strength(hits) == pytest.approx(1 - 2 / 5)  # suffix from index 2 is exact
    assert extraction_strength(torch.ones(4, dtype=torch.bool)) == 1.0
    # nothing matches, not even the last token: open-unlearning's loop stops at k = n - 1
    assert extraction_strength(torch.zeros(4, dtype=torch.bool)) == pytest.approx(1 / 4)
    assert extraction_strength(torch.tensor([True, True, False])) == pytest.approx(1 / 3)
