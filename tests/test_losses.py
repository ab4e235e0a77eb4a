"""Every loss against a hand computation on a tiny tensor, edge cases, gradient directions."""

import dataclasses
import functools
import math

import pytest
import torch

from tokenforget.losses import (
    METHODS,
    LossInputs,
    RefStats,
    TokenStats,
    at_reference,
    compute,
)

# Two forget samples over a 3-word vocabulary. Sample 0: tokens (UW, GW, EOS); sample 1: (GW, EOS).
LOGITS = [[2.0, 0.5, -1.0], [0.0, 1.0, 0.3], [0.2, 0.1, 1.5], [1.2, -0.4, 0.0], [0.3, 0.9, -0.2]]
TARGETS = [0, 1, 2, 1, 2]
ROWS = [0, 0, 0, 1, 1]
UW = [True, False, False, False, False]
EOS = [False, False, True, False, True]
REF_LOGITS = [[2.5, 0.5, -1.0], [0.0, 0.8, 0.3], [0.1, 0.1, 1.2], [1.0, -0.2, 0.0], [0.3, 0.7, -0.2]]


def logp(logits, target):
    return logits[target] - math.log(sum(math.exp(v) for v in logits))


def stats(logits=LOGITS, uw=UW, weights=None, requires_grad=False):
    t = torch.tensor(logits, requires_grad=requires_grad)
    return TokenStats(
        logits=t,
        targets=torch.tensor(TARGETS),
        rows=torch.tensor(ROWS),
        n_rows=2,
        uw=torch.tensor(uw),
        eos=torch.tensor(EOS),
        weights=None if weights is None else torch.tensor(weights),
    )


def ref_stats(logits=REF_LOGITS):
    return RefStats(
        gold_logit=torch.tensor([row[t] for row, t in zip(logits, TARGETS, strict=True)]),
        logp=torch.tensor([logp(row, t) for row, t in zip(logits, TARGETS, strict=True)]),
        logits=torch.tensor(logits),
    )


def nll(k, logits=LOGITS):
    return -logp(logits[k], TARGETS[k])


def lsig(x):
    return -math.log1p(math.exp(-x))


def with_control(method, control):
    """RMU with its control vector bound, as the training session binds it."""
    return dataclasses.replace(method, forget=functools.partial(method.forget, control=control))


def run(name, inputs, **settings):
    method = METHODS[name]
    return method.forget(inputs, method.settings(**settings))


def test_tpo_faithful_matches_hand_computation():
    beta = 0.3
    terms = run("tpo", LossInputs(stats(), ref_stats()), beta=beta)
    # Only sample 0 has a UW token (its first); Delta = z0 - z at that token.
    delta = REF_LOGITS[0][0] - LOGITS[0][0]
    lpl = -(2 / beta) * lsig(beta * delta)
    pl = ((nll(1) + nll(2)) + (nll(3) + nll(4))) / 2  # per-sample sum over GW + EOS, batch mean
    assert terms.parts["delta"].item() == pytest.approx(delta, abs=1e-6)
    assert terms.parts["lpl"].item() == pytest.approx(lpl, rel=1e-6)
    assert terms.parts["pl"].item() == pytest.approx(pl, rel=1e-6)
    assert terms.total.item() == pytest.approx(lpl + pl, rel=1e-6)
    uw_dlogp = logp(LOGITS[0], 0) - logp(REF_LOGITS[0], 0)
    assert terms.parts["uw_dlogp"].item() == pytest.approx(uw_dlogp, rel=1e-5)


