"""Cheap evaluation during training (`unlearn.eval_every`): a few teacher-forced numbers per point.

Every `eval_every` optimizer steps (and at step 0, theta0) the model scores the forget answers and
a slice of retain answers in one pass; `trajectory.jsonl` gets one row per point:

- `forget_Q_A_Prob`, `retain_Q_A_Prob`: TOFU's probability (mean over questions of exp(-mean NLL
  per answer token, EOS included)) on the forget answers and on the retain slice;
- `uw_dlogp`, `gw_dlogp`: mean change of log p against theta0 over every unwanted (general) answer
  token of the forget set (EOS left out), the token-level numbers of the final evaluation;
- `uw_leak_rate` (only when a stop condition asks for it: it generates): the share of unwanted words
  in the greedy answers to the forget questions, as the final evaluation counts it.

theta0's per-token log-probabilities come from the step-0 point itself and are kept in the run's
theta0 file (`theta0.safetensors`, section `trajectory`), so a resumed run continues the same
curves. About two forward passes over ~80 answers per point: seconds on a GPU, 20-25 s for
SmolLM2-135M on 2 CPU cores (measured in the showdown). The step-0 scores depend only on theta0,
the probe's texts and the precision, so the runs that share them (a sweep's) share one file in the
user cache (`$TOKENFORGET_CACHE/trajectory/`) and skip that pass.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tokenforget.artifacts import Stamp
from tokenforget.data.encode import Encoded
from tokenforget.evaluate.metrics import masked_mean_delta
from tokenforget.forward.scoring import encoded_nll
from tokenforget.reference import THETA0_FILE, read_section, reference_stamp, theta0_numbers
from tokenforget.runs import trim_step_log

TRAJECTORY_FILE = "trajectory.jsonl"
LEGACY_THETA0_FILE = "trajectory_theta0.safetensors"  # run folders made before theta0.safetensors


@dataclass
class Probe:
    """What a trajectory point scores: the forget answers (UW flags from the labels) and retain answers."""

    forget: list[Encoded]
    retain: list[Encoded]
    pad_id: int
    precision: Any
    batch_size: int = 32
    leak: LeakProbe | None = None


@dataclass
class LeakProbe:
    """The greedy half of a point: the forget questions' prompts and the unwanted words to look for."""

    prompts: list[list[int]]
    unwanted: list[list[str]]  # per question, the words the question does not already give
    tokenizer: Any
    max_new_tokens: int = 48


