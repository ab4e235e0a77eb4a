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


def test_theta0_file_keeps_one_section_per_kind_each_under_its_own_key(tmp_path, monkeypatch):
    from tokenforget.artifacts import Stamp
    from tokenforget.evaluate.trajectory import pack_nll, unpack_nll
    from tokenforget.reference import THETA0_FILE, read_section, theta0_numbers

    monkeypatch.setenv("TOKENFORGET_CACHE", str(tmp_path / "cache"))
    nll = [torch.tensor([0.5, 1.0]), torch.tensor([2.0]), torch.tensor([0.25, 0.5, 0.75])]
    reference = {"forget/a/logp": torch.tensor([-1.0, -2.0])}
    ref_stamp, traj_stamp = Stamp("reference", {"m": 1}), Stamp("trajectory", {"m": 1})
    built: list[str] = []

    def build(kind, value):
        return lambda: built.append(kind) or value

    run = tmp_path / "run"
    theta0_numbers(run, ref_stamp, build("reference", reference))
    got = theta0_numbers(run, traj_stamp, build("trajectory", pack_nll(nll)))
    assert all(torch.equal(a, b) for a, b in zip(unpack_nll(got), nll, strict=True))
    path = run / THETA0_FILE
    assert torch.equal(read_section(path, ref_stamp)["forget/a/logp"], reference["forget/a/logp"])
    assert read_section(path, Stamp("reference", {"m": 2})) is None  # another model, texts or precision
    # a second run of the sweep reads the user cache; the first run's file answers without building
    theta0_numbers(tmp_path / "run2", traj_stamp, build("again", {}))
    theta0_numbers(run, ref_stamp, build("again", {}))
    assert built == ["reference", "trajectory"]
    # a new stamp rebuilds its own section and keeps the other one
    theta0_numbers(run, Stamp("trajectory", {"m": 2}), build("trajectory2", pack_nll(nll[:1])))
    assert read_section(path, ref_stamp) is not None and read_section(path, traj_stamp) is None
    assert [p.name for p in run.iterdir()] == [THETA0_FILE]  # atomic: no temporary file left
    path.write_bytes(path.read_bytes()[:40])  # torn: rebuilt, never trusted
    assert read_section(path, ref_stamp) is None