def test_tpo_with_learned_weights_pushes_by_weight_and_preserves_only_the_tokens_left_out():
    beta = 0.3
    g = [0.8, 0.5, 0.2, 0.6, 0.1]  # ATWU's scorer output; 0.5 (its start) is not "left out"
    terms = run("tpo", LossInputs(stats(weights=g), ref_stats()), beta=beta, tokens="weighted")
    z, z0 = [LOGITS[k][TARGETS[k]] for k in range(5)], [REF_LOGITS[k][TARGETS[k]] for k in range(5)]
    mean_now = [(0.8 * z[0] + 0.5 * z[1] + 0.2 * z[2]) / 1.5, (0.6 * z[3] + 0.1 * z[4]) / 0.7]
    mean_before = [(0.8 * z0[0] + 0.5 * z0[1] + 0.2 * z0[2]) / 1.5, (0.6 * z0[3] + 0.1 * z0[4]) / 0.7]
    delta = sum(mean_before) / 2 - sum(mean_now) / 2
    assert terms.parts["lpl"].item() == pytest.approx(-(2 / beta) * lsig(beta * delta), rel=1e-6)
    # PL keeps the tokens with g < 0.5 at full weight and never trains a token LPL pushes down
    assert terms.parts["pl"].item() == pytest.approx((nll(2) + nll(4)) / 2, rel=1e-6)
    binary = run(
        "tpo", LossInputs(stats(weights=[1.0, 0.0, 0.0, 0.0, 0.0]), ref_stats()), beta=beta, tokens="weighted"
    )
    faithful = run("tpo", LossInputs(stats(), ref_stats()), beta=beta)
    assert binary.total.item() == pytest.approx(
        faithful.total.item(), rel=1e-6
    )  # 0/1 weights: the published TPO


def test_tpo_batch_vs_sample_reduction_and_pl_mean():
    uw = [True, True, False, True, False]  # both samples have UW
    z = [LOGITS[k][TARGETS[k]] for k in range(5)]
    z0 = [REF_LOGITS[k][TARGETS[k]] for k in range(5)]
    d0 = (z0[0] + z0[1]) / 2 - (z[0] + z[1]) / 2
    d1 = z0[3] - z[3]
    beta, lam = 0.5, 0.25
    batch = run("tpo", LossInputs(stats(uw=uw), ref_stats()), beta=beta, lam=lam)
    assert batch.parts["lpl"].item() == pytest.approx(-(2 / beta) * lsig(beta * (d0 + d1) / 2), rel=1e-6)
    sample = run("tpo", LossInputs(stats(uw=uw), ref_stats()), beta=beta, lpl_reduction="sample")
    expected = (-(2 / beta) * lsig(beta * d0) - (2 / beta) * lsig(beta * d1)) / 2
    assert sample.parts["lpl"].item() == pytest.approx(expected, rel=1e-6)
    mean_pl = run("tpo", LossInputs(stats(uw=uw), ref_stats()), beta=beta, pl_reduction="mean", lam=lam)
    assert mean_pl.parts["pl"].item() == pytest.approx((nll(2) / 1 + (nll(4)) / 1) / 2, rel=1e-6)
    assert mean_pl.total.item() == pytest.approx(batch.parts["lpl"].item() + lam * mean_pl.parts["pl"].item())
    space = run("tpo", LossInputs(stats(uw=uw), ref_stats()), beta=beta, lpl_space="logprob")
    lp = [logp(LOGITS[k], TARGETS[k]) for k in range(5)]
    lp0 = [logp(REF_LOGITS[k], TARGETS[k]) for k in range(5)]
    dl = ((lp0[0] + lp0[1]) / 2 + lp0[3]) / 2 - ((lp[0] + lp[1]) / 2 + lp[3]) / 2
    assert space.parts["lpl"].item() == pytest.approx(-(2 / beta) * lsig(beta * dl), rel=1e-5)


def test_tpo_hinge_pl_counts_only_a_fall_below_the_reference():
    lp = [logp(LOGITS[k], TARGETS[k]) for k in range(5)]
    lp0 = [logp(REF_LOGITS[k], TARGETS[k]) for k in range(5)]
    fell = [max(0.0, lp0[k] - lp[k]) for k in range(5)]
    assert fell[1] == fell[2] == 0.0 < fell[3]  # GW tokens above theta0 (sample 0) and below it (1)
    hinge = run("tpo", LossInputs(stats(), ref_stats()), pl_form="hinge")
    expected = ((fell[1] + fell[2]) + (fell[3] + fell[4])) / 2  # per-sample sum over GW + EOS, batch mean
    assert hinge.parts["pl"].item() == pytest.approx(expected, rel=1e-5)
    faithful = run("tpo", LossInputs(stats(), ref_stats()))
    assert hinge.parts["lpl"].item() == pytest.approx(faithful.parts["lpl"].item(), rel=1e-6)
    # at the reference itself the hinge PL is 0 and gives GW no gradient; the NLL PL still trains them
    at_ref = stats(REF_LOGITS, requires_grad=True)
    run("tpo", LossInputs(at_ref, ref_stats()), pl_form="hinge").parts["pl"].backward()
    assert at_ref.logits.grad.abs().sum().item() == 0.0
    at_ref = stats(REF_LOGITS, requires_grad=True)
    run("tpo", LossInputs(at_ref, ref_stats())).parts["pl"].backward()
    assert at_ref.logits.grad[1:].abs().sum().item() > 0


