"""Unlearning losses as pure functions of per-token statistics, and the method registry.

A loss sees tensors only: `TokenStats` (what one policy forward yields at answer positions) and
`RefStats` (the frozen model theta0's numbers at the same positions, usually read from the reference
cache). It never sees a model, a file or a device decision. Every method returns `LossTerms`: the
total to minimise and named parts for the progress bar, the training log and the report.

Methods (`METHODS[name]`) = one forget loss + its settings model (a `MethodSettings` subclass: its
keys under `unlearn`, with the published defaults) + a retain term (none, NLL or KL to theta0).
`register` adds one; the config, `--help` and `config keys` follow from the registry:

    tpo       LPL on UW + lambda * PL on GW (docs/methods.md 1b, faithful defaults)   retain: none
    tpo_gd    TPO + retain NLL                                                   retain: nll
    tpo_kl    TPO, hinge PL, + 3 x KL(theta0 || theta) on retain (the main job's)  retain: kl
    ga        gradient ascent on the forget NLL                                  retain: none
    graddiff  GA + retain NLL                                                    retain: nll
    ga_kl     GA + KL(theta0 || theta) on retain ("KL" in TOFU)                  retain: kl
    npo       -(2/b) mean log sig(-b (log p(a) - log p0(a)))                     retain: none
    npo_rt    NPO + retain NLL                                                   retain: nll
    simnpo    -(2/b) mean log sig(-(b/|a|) log p(a) - delta), reference-free     retain: nll
    idkpo     DPO preferring an "I don't know" answer over the true one          retain: nll
    wga       -mean[sg(p^b) nll]           (weighted GA, G-effect)               retain: nll
    satimp    -mean[sg(p^b1 (1-p)^b2) nll] (saturation x importance)             retain: nll
    tnpo      -mean[sg(2 p^b / (p^b + p0^b)) nll] (token-level NPO weight)       retain: nll
    undial    CE(p, softmax(z0 - b onehot(y))) (self-distillation, target lowered) retain: nll
    rmu       ||h_l(forget) - c u||^2 + alpha ||h_l(retain) - h0_l(retain)||^2   retain: rmu
    atwu      -mean[g sg(p^(b g)) nll], g from a learned token scorer (atwu.py)    retain: nll

Token selection (`tokens`) for every forget loss but TPO (which splits UW/GW by definition):
`all` every answer token, `uw` only the unwanted-word tokens ("GA on UW only" separates the
identifier's effect from the loss's), `weighted` soft weights w_t in [0, 1] (identifier scores or
ATWU). Token-mean losses become sum(w x) / sum(w) over the micro-batch; sequence-level losses (NPO,
SimNPO, IdkPO) use the weighted sum over the selected tokens as the sequence log-probability, soft
weights rescaled so they add up to the answer length. A sample with no selected token is left out;
a micro-batch with none at all gives a loss of exactly 0 (never NaN), still connected to the graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from tokenforget.forward import token_nll
from tokenforget.registry import METHODS

TokenMode = Literal["all", "uw", "weighted"]


@dataclass
class TokenStats:
    """One policy forward at answer positions, flattened over the micro-batch (N tokens)."""

    logits: torch.Tensor  # (N, V): the logits that predict each answer token
    targets: torch.Tensor  # (N,)
    rows: torch.Tensor  # (N,) sample index in the micro-batch, grouped and in order
    n_rows: int
    uw: torch.Tensor  # (N,) bool: unwanted-word token
    eos: torch.Tensor  # (N,) bool: the answer's end-of-sequence token
    weights: torch.Tensor | None = None  # (N,) soft forget weights in [0, 1]
    hidden: torch.Tensor | None = None  # (N, H) hidden states at a chosen layer (RMU, ATWU)
    _logp: torch.Tensor | None = field(default=None, repr=False)

    @property
    def gold_logit(self) -> torch.Tensor:
        """Raw logit of the true next token, (N,), fp32."""
        return self.logits.float().gather(-1, self.targets[:, None]).squeeze(-1)

    @property
    def mean_logit(self) -> torch.Tensor:
        """The mean logit over the vocabulary at each position, (N,), fp32: the part of every logit
        that softmax ignores."""
        return self.logits.float().mean(-1)

    @property
    def logp(self) -> torch.Tensor:
        """log p(a_t | q, a_<t), (N,), fp32 (computed once)."""
        if self._logp is None:
            self._logp = -token_nll(self)  # the forward's own definition, shared with evaluation
        return self._logp


@dataclass
class RefStats:
    """theta0 at the same positions as a TokenStats (from the reference cache or a loaded theta0)."""

    gold_logit: torch.Tensor | None = None  # (N,)
    logp: torch.Tensor | None = None  # (N,)
    mean_logit: torch.Tensor | None = None  # (N,): the mean over the vocabulary
    logits: torch.Tensor | None = None  # (N, V): only for losses that need theta0's distribution
    hidden: torch.Tensor | None = None  # (N, H): RMU's retain anchor

    def __post_init__(self) -> None:
        if self.mean_logit is None and self.logits is not None:
            self.mean_logit = self.logits.float().mean(-1)


@dataclass
class LossInputs:
    forget: TokenStats
    forget_ref: RefStats | None = None
    retain: TokenStats | None = None
    retain_ref: RefStats | None = None
    alt: TokenStats | None = None  # IdkPO: the preferred ("I don't know") answers, one per forget row
    alt_ref: RefStats | None = None


class MethodSettings(BaseModel):
    """The numbers every forget loss shares; a method with numbers of its own subclasses it.

    A method's settings model is its part of the `unlearn` config section: `--set unlearn.beta=0.2`
    reaches the loss as `cfg.beta`, and a key the method does not declare is refused before any work.
    Field defaults are the published ones."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    gamma: float = Field(1.0, ge=0, description="Weight of the forget term.")
    alpha: float = Field(1.0, ge=0, description="Weight of the retain term.")
    tokens: TokenMode = Field(
        "all",
        description=(
            "Which answer tokens the forget loss acts on: all; uw = only unwanted-word tokens (GA/NPO "
            "on UW only); weighted = soft weights from span scores."
        ),
    )


