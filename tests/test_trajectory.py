"""The in-training evaluation's numbers against hand computation on fixed tensors."""

import math

import pytest
import torch

from tokenforget.data.encode import Encoded
from tokenforget.evaluate.trajectory import point_from_nll, qa_prob, token_masks


def test_masks_leave_eos_out_of_both_uw_and_gw():
    a = Encoded(
        input_ids=[1, 2, 3, 4, 0],
        prompt_len=1,
        answer_offsets=[(0, 3), (3, 8), (8, 9), (9, 9)],
        uw=[False, True, False, False],
    )
    b = Encoded(input_ids=[1, 5, 0], prompt_len=1, answer_offsets=[(0, 4), (4, 4)], uw=None)
    uw, gw = token_masks([a, b])
    assert uw.tolist() == [False, True, False, False, False, False]
    assert gw.tolist() == [True, False, True, False, True, False]


def test_point_from_nll_by_hand():
    forget = [torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.1, 0.3])]
    retain = [torch.tensor([2.0, 2.0]), torch.tensor([0.0])]
    theta0 = torch.tensor([-0.5, -1.0, -0.5, -0.1, -0.1])
    uw = torch.tensor([False, True, False, True, False])
    gw = torch.tensor([True, False, False, False, True])  # the third token is EOS
    row = point_from_nll(forget, retain, theta0, (uw, gw))
    assert row["forget_Q_A_Prob"] == pytest.approx((math.exp(-3.5 / 3) + math.exp(-0.2)) / 2)
    assert row["retain_Q_A_Prob"] == pytest.approx((math.exp(-2.0) + 1.0) / 2)
    # log p = -nll = -1, -2, -0.5, -0.1, -0.3; minus theta0: -0.5, -1.0, 0.0, 0.0, -0.2
    assert row["uw_dlogp"] == pytest.approx((-1.0 + 0.0) / 2)
    assert row["gw_dlogp"] == pytest.approx((-0.5 - 0.2) / 2)


def test_no_uw_token_and_no_retain_give_none_not_nan():
    row = point_from_nll(
        [torch.tensor([1.0])], [], torch.tensor([-1.0]), (torch.tensor([False]), torch.tensor([True]))
    )
    assert row["uw_dlogp"] is None and row["retain_Q_A_Prob"] is None
    assert row["gw_dlogp"] == pytest.approx(0.0)
    assert qa_prob([]) is None


def test_theta0_scores_are_shared_only_under_their_key(tmp_path):
    from tokenforget.evaluate.trajectory import load_theta0_nll, save_theta0_nll

    nll = [torch.tensor([0.5, 1.0]), torch.tensor([2.0]), torch.tensor([0.25, 0.5, 0.75])]
    path = tmp_path / "t.safetensors"
    save_theta0_nll(path, nll, "k1")
    got = load_theta0_nll(path, "k1", 3)
    assert got is not None and all(torch.equal(a, b) for a, b in zip(got, nll, strict=True))
    assert load_theta0_nll(path, "k2", 3) is None  # another model, probe or precision
    assert load_theta0_nll(path, "k1", 4) is None  # another number of answers
    assert load_theta0_nll(tmp_path / "missing.safetensors", "k1", 3) is None
    path.write_bytes(path.read_bytes()[:40])  # torn: recomputed, never trusted
    assert load_theta0_nll(path, "k1", 3) is None