def test_tpo_logs_the_shared_shift_and_centered_lpl_removes_it():
    beta = 0.3
    # the UW token: z = [2, 0.5, -1] (mean 0.5), theta0 z0 = [2.5, 0.5, -1] (mean 2/3), gold index 0
    delta, shared = 2.5 - 2.0, 2 / 3 - 0.5
    terms = run("tpo", LossInputs(stats(), ref_stats()), beta=beta)
    assert terms.parts["delta"].item() == pytest.approx(delta, abs=1e-6)
    assert terms.parts["delta_shared"].item() == pytest.approx(shared, abs=1e-6)
    centered = run("tpo", LossInputs(stats(), ref_stats()), beta=beta, lpl_space="centered")
    assert centered.parts["delta"].item() == pytest.approx((2.5 - 2 / 3) - (2.0 - 0.5), abs=1e-6)
    assert centered.parts["lpl"].item() == pytest.approx(
        -(2 / beta) * lsig(beta * (delta - shared)), rel=1e-6
    )
    # lowering every logit of the UW position by 3 changes no probability: raw Delta and its shared
    # part grow by 3, the centered and log-prob forms do not move
    shifted = [[v - 3.0 for v in LOGITS[0]], *LOGITS[1:]]
    moved = run("tpo", LossInputs(stats(shifted), ref_stats()), beta=beta)
    assert moved.parts["delta"].item() == pytest.approx(delta + 3, abs=1e-5)
    assert moved.parts["delta_shared"].item() == pytest.approx(shared + 3, abs=1e-5)
    for space in ("centered", "logprob"):
        before = run("tpo", LossInputs(stats(), ref_stats()), beta=beta, lpl_space=space).parts["lpl"].item()
        after = run("tpo", LossInputs(stats(shifted), ref_stats()), beta=beta, lpl_space=space).parts["lpl"]
        assert after.item() == pytest.approx(before, abs=1e-5), space


def test_micro_batch_without_uw_gives_exact_zero_and_clean_gradients():
    s = stats(uw=[False] * 5, requires_grad=True)
    for name in ("tpo", "ga", "npo", "simnpo", "wga", "satimp", "tnpo", "undial"):
        settings = {} if name == "tpo" else {"tokens": "uw"}
        terms = run(name, LossInputs(s, ref_stats()), **settings)
        value = terms.parts.get("lpl", terms.total)
        assert value.item() == 0.0, name
        assert torch.isfinite(terms.total), name
        s.logits.grad = None
        terms.total.backward()
        assert torch.isfinite(s.logits.grad).all(), name
    # TPO's PL still trains the GW tokens of a UW-free micro-batch
    assert run("tpo", LossInputs(stats(uw=[False] * 5), ref_stats())).parts["pl"].item() > 0


@pytest.mark.parametrize("beta", [0.1, 0.3, 2.0])
def test_step_zero_identity_lpl_equals_npo_equals_two_over_beta_log_two(beta):
    same = ref_stats(LOGITS)
    tpo = run("tpo", LossInputs(stats(), same), beta=beta)
    npo = run("npo", LossInputs(stats(), same), beta=beta)
    assert tpo.parts["lpl"].item() == pytest.approx(at_reference(beta), rel=1e-6)
    assert npo.total.item() == pytest.approx(at_reference(beta), rel=1e-6)
    assert at_reference(beta) == pytest.approx(2 / beta * math.log(2))


def test_lpl_gradient_lowers_uw_gold_logits_only():
    s = stats(requires_grad=True)
    terms = run("tpo", LossInputs(s, ref_stats()), lam=0.0)
    terms.total.backward()
    grad = s.logits.grad
    assert grad[0, TARGETS[0]] > 0  # descent lowers the UW token's gold logit
    assert torch.all(grad[1:] == 0)  # GW tokens are not pushed by LPL
    assert torch.all(grad[0, 1:] == 0)  # only the gold logit moves: raw-logit LPL leaves the rest alone