class NpoSettings(MethodSettings):
    beta: float = Field(0.1, gt=0, description="Inverse temperature of the preference loss.")


class NpoLossSettings(NpoSettings):
    ratio: Literal["sequence", "token"] = Field(
        "sequence",
        description=(
            "NPO: sequence = one log-sigmoid of the log-ratio to theta0 summed over a sample's "
            "selected tokens (published); token = one log-sigmoid per token, summed per sample (ours): "
            "the same gradient at theta0, but each token's weight saturates on its own, so a span "
            "that lags the rest of its answer is still pushed down."
        ),
    )


class NpoRtUwSettings(NpoLossSettings):
    """npo_rt_uw: NPO+RT's settings with the forget loss on the unwanted-word tokens only, measured on
    TOFU-mini, not published (README, "The main job's default")."""

    tokens: TokenMode = Field(
        "uw", description="npo_rt_uw: the tokens NPO acts on: uw (default), all (= npo_rt) or weighted."
    )


class NpoKlUwSettings(NpoRtUwSettings):
    """npo_kl_uw: npo_rt_uw's settings with two defaults measured on TOFU-mini and a deletion request,
    not published (README, "The main job's default"): KL(theta0 || theta) on the retain answers at
    weight 10 in place of their NLL, and NPO's ratio chosen by the run's stop criterion (auto)."""

    alpha: float = Field(10.0, ge=0, description="npo_kl_uw: weight of KL(theta0 || theta) on retain.")
    ratio: Literal["sequence", "token", "auto"] = Field(  # type: ignore[assignment]  # adds auto
        "auto",
        description=(
            "npo_kl_uw: auto (default) = token where the run stops on uw_leak_rate (a deletion "
            "request: a span that lags its answer must still be pushed), else sequence (NPO's "
            "published form, which forgot TOFU-mini with less KL on retain); or either by name."
        ),
    )


class WgaSettings(MethodSettings):
    beta: float = Field(1.0, gt=0, description="WGA: exponent of the sg(p^beta) token weight.")


class UndialSettings(MethodSettings):
    beta: float = Field(10.0, gt=0, description="UNDIAL: how far the true token's logit is lowered.")


