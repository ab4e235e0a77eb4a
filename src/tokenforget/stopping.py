"""When unlearning stops: conditions on the in-training evaluation (`trajectory.jsonl` rows).

`unlearn.stop_when` ends a run once every condition holds (e.g. `uw_leak_rate<=0`: no unwanted
word comes out of the greedy answers); `unlearn.guard` ends it once one fails (e.g.
`retain_Q_A_Prob>=0.9x`: the retain answers keep 0.9x their probability at step 0). A value ending
in `x` is relative to the metric's value at step 0 (theta0). Pure: rows in, verdicts out.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# what a trajectory row holds (evaluate/trajectory.py); uw_leak_rate only when a condition asks for it
METRICS = ("forget_Q_A_Prob", "retain_Q_A_Prob", "uw_dlogp", "gw_dlogp", "uw_leak_rate")
_OPS = {"<=": operator.le, ">=": operator.ge}
_FORM = re.compile(r"^\s*(\w+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*(x?)\s*$")


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    value: float
    relative: bool  # value x the metric at step 0

    def threshold(self, first: Mapping[str, float | None]) -> float | None:
        if not self.relative:
            return self.value
        base = first.get(self.metric)
        return None if base is None else self.value * base

    def holds(self, row: Mapping[str, float | None], first: Mapping[str, float | None]) -> bool | None:
        """Whether the row meets the condition (None: the row has no value for it)."""
        now, bound = row.get(self.metric), self.threshold(first)
        return None if now is None or bound is None else _OPS[self.op](now, bound)

    def describe(self, row: Mapping[str, float | None], first: Mapping[str, float | None]) -> str:
        bound = self.threshold(first)
        where = f" ({self.value}x step 0)" if self.relative else ""
        return f"{self.metric} {row.get(self.metric):.4g} {self.op} {bound:.4g}{where}"

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}{'x' if self.relative else ''}"


def parse_condition(text: str) -> Condition:
    """`metric<=value` or `metric>=value`, value optionally followed by x (relative to step 0)."""
    found = _FORM.match(text)
    if not found or found.group(1) not in METRICS:
        raise ValueError(
            f"{text!r} is not a condition: write METRIC<=VALUE or METRIC>=VALUE (VALUE may end in x, "
            f"relative to step 0), METRIC one of {', '.join(METRICS)}; e.g. uw_leak_rate<=0"
        )
    metric, op, value, relative = found.groups()
    return Condition(metric, op, float(value), relative == "x")


def stop_reason(
    row: Mapping[str, float | None],
    first: Mapping[str, float | None],
    stop_when: Sequence[Condition],
    guard: Sequence[Condition],
) -> str | None:
    """Why the run stops at this evaluation point (None: it goes on). A failed guard wins."""
    failed = [c for c in guard if c.holds(row, first) is False]
    if failed:
        return "utility guard: " + "; ".join(c.describe(row, first) for c in failed) + " failed"
    if stop_when and all(c.holds(row, first) for c in stop_when):
        return "stop_when met: " + "; ".join(c.describe(row, first) for c in stop_when)
    return None


# unlearn.stop_when=auto on a deletion request: no unwanted word comes out of the greedy answers
AUTO_CRITERION = ("uw_leak_rate<=0",)


def auto_stop_when(hand_marked: bool, budget: int, cap: int) -> list[str]:
    """`unlearn.stop_when=auto` made concrete: AUTO_CRITERION where the unwanted words are spans marked
    by hand and the step budget (epochs, at least min_steps) is within the step cap, so the criterion
    can only lengthen the run; else none. Identifier labels mark words a model may say for other
    reasons, and a long run's budget is the user's."""
    return list(AUTO_CRITERION) if hand_marked and budget <= cap else []


def steps_by_epochs(epochs: float, forget_samples: int, batch_size: int) -> int:
    """Optimizer steps that `epochs` over the forget set take (the last batch may be short)."""
    return math.ceil(epochs * forget_samples / batch_size)


def budget_reason(
    epochs: float, forget_samples: int, batch_size: int, min_steps: int, cap: int | None
) -> str:
    """Why a run that no condition stopped ended where it did: the step cap (with stop_when), the
    minimum number of steps (a small forget set), or the epochs over the forget set."""
    if cap is not None:
        return f"the step cap (unlearn.max_steps={cap}) before stop_when was met"
    by_epochs = steps_by_epochs(epochs, forget_samples, batch_size)
    epoch_word = "epoch" if epochs == 1 else "epochs"
    plan = f"{epochs:g} {epoch_word} of {forget_samples} forget answers at batch {batch_size}"
    if min_steps > by_epochs:
        return f"the step budget: unlearn.min_steps={min_steps} ({plan} would be {by_epochs})"
    return f"the step budget: {plan} ({by_epochs} steps)"


def stop_sentence(stopped: Mapping[str, object]) -> str:
    """The run's `stopped` record (unlearn.json) in words, for the headline."""
    return f"Unlearning stopped at step {stopped['step']}: {stopped['reason']}."