def test_ga_all_and_uw_only():
    all_tokens = run("ga", LossInputs(stats()))
    assert all_tokens.total.item() == pytest.approx(-sum(nll(k) for k in range(5)) / 5, rel=1e-6)
    uw_only = run("ga", LossInputs(stats(uw=[True, False, False, True, False])), tokens="uw")
    assert uw_only.total.item() == pytest.approx(-(nll(0) + nll(3)) / 2, rel=1e-6)
    weights = [1.0, 0.5, 0.0, 0.25, 0.0]
    weighted = run("ga", LossInputs(stats(weights=weights)), tokens="weighted")
    expected = -sum(w * nll(k) for k, w in enumerate(weights)) / sum(weights)
    assert weighted.total.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="needs per-token weights"):
        run("ga", LossInputs(stats()), tokens="weighted")


def test_npo_matches_hand_computation_and_uw_masked_form():
    beta = 0.1
    seq = [-(nll(0) + nll(1) + nll(2)), -(nll(3) + nll(4))]
    seq0 = [-(nll(0, REF_LOGITS) + nll(1, REF_LOGITS) + nll(2, REF_LOGITS)),
            -(nll(3, REF_LOGITS) + nll(4, REF_LOGITS))]  # fmt: skip
    expected = sum(-(2 / beta) * lsig(-beta * (a - b)) for a, b in zip(seq, seq0, strict=True)) / 2
    assert run("npo", LossInputs(stats(), ref_stats())).total.item() == pytest.approx(expected, rel=1e-6)
    # UW only: sample 1 has no UW token and is left out
    ratio = -nll(0) + nll(0, REF_LOGITS)
    uw = run("npo", LossInputs(stats(), ref_stats()), tokens="uw")
    assert uw.total.item() == pytest.approx(-(2 / beta) * lsig(-beta * ratio), rel=1e-6)


def test_npo_rt_uw_is_npo_on_the_unwanted_tokens_plus_the_retain_nll():
    beta = 0.1
    inputs = LossInputs(stats(), ref_stats(), retain=stats(REF_LOGITS))
    main_job = compute(METHODS["npo_rt_uw"], inputs, METHODS["npo_rt_uw"].settings())
    # sample 1 has no UW token and is left out; the retain term is the mean NLL of the retain tokens
    forget = -(2 / beta) * lsig(-beta * (-nll(0) + nll(0, REF_LOGITS)))
    retain = sum(nll(k, REF_LOGITS) for k in range(5)) / 5
    assert main_job.parts["forget"].item() == pytest.approx(forget, rel=1e-6)
    assert main_job.parts["retain_nll"].item() == pytest.approx(retain, rel=1e-6)
    assert main_job.total.item() == pytest.approx(forget + retain, rel=1e-6)
    spelled_out = compute(METHODS["npo_rt"], inputs, METHODS["npo_rt"].settings(tokens="uw"))
    assert main_job.parts.keys() == spelled_out.parts.keys()
    for key, value in spelled_out.parts.items():
        assert main_job.parts[key].item() == pytest.approx(value.item(), rel=1e-6), key
    every_token = compute(METHODS["npo_rt"], inputs, METHODS["npo_rt"].settings())
    assert every_token.parts["forget"].item() != pytest.approx(forget)  # npo_rt acts on every token