class TpoSettings(MethodSettings):
    beta: float = Field(0.3, gt=0, description="TPO: inverse temperature of LPL.")
    lam: float = Field(
        1.0, ge=0, description="TPO: weight of the preservation loss on GW (published code: 1)."
    )
    lpl_reduction: Literal["batch", "sample"] = Field(
        "batch", description="TPO: batch = one Delta per micro-batch inside the log-sigmoid (faithful)."
    )
    pl_reduction: Literal["sum", "mean"] = Field(
        "sum", description="TPO: PL per sample, sum (faithful) or mean."
    )
    pl_form: Literal["nll", "hinge"] = Field(
        "nll",
        description=(
            "TPO: PL as the GW tokens' NLL (faithful: it trains them on towards certainty; at 50 "
            "steps on TOFU-mini every run ended with them near p = 1, above the target's level), or "
            "hinge: only how far a GW token's log p fell below theta0's, max(0, log p0 - log p), "
            "which gives no gradient above theta0 (they can still rise with the rest of the model)."
        ),
    )
    lpl_space: Literal["logit", "centered", "logprob"] = Field(
        "logit",
        description=(
            "TPO: LPL on raw gold logits (faithful; a shift of every logit at a position raises Delta "
            "without changing a probability, logged as delta_shared), on gold logits minus the "
            "position's mean logit (centered), or on log-probabilities (logprob)."
        ),
    )


class TpoKlSettings(TpoSettings):
    """tpo_kl: TPO's settings with two defaults measured on TOFU-mini, not published (README, "The
    main job's default"): the hinge PL and the KL retain term at weight 3."""

    alpha: float = Field(3.0, ge=0, description="tpo_kl: weight of KL(theta0 || theta) on retain.")
    pl_form: Literal["nll", "hinge"] = Field(
        "hinge", description="tpo_kl: PL as hinge (default) or nll (TPO's published PL)."
    )


class SimNpoSettings(MethodSettings):
    beta: float = Field(4.5, gt=0, description="SimNPO: inverse temperature.")
    gamma: float = Field(0.125, ge=0, description="SimNPO: weight of the forget term.")
    delta: float = Field(0.0, description="SimNPO: margin.")
    delta_inside_beta: bool = Field(False, description="SimNPO: the TPO repo's form beta*(-lp/|a| - delta).")


class SatImpSettings(MethodSettings):
    beta: float = Field(5.0, gt=0, description="SatImp: exponent of p.")
    beta2: float = Field(1.0, ge=0, description="SatImp: exponent of (1 - p).")


class AtwuLossSettings(MethodSettings):
    beta: float = Field(5.0, gt=0, description="ATWU: saturation exponent.")
    gamma: float = Field(5.0, ge=0, description="ATWU: weight of the forget term.")
    alpha: float = Field(0.5, ge=0, description="ATWU: weight of the retain term.")


class RmuSettings(MethodSettings):
    alpha: float = Field(100.0, ge=0, description="RMU: weight of the retain anchor.")
    steering: float = Field(6.5, gt=0, description="RMU: norm of the control vector.")
    layer: int | None = Field(None, ge=0, description="RMU: hidden layer (default: the middle block).")


@dataclass
class LossTerms:
    total: torch.Tensor
    parts: dict[str, torch.Tensor]


def _zero(stats: TokenStats) -> torch.Tensor:
    """An exact 0 that keeps the graph connected (backward works, gradients are 0)."""
    return stats.logits.sum() * 0.0