def token_masks(forget: Sequence[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
    """(UW, GW) masks over the concatenated answer tokens; EOS (a zero-width offset at the answer's
    end) is neither."""
    uw, gw = [], []
    for item in forget:
        flags = item.uw or [False] * len(item.answer_offsets)
        for (start, end), is_uw in zip(item.answer_offsets, flags, strict=True):
            uw.append(is_uw)
            gw.append(not is_uw and end > start)
    return torch.tensor(uw, dtype=torch.bool), torch.tensor(gw, dtype=torch.bool)


def qa_prob(nll: Sequence[torch.Tensor]) -> float | None:
    """TOFU's Q_A_Prob: the mean over answers of exp(-mean token NLL)."""
    values = [math.exp(-float(x.mean())) for x in nll if x.numel()]
    return sum(values) / len(values) if values else None


def point_from_nll(
    forget_nll: Sequence[torch.Tensor],
    retain_nll: Sequence[torch.Tensor],
    theta0_logp: torch.Tensor,
    masks: tuple[torch.Tensor, torch.Tensor],
) -> dict[str, float | None]:
    """One trajectory row from per-token NLLs (pure: tensors in, numbers out)."""
    logp = -torch.cat(list(forget_nll))
    uw, gw = masks
    return {
        "forget_Q_A_Prob": qa_prob(forget_nll),
        "retain_Q_A_Prob": qa_prob(retain_nll),
        "uw_dlogp": masked_mean_delta(logp, theta0_logp, uw),
        "gw_dlogp": masked_mean_delta(logp, theta0_logp, gw),
    }


def theta0_stamp(model_source: str, probe: Probe) -> Stamp:
    """What the step-0 scores depend on: theta0's weights, the probe's texts and the precision (the
    reference cache's stamp, over the probe's two groups)."""
    groups = {"trajectory-forget": probe.forget, "trajectory-retain": probe.retain}
    stamp = reference_stamp(model_source, groups, [], probe.precision.label, kind="trajectory")
    return Stamp(stamp.kind, {**stamp.payload, "answers": len(probe.forget) + len(probe.retain)})


def pack_nll(nll: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-answer NLLs as two tensors (all tokens, and each answer's length) for a safetensors file."""
    return {"nll": torch.cat(list(nll)).contiguous(), "lengths": torch.tensor([x.numel() for x in nll])}


def unpack_nll(tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.split(tensors["nll"], tensors["lengths"].tolist()))


class Trajectory:
    """Writes `trajectory.jsonl` in a run folder; resumes from the rows and the theta0 numbers it finds.
    `stamp`: what the step-0 scores depend on (they are shared through the user cache)."""

    def __init__(self, folder: Path, probe: Probe, stamp: Stamp) -> None:
        self.folder = folder
        self.log = folder / TRAJECTORY_FILE
        self.stamp = stamp
        self.probe = probe
        self.masks = token_masks(probe.forget)
        self.theta0: torch.Tensor | None = None
        self.seconds = 0.0  # spent measuring in this process (kept apart from training time)
        self._first: dict[str, Any] | None = None
        found = read_section(folder / THETA0_FILE, stamp)
        if found is not None:
            self.theta0 = -torch.cat(unpack_nll(found)[: len(probe.forget)])
        elif (folder / LEGACY_THETA0_FILE).is_file():
            self.theta0 = load_file(str(folder / LEGACY_THETA0_FILE))["logp"]

    def leak_rate(self, model: torch.nn.Module) -> float | None:
        from tokenforget.evaluate.metrics import leak_rate
        from tokenforget.forward.generation import generate_greedy

        leak = self.probe.leak
        assert leak is not None
        answers = generate_greedy(
            model,
            leak.tokenizer,
            leak.prompts,
            self.probe.precision,
            leak.max_new_tokens,
            self.probe.batch_size,
        )
        return leak_rate(leak.unwanted, answers)

    def first_row(self) -> dict[str, Any]:
        """The step-0 point (theta0), which relative stop conditions compare with (read once)."""
        if self._first is None:
            from tokenforget.runs import read_step_log

            rows = read_step_log(self.log)
            if rows and rows[0]["step"] == 0:
                self._first = rows[0]
        return self._first or {}

    def resume(self, done_step: int) -> None:
        """Drop rows after the checkpoint the run resumes from (they are measured again); a fresh
        start (step 0) measures everything again, theta0 included."""
        trim_step_log(self.log, done_step if done_step else -1)
        self._first = None
        if done_step == 0:
            self.theta0 = None

    def measure(self, model: torch.nn.Module, step: int) -> dict[str, Any]:
        """Score the probe with `model` as it is after `step` optimizer steps (0 = theta0)."""
        started = time.perf_counter()
        n = len(self.probe.forget)
        texts = [*self.probe.forget, *self.probe.retain]

        def score() -> list[torch.Tensor]:
            return encoded_nll(model, texts, self.probe.pad_id, self.probe.precision, self.probe.batch_size)

        if step == 0:  # theta0: the same for every run on these texts
            nll = unpack_nll(theta0_numbers(self.folder, self.stamp, lambda: pack_nll(score())))
            self.theta0 = -torch.cat(nll[:n])
        elif self.theta0 is None:
            raise RuntimeError(
                f"theta0's scores are missing from {self.folder / THETA0_FILE}: "
                f"the trajectory cannot resume at {step}"
            )
        else:
            nll = score()
        row = {"step": step, **point_from_nll(nll[:n], nll[n:], self.theta0, self.masks)}
        if self.probe.leak is not None:
            row["uw_leak_rate"] = self.leak_rate(model)
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        self.seconds += time.perf_counter() - started
        return row