def test_npo_token_ratio_saturates_per_token_and_starts_with_the_sequence_gradient():
    beta = 0.1

    def token_term(k):
        return -(2 / beta) * lsig(-beta * (-nll(k) + nll(k, REF_LOGITS)))

    every = run("npo", LossInputs(stats(), ref_stats()), ratio="token")
    expected = ((token_term(0) + token_term(1) + token_term(2)) + (token_term(3) + token_term(4))) / 2
    assert every.total.item() == pytest.approx(expected, rel=1e-6)
    uw = run("npo_rt_uw", LossInputs(stats(uw=[True, False, False, True, True]), ref_stats()), ratio="token")
    assert uw.total.item() == pytest.approx((token_term(0) + token_term(3) + token_term(4)) / 2, rel=1e-6)
    # at theta0 both forms give the gradient sum_t grad log p_t: they differ only in how they saturate
    grads = {}
    for ratio in ("sequence", "token"):
        s = stats(REF_LOGITS, requires_grad=True)
        run("npo", LossInputs(s, ref_stats()), ratio=ratio).total.backward()
        grads[ratio] = s.logits.grad
    torch.testing.assert_close(grads["token"], grads["sequence"])
    # away from theta0 a token far below theta0 stops pulling while its neighbour still pulls
    lowered = [row[:] for row in REF_LOGITS]
    lowered[0][0] -= 40.0  # token 0 (UW) is 40 logits down, token 1 is at theta0
    s = stats(lowered, requires_grad=True)
    run("npo", LossInputs(s, ref_stats()), ratio="token").total.backward()
    assert s.logits.grad[0].abs().max() < 0.05 < s.logits.grad[1].abs().max()
    s = stats(lowered, requires_grad=True)
    run("npo", LossInputs(s, ref_stats()), ratio="sequence").total.backward()
    assert s.logits.grad[1].abs().max() < 0.05  # the sequence form stops pushing the whole answer


def test_npo_soft_weights_are_rescaled_to_the_answer_length():
    weights = [0.5, 0.5, 0.0, 1.0, 1.0]
    beta = 0.1
    # sample 0: mass 1.0 over 3 tokens -> scale 3; sample 1: weights already binary-like but soft mode
    s0 = 3 * (0.5 * -nll(0) + 0.5 * -nll(1))
    s0_ref = 3 * (0.5 * -nll(0, REF_LOGITS) + 0.5 * -nll(1, REF_LOGITS))
    s1, s1_ref = -(nll(3) + nll(4)), -(nll(3, REF_LOGITS) + nll(4, REF_LOGITS))
    expected = (-(2 / beta) * lsig(-beta * (s0 - s0_ref)) - (2 / beta) * lsig(-beta * (s1 - s1_ref))) / 2
    got = run("npo", LossInputs(stats(weights=weights), ref_stats()), tokens="weighted")
    assert got.total.item() == pytest.approx(expected, rel=1e-6)


def test_simnpo_paper_form_and_inside_beta_form():
    beta, delta = 4.5, 0.5
    norm = [-(nll(0) + nll(1) + nll(2)) / 3, -(nll(3) + nll(4)) / 2]
    paper = sum(-(2 / beta) * lsig(-beta * x - delta) for x in norm) / 2
    inside = sum(-(2 / beta) * lsig(beta * (-x - delta)) for x in norm) / 2
    got = run("simnpo", LossInputs(stats()), delta=delta)
    assert got.total.item() == pytest.approx(paper, rel=1e-6)
    got = run("simnpo", LossInputs(stats()), delta=delta, delta_inside_beta=True)
    assert got.total.item() == pytest.approx(inside, rel=1e-6)
    assert METHODS["simnpo"].needs_ref_logp is False  # reference-free


def test_idkpo_matches_hand_computation():
    beta = 0.1
    alt_logits = [[0.1, 0.2, 0.3], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.5, 0.5, 0.5], [0.0, 2.0, 0.0]]
    alt = stats(alt_logits)
    alt_ref = ref_stats([[0.0, 0.2, 0.3], [1.0, 0.1, 0.0], [0.0, 0.0, 1.0], [0.5, 0.4, 0.5], [0.0, 1.0, 0.0]])

    def seq(logits, rows):
        return sum(-nll(k, logits) for k in rows)

    margins = []
    for rows in ([0, 1, 2], [3, 4]):
        win = seq(alt_logits, rows) - seq(alt_ref.logits.tolist(), rows)
        lose = seq(LOGITS, rows) - seq(REF_LOGITS, rows)
        margins.append(win - lose)
    expected = sum(-(2 / beta) * lsig(beta * m) for m in margins) / 2
    got = run("idkpo", LossInputs(stats(), ref_stats(), alt=alt, alt_ref=alt_ref))
    assert got.total.item() == pytest.approx(expected, rel=1e-5)