def _row_sum(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    return torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(0, rows, values)


def token_weights(stats: TokenStats, mode: TokenMode) -> torch.Tensor:
    """Per-token selection weights (N,) in fp32 for `mode` (all / uw / weighted)."""
    if mode == "all":
        return torch.ones_like(stats.targets, dtype=torch.float32)
    if mode == "uw":
        return stats.uw.float()
    if stats.weights is None:
        raise ValueError(
            "tokens=weighted needs per-token weights: give spans with scores (identify) or use ATWU"
        )
    return stats.weights.float()


def weighted_token_mean(values: torch.Tensor, weights: torch.Tensor, stats: TokenStats) -> torch.Tensor:
    """sum(w x) / sum(w) over the micro-batch; exactly 0 when no token is selected."""
    total = weights.sum()
    if float(total) == 0.0:
        return _zero(stats)
    return (weights * values).sum() / total


def sequence_logp(logp: torch.Tensor, weights: torch.Tensor, stats: TokenStats) -> tuple:
    """(per-row weighted log-prob sum, per-row selected length, rows that have a selected token).

    Soft weights are rescaled per row so they add up to the row's answer length (docs/atwu.md: scored NPO)."""
    length = _row_sum(torch.ones_like(logp), stats.rows, stats.n_rows)
    mass = _row_sum(weights, stats.rows, stats.n_rows)
    has = mass > 0
    if not bool(((weights == 0) | (weights == 1)).all()):
        scale = torch.where(has, length / mass.clamp_min(1e-12), torch.zeros_like(mass))
        weights = weights * scale[stats.rows]
        mass = torch.where(has, length, mass)
    return _row_sum(weights * logp, stats.rows, stats.n_rows), mass, has


# ----------------------------------------------------------------------------- forget losses


def _need(ref: RefStats | None, what: str, method: str) -> torch.Tensor:
    value = getattr(ref, what) if ref is not None else None
    if value is None:
        raise ValueError(f"{method} needs theta0's {what} (the reference cache or a loaded theta0)")
    return value


def tpo_loss(inputs: LossInputs, cfg: TpoSettings) -> LossTerms:
    """Targeted Preference Optimization (docs/methods.md 1b): LPL on UW tokens + lambda * PL on GW tokens.

    Faithful defaults: raw gold logits, per-sample UW means averaged over the micro-batch *inside*
    the log-sigmoid (one Delta per micro-batch, so Delta depends on the micro-batch by definition),
    PL a per-sample sum over GW + EOS then a batch mean, lambda = 1. Samples without UW are left out
    of LPL; a micro-batch with none gives LPL = 0. The published PL is the GW tokens' NLL, which keeps
    lowering after the target's level: at 50 steps on TOFU-mini every run on the GPT-4o labels ended
    with the same ΔlogP GW, minus the target's mean log p of those tokens (they reach p ~ 1).
    `pl_form=hinge` counts only a fall below theta0's log p.

    Raw logits have a degenerate direction: lowering every logit of a position together raises Delta
    and changes no probability. `delta_shared` logs how much of Delta is such a vocabulary-wide shift
    (theta0's mean logit minus the model's, averaged like Delta); `lpl_space=centered` (gold logit
    minus the position's mean logit) and `logprob` remove it.
    """
    stats, ref = inputs.forget, inputs.forget_ref
    if cfg.lpl_space == "logit":
        now, before = stats.gold_logit, _need(ref, "gold_logit", "tpo")
    elif cfg.lpl_space == "centered":
        now = stats.gold_logit - stats.mean_logit
        before = _need(ref, "gold_logit", "tpo") - _need(ref, "mean_logit", "tpo (lpl_space=centered)")
    else:
        now, before = stats.logp, _need(ref, "logp", "tpo (lpl_space=logprob)")
    # ATWU plugs learned weights in: LPL on w, PL on the tokens the scorer leaves out (w < 0.5, the
    # threshold of its spans); binary w gives the published form. PL on 1 - w trained every token,
    # unwanted ones too, at weight 0.5 while g sat near its start: the answers were learned, not forgotten.
    uw = stats.weights.float() if cfg.tokens == "weighted" and stats.weights is not None else stats.uw.float()
    count = _row_sum(uw, stats.rows, stats.n_rows)
    has = count > 0

    def uw_mean(values: torch.Tensor) -> torch.Tensor:
        """Per sample with UW, the (weighted) mean of `values` over its UW tokens."""
        return _row_sum(uw * values, stats.rows, stats.n_rows)[has] / count[has]

    shared = None
    if bool(has.any()):
        mean_now, mean_before = uw_mean(now), uw_mean(before)
        if ref is not None and ref.mean_logit is not None:
            shared = (uw_mean(ref.mean_logit) - uw_mean(stats.mean_logit)).mean().detach()
        if cfg.lpl_reduction == "batch":
            delta = mean_before.mean() - mean_now.mean()
            lpl = -(2.0 / cfg.beta) * F.logsigmoid(cfg.beta * delta)
        else:
            delta = (mean_before - mean_now).mean()
            lpl = (-(2.0 / cfg.beta) * F.logsigmoid(cfg.beta * (mean_before - mean_now))).mean()
    else:
        delta = lpl = _zero(stats)
    gw = (uw < 0.5).float()  # EOS is never UW, so it is part of GW here
    if cfg.pl_form == "nll":
        kept = -stats.logp
    else:
        # relu, not clamp_min: at theta0 itself (step 0) the hinge gives no gradient
        kept = torch.relu(_need(ref, "logp", "tpo (pl_form=hinge)") - stats.logp)
    per_row = _row_sum(gw * kept, stats.rows, stats.n_rows)
    if cfg.pl_reduction == "mean":
        per_row = per_row / _row_sum(gw, stats.rows, stats.n_rows).clamp_min(1.0)
    pl = per_row.mean()
    parts = {"lpl": lpl, "pl": pl, "delta": delta.detach()}
    if shared is not None:
        parts["delta_shared"] = shared
    if ref is not None and ref.logp is not None and bool(stats.uw.any()):
        parts["uw_dlogp"] = (stats.logp - ref.logp)[stats.uw].mean().detach()
    return LossTerms(total=lpl + cfg.lam * pl, parts=parts)


def ga_loss(inputs: LossInputs, cfg: MethodSettings) -> LossTerms:
    """Gradient ascent: minimise minus the (selected-token) mean NLL of the forget answers."""
    stats = inputs.forget
    forget = -weighted_token_mean(-stats.logp, token_weights(stats, cfg.tokens), stats)
    return LossTerms(total=forget, parts={"forget": forget})


def npo_loss(inputs: LossInputs, cfg: NpoLossSettings) -> LossTerms:
    """NPO: -(2/beta) mean_i log sigma(-beta (log p(a_i) - log p0(a_i))), sequence log-probs; with
    `ratio=token`, -(2/beta) mean_i sum_t log sigma(-beta (log p_t - log p0_t)) over a_i's tokens."""
    stats = inputs.forget
    weights = token_weights(stats, cfg.tokens)
    ref_logp = _need(inputs.forget_ref, "logp", "npo")
    now, _, has = sequence_logp(stats.logp, weights, stats)
    before, _, _ = sequence_logp(ref_logp, weights, stats)
    if not bool(has.any()):
        zero = _zero(stats)
        return LossTerms(total=zero, parts={"forget": zero})
    ratio = (now - before)[has]
    if cfg.ratio == "auto":
        raise ValueError("unlearn.ratio=auto is made concrete when the run starts (unlearn.concrete_ratio)")
    if cfg.ratio == "token":
        per_token = -(2.0 / cfg.beta) * F.logsigmoid(-cfg.beta * (stats.logp - ref_logp))
        forget = sequence_logp(per_token, weights, stats)[0][has].mean()
    else:
        forget = (-(2.0 / cfg.beta) * F.logsigmoid(-cfg.beta * ratio)).mean()
    return LossTerms(total=forget, parts={"forget": forget, "log_ratio": ratio.mean().detach()})


def simnpo_loss(inputs: LossInputs, cfg: SimNpoSettings) -> LossTerms:
    """SimNPO (paper form): -(2/beta) mean_i log sigma(-(beta/|a_i|) log p(a_i) - delta); no theta0."""
    stats = inputs.forget
    now, length, has = sequence_logp(stats.logp, token_weights(stats, cfg.tokens), stats)
    if not bool(has.any()):
        zero = _zero(stats)
        return LossTerms(total=zero, parts={"forget": zero})
    normalised = now[has] / length[has]
    if cfg.delta_inside_beta:
        margin = cfg.beta * (-normalised - cfg.delta)
    else:
        margin = -cfg.beta * normalised - cfg.delta
    forget = (-(2.0 / cfg.beta) * F.logsigmoid(margin)).mean()
    return LossTerms(total=forget, parts={"forget": forget})


def idkpo_loss(inputs: LossInputs, cfg: NpoSettings) -> LossTerms:
    """DPO with the "I don't know" answer preferred over the true one (IdkPO):
    -(2/beta) mean_i log sigma(beta [(log p(w) - log p0(w)) - (log p(l) - log p0(l))])."""
    if inputs.alt is None:
        raise ValueError("idkpo needs the preferred answers (alt) in the batch")
    lose, win = inputs.forget, inputs.alt
    weights = token_weights(lose, cfg.tokens)
    lose_now, _, has = sequence_logp(lose.logp, weights, lose)
    lose_before, _, _ = sequence_logp(_need(inputs.forget_ref, "logp", "idkpo"), weights, lose)
    ones = torch.ones_like(win.logp)
    win_now, _, _ = sequence_logp(win.logp, ones, win)
    win_before, _, _ = sequence_logp(_need(inputs.alt_ref, "logp", "idkpo"), ones, win)
    if not bool(has.any()):
        zero = _zero(lose)
        return LossTerms(total=zero, parts={"forget": zero})
    margin = ((win_now - win_before) - (lose_now - lose_before))[has]
    forget = (-(2.0 / cfg.beta) * F.logsigmoid(cfg.beta * margin)).mean()
    return LossTerms(total=forget, parts={"forget": forget, "margin": margin.mean().detach()})


def _weighted_ascent(inputs: LossInputs, cfg: MethodSettings, factor: torch.Tensor) -> LossTerms:
    stats = inputs.forget
    values = factor.detach() * (-stats.logp)
    forget = -weighted_token_mean(values, token_weights(stats, cfg.tokens), stats)
    return LossTerms(total=forget, parts={"forget": forget})


def wga_loss(inputs: LossInputs, cfg: WgaSettings) -> LossTerms:
    """Weighted GA (Wang et al. 2025): -mean_t[sg(p_t^beta) nll_t]; confident tokens weigh more."""
    return _weighted_ascent(inputs, cfg, (cfg.beta * inputs.forget.logp).exp())


def satimp_loss(inputs: LossInputs, cfg: SatImpSettings) -> LossTerms:
    """SatImp (Yang et al. 2025): -mean_t[sg(p_t^beta1 (1 - p_t)^beta2) nll_t]; beta1 = beta."""
    p = inputs.forget.logp.exp()
    return _weighted_ascent(inputs, cfg, p.pow(cfg.beta) * (1 - p).pow(cfg.beta2))


def tnpo_loss(inputs: LossInputs, cfg: NpoSettings) -> LossTerms:
    """TNPO (Wang et al. 2025): -mean_t[sg(w_t) nll_t], w_t = 2 p_t^b / (p_t^b + p0_t^b)."""
    now = cfg.beta * inputs.forget.logp
    before = cfg.beta * _need(inputs.forget_ref, "logp", "tnpo")
    weight = 2 * torch.sigmoid(now - before)  # = 2 p^b / (p^b + p0^b), stable in log space
    return _weighted_ascent(inputs, cfg, weight)


def undial_loss(inputs: LossInputs, cfg: UndialSettings) -> LossTerms:
    """UNDIAL (Dong et al. 2025): mean_t CE(p_theta, softmax(z0_t - beta onehot(a_t)))."""
    stats = inputs.forget
    ref_logits = _need(inputs.forget_ref, "logits", "undial").float()
    target = ref_logits.scatter_add(
        -1, stats.targets[:, None], torch.full_like(ref_logits[:, :1], -cfg.beta)
    ).softmax(-1)
    ce = -(target * stats.logits.float().log_softmax(-1)).sum(-1)
    forget = weighted_token_mean(ce, token_weights(stats, cfg.tokens), stats)
    return LossTerms(total=forget, parts={"forget": forget})


def rmu_loss(inputs: LossInputs, cfg: RmuSettings, control: torch.Tensor | None = None) -> LossTerms:
    """RMU (Li et al. 2024): push layer-l hidden states of forget tokens towards c*u (a fixed random
    unit vector u = `control`, bound by the training session, scaled by c = steering); the retain
    anchor is its own term (see `rmu_retain`)."""
    stats = inputs.forget
    if stats.hidden is None or control is None:
        raise ValueError("rmu needs hidden states at its layer and the control vector")
    goal = cfg.steering * control.to(stats.hidden)
    distance = (stats.hidden.float() - goal.float()).square().mean(-1)
    forget = weighted_token_mean(distance, token_weights(stats, cfg.tokens), stats)
    return LossTerms(total=forget, parts={"forget": forget})


ATWU_FORMS = ("saturated", "correct", "plain")  # atwu.base values that use ATWU's own forget term


def atwu_loss(inputs: LossInputs, cfg: AtwuLossSettings, form: str = "saturated") -> LossTerms:
    """ATWU's model loss (docs/atwu.md): -mean_t[g_t * sg(p_t^(beta g_t)) * nll_t], a saturated gradient
    ascent weighted by the learned scorer's g_t (in `forget.weights`); `form=correct` (atwu.base)
    uses sg(p_t^beta), `plain` no saturation. A plain mean over the answer tokens, as the authors' code."""
    stats = inputs.forget
    if stats.weights is None:
        raise ValueError("atwu needs the scorer's token weights in forget.weights")
    g, nll = stats.weights, -stats.logp
    if form == "saturated":
        factor = (cfg.beta * g.detach() * stats.logp).exp().detach()
    elif form == "correct":
        factor = (cfg.beta * stats.logp).exp().detach()
    else:
        factor = torch.ones_like(nll)
    forget = -(g * factor * nll).mean()
    return LossTerms(total=forget, parts={"forget": forget, "mean_g": g.detach().mean()})


# ----------------------------------------------------------------------------- retain terms


def retain_nll(inputs: LossInputs, cfg: MethodSettings) -> torch.Tensor:
    """Mean NLL over the retain micro-batch's answer tokens."""
    return -_require_retain(inputs).logp.mean()


def retain_kl(inputs: LossInputs, cfg: MethodSettings) -> torch.Tensor:
    """Mean over retain tokens of KL(p_theta0 || p_theta) (needs theta0's logits on the retain batch)."""
    stats = _require_retain(inputs)
    ref = _need(inputs.retain_ref, "logits", "the kl retain term").float().log_softmax(-1)
    now = stats.logits.float().log_softmax(-1)
    return (ref.exp() * (ref - now)).sum(-1).mean()


def rmu_retain(inputs: LossInputs, cfg: MethodSettings) -> torch.Tensor:
    """RMU's retain anchor: mean squared distance of layer-l hidden states to theta0's."""
    stats = _require_retain(inputs)
    ref = _need(inputs.retain_ref, "hidden", "the rmu retain term")
    return (stats.hidden.float() - ref.float()).square().mean(-1).mean()


def _require_retain(inputs: LossInputs) -> TokenStats:
    if inputs.retain is None:
        raise ValueError("this retain term needs a retain batch (--retain)")
    return inputs.retain


RETAIN_TERMS: dict[str, Callable[[LossInputs, MethodSettings], torch.Tensor]] = {
    "nll": retain_nll,
    "kl": retain_kl,
    "rmu": rmu_retain,
}
# retain terms that read theta0's outputs on the retain batch: training holds a frozen copy of theta0
THETA0_RETAIN_TERMS = frozenset({"kl", "rmu"})

# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Method:
    """A registered unlearning method: its forget loss, its settings model, its default retain term."""

    name: str
    forget: Callable[..., LossTerms]  # (inputs, settings) -> LossTerms
    retain: Literal["none", "nll", "kl", "rmu"]
    summary: str
    settings: type[MethodSettings] = MethodSettings  # its keys under `unlearn`, published defaults
    needs_ref_logp: bool = False  # per-token theta0 log-probs on the forget set (reference cache)
    needs_ref_logit: bool = False  # per-token theta0 gold logits (reference cache)
    needs_ref_model: bool = False  # the forget loss reads theta0's full outputs on the forget rows (UNDIAL)
    needs_alt: bool = False  # "I don't know" answers
    needs_hidden: bool = False  # hidden states at `unlearn.layer`
    needs_scorer: bool = False  # ATWU: token weights from the learned scorer
    uses_tokens: bool = True  # honours `unlearn.tokens` (TPO splits UW/GW itself)
    takes_weights: bool = False  # can be ATWU's base loss (`atwu.base`), driven by learned weights
    forms: tuple[str, ...] = ()  # ATWU: its own forget terms, the other values `atwu.base` takes

    @property
    def defaults(self) -> dict[str, Any]:
        """The method's own numbers and their published defaults (for help texts)."""
        common = MethodSettings.model_fields
        own = self.settings.model_fields
        return {k: f.default for k, f in own.items() if k not in common or f.default != common[k].default}


def theta0_reads(method: Method, retain_term: str) -> tuple[bool, bool]:
    """Which rows of a micro-batch a frozen theta0 must see: (forget rows, retain rows). The forget rows
    only where the forget loss reads theta0's full outputs; the retain rows for a KL or RMU retain term.
    Per-token numbers come from the reference cache instead, and the alt rows are never read."""
    return method.needs_ref_model, retain_term in THETA0_RETAIN_TERMS


def holds_theta0(method: Method, retain_term: str) -> bool:
    """Whether training needs a frozen theta0 in memory: the forget loss or the retain term reads its
    full outputs (`unlearn.retain_loss=kl` on any method included)."""
    return any(theta0_reads(method, retain_term))


def register(method: Method) -> Method:
    """Add a method to the registry: `unlearn.method`, its settings, `--help` and the CLI follow."""
    return METHODS.register(method)


for _m in (
    Method("tpo", tpo_loss, "none", "Targeted Preference Optimization: LPL on UW + lambda*PL on GW",
           TpoSettings, needs_ref_logp=True, needs_ref_logit=True, uses_tokens=False, takes_weights=True),
    Method("tpo_gd", tpo_loss, "nll", "TPO + retain NLL", TpoSettings,
           needs_ref_logp=True, needs_ref_logit=True, uses_tokens=False),
    Method("tpo_kl", tpo_loss, "kl", "TPO, hinge PL, + 3 x KL(theta0||theta) on retain (the default before)",
           TpoKlSettings, needs_ref_logp=True, needs_ref_logit=True, uses_tokens=False),
    Method("ga", ga_loss, "none", "gradient ascent on the forget answers", takes_weights=True),
    Method("graddiff", ga_loss, "nll", "GA + retain NLL (gradient difference)"),
    Method("ga_kl", ga_loss, "kl", "GA + KL(theta0||theta) on retain (TOFU's 'KL')"),
    Method("npo", npo_loss, "none", "negative preference optimization", NpoLossSettings, needs_ref_logp=True,
           takes_weights=True),
    Method("npo_rt", npo_loss, "nll", "NPO + retain NLL", NpoLossSettings, needs_ref_logp=True),
    Method("npo_rt_uw", npo_loss, "nll", "NPO on the unwanted words only + retain NLL",
           NpoRtUwSettings, needs_ref_logp=True),
    Method("npo_kl_uw", npo_loss, "kl",
           "NPO on the unwanted words + 10 x KL(theta0||theta) on retain (the main job's)",
           NpoKlUwSettings, needs_ref_logp=True),
    Method("simnpo", simnpo_loss, "nll", "SimNPO: reference-free, length-normalised NPO", SimNpoSettings,
           takes_weights=True),
    Method("idkpo", idkpo_loss, "nll", "DPO preferring an 'I don't know' answer", NpoSettings,
           needs_ref_logp=True, needs_alt=True),
    Method("wga", wga_loss, "nll", "weighted gradient ascent, sg(p^beta) token weights", WgaSettings,
           takes_weights=True),
    Method("satimp", satimp_loss, "nll", "SatImp, sg(p^beta (1-p)^beta2) token weights", SatImpSettings),
    Method("tnpo", tnpo_loss, "nll", "token-level NPO weights on gradient ascent", NpoSettings,
           needs_ref_logp=True),
    Method("undial", undial_loss, "nll", "UNDIAL self-distillation with the true token lowered",
           UndialSettings, needs_ref_model=True),
    Method("atwu", atwu_loss, "nll", "ATWU: learned token weights, saturated weighted GA (docs/atwu.md)",
           AtwuLossSettings, needs_scorer=True, uses_tokens=False, forms=ATWU_FORMS),
    Method("rmu", rmu_loss, "rmu", "RMU: scramble layer-l states of forget tokens, anchor retain",
           RmuSettings, needs_hidden=True),
):  # fmt: skip
    register(_m)


def compute(method: Method, inputs: LossInputs, cfg: MethodSettings, retain: str | None = None) -> LossTerms:
    """gamma * forget loss + alpha * retain term (the method's default term unless `retain` says)."""
    terms = method.forget(inputs, cfg)
    total = cfg.gamma * terms.total
    parts = dict(terms.parts)
    term = retain or method.retain
    if term != "none":
        value = RETAIN_TERMS[term](inputs, cfg)
        parts[f"retain_{term}"] = value
        total = total + cfg.alpha * value
    parts = {"loss": total, **parts}
    return LossTerms(total=total, parts=parts)


def at_reference(beta: float) -> float:
    """The value of LPL and NPO at theta = theta0: (2/beta) log 2 (a step-0 identity tests check)."""
    return 2.0 / beta * math.log(2.0)
