"""Stop conditions on the in-training evaluation, by hand."""

import pytest

from tokenforget.config import load_config
from tokenforget.errors import ConfigError
from tokenforget.stopping import auto_stop_when, budget_reason, parse_condition, stop_reason, stop_sentence

FIRST = {"step": 0, "retain_Q_A_Prob": 0.5, "uw_leak_rate": 0.8, "uw_dlogp": 0.0}


def test_conditions_parse_and_hold_by_hand():
    leak = parse_condition("uw_leak_rate<=0")
    assert (leak.metric, leak.op, leak.value, leak.relative) == ("uw_leak_rate", "<=", 0.0, False)
    assert leak.holds({"uw_leak_rate": 0.0}, FIRST) is True
    assert leak.holds({"uw_leak_rate": 0.25}, FIRST) is False
    assert leak.holds({"uw_dlogp": -3.0}, FIRST) is None  # not measured at this point
    keep = parse_condition(" retain_Q_A_Prob >= 0.9x ")
    assert keep.relative and keep.threshold(FIRST) == pytest.approx(0.45)
    assert keep.holds({"retain_Q_A_Prob": 0.46}, FIRST) and not keep.holds({"retain_Q_A_Prob": 0.44}, FIRST)
    assert str(keep) == "retain_Q_A_Prob>=0.9x" and str(parse_condition("uw_dlogp<=-3")) == "uw_dlogp<=-3"


@pytest.mark.parametrize("bad", ["uw_leak_rate<0", "loss<=1", "uw_dlogp<=fast", "uw_dlogp"])
def test_a_bad_condition_is_refused_when_the_config_is_read(bad):
    with pytest.raises(ConfigError, match="METRIC<=VALUE"):
        load_config(overrides=[f"unlearn.stop_when=[{bad}]"])


def test_the_guard_wins_and_every_stop_condition_must_hold():
    stop = [parse_condition("uw_leak_rate<=0"), parse_condition("uw_dlogp<=-2")]
    guard = [parse_condition("retain_Q_A_Prob>=0.9x")]
    row = {"uw_leak_rate": 0.0, "uw_dlogp": -1.0, "retain_Q_A_Prob": 0.48}
    assert stop_reason(row, FIRST, stop, guard) is None  # uw_dlogp not there yet
    row["uw_dlogp"] = -2.5
    assert stop_reason(row, FIRST, stop, guard) == "stop_when met: uw_leak_rate 0 <= 0; uw_dlogp -2.5 <= -2"
    row["retain_Q_A_Prob"] = 0.4
    assert stop_reason(row, FIRST, stop, guard) == (
        "utility guard: retain_Q_A_Prob 0.4 >= 0.45 (0.9x step 0) failed"
    )
    assert stop_reason(row, FIRST, [], []) is None


def test_a_run_no_condition_stopped_names_the_budget_that_did():
    small = budget_reason(3, 4, 8, 15, None)  # a four-answer deletion request: 2 steps by epochs
    assert small == (
        "the step budget: unlearn.min_steps=15 (3 epochs of 4 forget answers at batch 8 would be 2)"
    )
    assert budget_reason(3, 40, 8, 15, None) == (
        "the step budget: 3 epochs of 40 forget answers at batch 8 (15 steps)"
    )
    assert budget_reason(3, 4, 8, 15, 100) == "the step cap (unlearn.max_steps=100) before stop_when was met"
    said = stop_sentence({"reason": small, "step": 15})
    assert said == f"Unlearning stopped at step 15: {small}."


def test_auto_asks_for_no_leak_only_of_hand_marked_spans_within_the_step_cap():
    """stop_when=auto (the default) on a four-answer deletion request (25 steps by min_steps, cap 100):
    until no marked span comes out; on identifier labels or where the epochs outrun the cap, none."""
    assert auto_stop_when(hand_marked=True, budget=25, cap=100) == ["uw_leak_rate<=0"]
    assert auto_stop_when(hand_marked=True, budget=100, cap=100) == ["uw_leak_rate<=0"]
    assert auto_stop_when(hand_marked=False, budget=25, cap=100) == []
    assert auto_stop_when(hand_marked=True, budget=500, cap=100) == []  # TOFU's 400 answers x 10 epochs
    assert load_config().unlearn.stop_when == "auto"
    assert load_config(overrides=["unlearn.stop_when=[]"]).unlearn.stop_when == []
    with pytest.raises(ConfigError, match="stop_when"):
        load_config(overrides=["unlearn.stop_when=sometimes"])