def test_wga_satimp_tnpo_values_and_stop_gradient_weights():
    p = [math.exp(-nll(k)) for k in range(5)]
    p0 = [math.exp(-nll(k, REF_LOGITS)) for k in range(5)]
    cases = {
        "wga": ({"beta": 2.0}, [pk**2.0 for pk in p]),
        "satimp": ({"beta": 3.0, "beta2": 2.0}, [pk**3.0 * (1 - pk) ** 2.0 for pk in p]),
        "tnpo": ({"beta": 0.5}, [2 * pk**0.5 / (pk**0.5 + qk**0.5) for pk, qk in zip(p, p0, strict=True)]),
    }
    for name, (settings, weight) in cases.items():
        s = stats(requires_grad=True)
        got = run(name, LossInputs(s, ref_stats()), **settings)
        expected = -sum(w * nll(k) for k, w in enumerate(weight)) / 5
        assert got.total.item() == pytest.approx(expected, rel=1e-5), name
        got.total.backward()
        # the weight is a constant: the gradient equals weight/5 times the gradient of -nll
        plain = stats(requires_grad=True)
        ((plain.logp * torch.tensor(weight)).sum() / 5).backward()  # -mean(w nll) with w constant
        assert torch.allclose(s.logits.grad, plain.logits.grad, atol=1e-6), name


def test_undial_target_lowers_the_true_token():
    beta = 10.0
    expected = 0.0
    for k in range(5):
        z0 = list(REF_LOGITS[k])
        z0[TARGETS[k]] -= beta
        norm = sum(math.exp(v) for v in z0)
        target = [math.exp(v) / norm for v in z0]
        lse = math.log(sum(math.exp(v) for v in LOGITS[k]))
        expected += -sum(t * (LOGITS[k][j] - lse) for j, t in enumerate(target))
    got = run("undial", LossInputs(stats(), ref_stats()))
    assert got.total.item() == pytest.approx(expected / 5, rel=1e-6)


def test_retain_terms_and_compute_weights():
    retain = stats(REF_LOGITS)
    inputs = LossInputs(stats(), ref_stats(), retain=retain, retain_ref=ref_stats(LOGITS))
    method = METHODS["graddiff"]
    cfg = method.settings(gamma=0.5, alpha=2.0)
    terms = compute(method, inputs, cfg)
    ga = -sum(nll(k) for k in range(5)) / 5
    rnll = sum(nll(k, REF_LOGITS) for k in range(5)) / 5
    assert terms.parts["retain_nll"].item() == pytest.approx(rnll, rel=1e-6)
    assert terms.total.item() == pytest.approx(0.5 * ga + 2.0 * rnll, rel=1e-6)
    kl = compute(METHODS["ga_kl"], inputs, METHODS["ga_kl"].settings()).parts["retain_kl"].item()
    expected = 0.0
    for k in range(5):
        p = [math.exp(v) for v in LOGITS[k]]
        q = [math.exp(v) for v in REF_LOGITS[k]]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        expected += sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))
    assert kl == pytest.approx(expected / 5, rel=1e-5)
    assert compute(method, LossInputs(stats(), retain=retain), cfg, retain="none").parts.keys() == {
        "loss",
        "forget",
    }


def test_tpo_kl_is_tpo_gd_with_the_hinge_pl_and_the_kl_retain_term_at_weight_three():
    inputs = LossInputs(stats(), ref_stats(), retain=stats(REF_LOGITS), retain_ref=ref_stats(LOGITS))
    main_job = compute(METHODS["tpo_kl"], inputs, METHODS["tpo_kl"].settings())
    spelled_out = METHODS["tpo_gd"].settings(pl_form="hinge", alpha=3.0)
    expected = compute(METHODS["tpo_gd"], inputs, spelled_out, retain="kl")
    assert {"loss", "lpl", "pl", "retain_kl"} <= main_job.parts.keys() == expected.parts.keys()
    for key, value in expected.parts.items():
        assert main_job.parts[key].item() == pytest.approx(value.item(), rel=1e-6), key
    faithful_pl = run("tpo", LossInputs(stats(), ref_stats())).parts["pl"].item()
    assert main_job.parts["pl"].item() != pytest.approx(faithful_pl)  # the hinge, not the published PL
    assert main_job.total.item() == pytest.approx(
        main_job.parts["lpl"].item() + main_job.parts["pl"].item() + 3.0 * main_job.parts["retain_kl"].item(),
        rel=1e-6,
    )


def test_npo_kl_uw_is_npo_rt_uw_with_kl_x10_and_the_ratio_its_stop_criterion_asks_for():
    from tokenforget.unlearn import concrete_ratio

    forget = stats(uw=[True, False, False, True, True])  # a sample with two UW tokens: per token != sum
    inputs = LossInputs(forget, ref_stats(), retain=stats(REF_LOGITS), retain_ref=ref_stats(LOGITS))
    main = METHODS["npo_kl_uw"]
    forgets = {}
    for ratio in ("token", "sequence"):
        main_job = compute(main, inputs, main.settings(ratio=ratio))
        spelled_out = METHODS["npo_rt_uw"].settings(ratio=ratio, alpha=10.0)
        expected = compute(METHODS["npo_rt_uw"], inputs, spelled_out, retain="kl")
        assert {"loss", "forget", "retain_kl"} <= main_job.parts.keys() == expected.parts.keys()
        for key, value in expected.parts.items():
            assert main_job.parts[key].item() == pytest.approx(value.item(), rel=1e-6), (ratio, key)
        assert main_job.parts["retain_kl"].item() > 0  # theta0's retain logits differ from the model's
        assert main_job.total.item() == pytest.approx(
            main_job.parts["forget"].item() + 10.0 * main_job.parts["retain_kl"].item(), rel=1e-6
        )
        forgets[ratio] = main_job.parts["forget"].item()
    assert forgets["token"] != pytest.approx(forgets["sequence"])
    default = main.settings()
    assert default.ratio == "auto"
    with pytest.raises(ValueError, match="made concrete when the run starts"):
        compute(main, inputs, default)
    assert concrete_ratio(default, ["uw_leak_rate<=0"]).ratio == "token"  # a deletion request's stop
    assert concrete_ratio(default, ["uw_dlogp<=-3"]).ratio == "sequence"
    assert concrete_ratio(default, []).ratio == "sequence"
    published = METHODS["npo_rt_uw"].settings()
    assert concrete_ratio(published, ["uw_leak_rate<=0"]) is published  # only auto is chosen for


def test_rmu_pulls_forget_states_to_the_control_and_anchors_retain():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    s = stats()
    s.hidden = h
    retain = stats()
    retain.hidden = h + 1.0
    control = torch.tensor([0.6, 0.8])
    cfg = METHODS["rmu"].settings(steering=2.0, alpha=3.0)
    inputs = LossInputs(s, retain=retain, retain_ref=RefStats(hidden=h))
    terms = compute(with_control(METHODS["rmu"], control), inputs, cfg)
    goal = [1.2, 1.6]
    forget = sum(((row[0] - goal[0]) ** 2 + (row[1] - goal[1]) ** 2) / 2 for row in h.tolist()) / 5
    assert terms.parts["forget"].item() == pytest.approx(forget, rel=1e-6)
    assert terms.parts["retain_rmu"].item() == pytest.approx(1.0, rel=1e-6)
    assert terms.total.item() == pytest.approx(forget + 3.0, rel=1e-6)


def test_every_method_is_documented_and_runs_on_real_shaped_inputs():
    torch.manual_seed(0)
    n, v, h = 7, 11, 4
    forget = TokenStats(
        logits=torch.randn(n, v, requires_grad=True),
        targets=torch.randint(0, v, (n,)),
        rows=torch.tensor([0, 0, 0, 1, 1, 1, 1]),
        n_rows=2,
        uw=torch.tensor([1, 0, 0, 0, 1, 1, 0], dtype=torch.bool),
        eos=torch.tensor([0, 0, 1, 0, 0, 0, 1], dtype=torch.bool),
        weights=torch.rand(n),
        hidden=torch.randn(n, h),
    )
    ref = RefStats(
        gold_logit=torch.randn(n), logp=-torch.rand(n) * 3, logits=torch.randn(n, v), hidden=torch.randn(n, h)
    )
    from tokenforget.unlearn import concrete_ratio

    for name, method in METHODS.items():
        assert method.summary and method.forget.__doc__, name
        cfg = concrete_ratio(method.settings(), [])  # as a run makes npo_kl_uw's ratio=auto concrete
        inputs = LossInputs(forget, ref, retain=forget, retain_ref=ref, alt=forget, alt_ref=ref)
        bound = with_control(method, torch.ones(h) / 2) if method.needs_hidden else method
        terms = compute(bound, inputs, cfg)
        assert torch.isfinite(terms.total), name
        assert set(terms.parts) >= {"loss"}, name
