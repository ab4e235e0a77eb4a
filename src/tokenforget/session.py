"""The training session of `unlearn`: the method as the config resolves it, what one run holds in
memory (model, encoded sets, theta0's reference cache or frozen copy, ATWU's scorer), and the loss
of one micro-batch from one policy forward.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokenforget.atwu import (
    ScorerRegularisers,
    TokenScorer,
    alignment,
    scorer_loss,
)
from tokenforget.config import AtwuSettings, Config
from tokenforget.data.encode import Encoded, encode, pad_batch
from tokenforget.data.records import Sample
from tokenforget.data.sets import idk_answers, load_forget, load_retain
from tokenforget.distributed import maybe_prepared
from tokenforget.errors import ConfigError, DataError, DataIssue
from tokenforget.forward import AnswerForward, AnswerModel, answer_flags
from tokenforget.inputs import missing_retain
from tokenforget.losses import (
    ATWU_FORMS,
    METHODS,
    LossInputs,
    LossTerms,
    Method,
    MethodSettings,
    RefStats,
    TokenStats,
    compute,
    holds_theta0,
    theta0_reads,
)
from tokenforget.models import load_model, resolve_model, wrap_lora
from tokenforget.progress import console
from tokenforget.reference import (
    THETA0_FILE,
    compute_reference,
    read_section,
    reference_stamp,
    reference_stats,
    theta0_numbers,
)


def atwu_method(cfg: Config) -> Method:
    """The loss ATWU trains the model with: its own saturated form, or a registered loss on weights g."""
    own = METHODS["atwu"]
    if cfg.atwu.base in ATWU_FORMS:
        return dataclasses.replace(own, forget=functools.partial(own.forget, form=cfg.atwu.base))
    base = METHODS[cfg.atwu.base]
    return dataclasses.replace(
        base, name=f"atwu+{base.name}", retain=own.retain, needs_scorer=True, uses_tokens=True
    )


def resolve_method(cfg: Config, hidden_size: int | None = None) -> Method:
    """The registered method with what the session binds: ATWU's base loss, and RMU's control vector
    once the model's hidden size is known."""
    method = METHODS[cfg.unlearn.method]
    if method.needs_scorer:
        return atwu_method(cfg)
    if method.needs_hidden and hidden_size is not None:
        gen = torch.Generator().manual_seed(cfg.unlearn.seed)
        control = torch.rand(hidden_size, generator=gen)
        return dataclasses.replace(
            method, forget=functools.partial(method.forget, control=control / control.norm())
        )
    return method


def loss_settings(cfg: Config, method: Method) -> MethodSettings:
    """The numbers the method's loss reads: its settings model, as the `unlearn` section gives them."""
    keys = method.settings.model_fields
    values = cfg.unlearn.model_dump(include=set(keys))
    if method.needs_scorer:
        values["tokens"] = "weighted"
    elif not method.uses_tokens:
        values["tokens"] = "all"
    return method.settings.model_validate(values)


def check_combination(
    method: Method, cfg: Config, forget: list[Sample], retain: list[Sample] | None, retain_term: str
) -> None:
    """Refuse combinations that cannot work, with the fix (trl-style incompatibility errors)."""
    needs_spans = not method.needs_scorer and (not method.uses_tokens or cfg.unlearn.tokens != "all")
    if needs_spans and not any(s.spans for s in forget):
        what = (
            "TPO splits answers into UW and GW tokens"
            if not method.uses_tokens
            else f"--tokens {cfg.unlearn.tokens}"
        )
        raise DataError(
            [
                DataIssue(
                    str(cfg.data.forget),
                    None,
                    "spans",
                    f"no sample marks any unwanted word, but {what}",
                    "run `tokenforget identify` first, add spans to the file, "
                    "or use --set unlearn.tokens=all",
                )
            ]
        )
    if retain_term != "none" and retain is None:
        raise missing_retain(method.name, retain_term)
    u = cfg.unlearn
    if u.batch_size % u.micro_batch_size:
        raise ConfigError(
            f"unlearn.batch_size {u.batch_size} is not a multiple of "
            f"unlearn.micro_batch_size {u.micro_batch_size}"
        )


def _split(out: AnswerForward, flags: tuple, bounds: list[tuple[int, int]]) -> list[TokenStats | None]:
    """Slice one forward's flattened outputs into per-group TokenStats (forget, alt, retain)."""
    logits, targets, rows, hidden = out
    uw, weights, eos = flags
    groups: list[TokenStats | None] = []
    for lo, hi in bounds:
        if hi == lo:
            groups.append(None)
            continue
        m = (rows >= lo) & (rows < hi)
        groups.append(
            TokenStats(
                logits=logits[m],
                targets=targets[m],
                rows=rows[m] - lo,
                n_rows=hi - lo,
                uw=uw[m],
                eos=eos[m],
                weights=weights[m],
                hidden=None if hidden is None else hidden[m],
            )
        )
    return groups


@dataclass
class MicroLoss:
    terms: LossTerms
    tokens: int
    scorer_total: torch.Tensor | None = None  # ATWU, alternating: the scorer's objective (own graph)


@dataclass
class Session:
    """Everything one unlearning run holds in memory, and the loss of one micro-batch."""

    method: Method
    settings: MethodSettings
    retain_term: str
    model: torch.nn.Module  # the trainable model (peft-wrapped with LoRA), for checkpoints and saving
    tokenizer: Any
    policy: torch.nn.Module  # AnswerModel around `model`, DDP-wrapped when distributed
    ref_model: torch.nn.Module | None
    cache: dict[str, torch.Tensor]
    precision: Any
    device: torch.device
    forget: list[Encoded]
    alt: list[Encoded]
    retain: list[Encoded]
    ids: list[str]
    model_source: str  # the folder or name theta0 was loaded from (cache keys)
    sources: list[Sample] = dataclasses.field(default_factory=list)  # the forget samples as read
    scorer: TokenScorer | None = None  # ATWU
    atwu: AtwuSettings | None = None

    def micro_loss(
        self, forget_idx: list[int], retain_idx: list[int], scorer_grad: bool = False
    ) -> MicroLoss:
        """One policy forward over forget (+ alt) (+ retain) rows; the method's loss terms, and with
        ATWU the scorer's objective (when `scorer_grad`, or always under the joint schedule)."""
        rows = (
            [self.forget[i] for i in forget_idx]
            + [self.alt[i] for i in forget_idx if self.alt]
            + [self.retain[i] for i in retain_idx]
        )
        nf, na = len(forget_idx), len(forget_idx) if self.alt else 0
        bounds = [(0, nf), (nf, nf + na), (nf + na, len(rows))]
        batch = {k: v.to(self.device) for k, v in pad_batch(rows, self.tokenizer.pad_token_id).items()}
        flags = answer_flags(batch)
        with self.precision.autocast():
            out = self.policy(batch["input_ids"], batch["attention_mask"], batch["labels"])
        f_stats, a_stats, r_stats = _split(out, flags, bounds)
        batch_ids = [self.ids[i] for i in forget_idx]
        inputs = LossInputs(forget=f_stats, retain=r_stats, alt=a_stats)
        if self.cache:
            inputs.forget_ref = reference_stats(self.cache, "forget", batch_ids, self.device)
            if a_stats is not None:
                inputs.alt_ref = reference_stats(self.cache, "alt", batch_ids, self.device)
        if self.ref_model is not None:
            f_ref, r_ref = self._theta0_outputs(batch, bounds)
            if f_ref is not None and inputs.forget_ref is None:  # the cache's numbers stay where read
                inputs.forget_ref = RefStats(logits=f_ref.logits, hidden=f_ref.hidden)
            if r_ref is not None:
                inputs.retain_ref = RefStats(logits=r_ref.logits, hidden=r_ref.hidden)
        if self.scorer is None:
            terms = compute(self.method, inputs, self.settings, self.retain_term)
            return MicroLoss(terms, int(f_stats.targets.numel()))
        return self._atwu_loss(inputs, scorer_grad)

    def _theta0_outputs(
        self, batch: dict[str, torch.Tensor], bounds: list[tuple[int, int]]
    ) -> tuple[TokenStats | None, TokenStats | None]:
        """The frozen theta0's outputs on the rows its readers need (`theta0_reads`): with a KL retain
        term and a cached forget loss (tpo_kl, ga_kl) that is the retain rows alone, half the rows.
        The rows keep the batch's width; a test holds their losses to those of a forward over every row."""
        reads_forget, reads_retain = theta0_reads(self.method, self.retain_term)
        keep: list[int] = []
        sub_bounds = []
        for (lo, hi), wanted in zip(bounds, (reads_forget, False, reads_retain), strict=True):  # no alt rows
            start = len(keep)
            if wanted:
                keep.extend(range(lo, hi))
            sub_bounds.append((start, len(keep)))
        if not keep:
            return None, None
        rows = torch.tensor(keep, device=batch["input_ids"].device)
        sub = {k: v.index_select(0, rows) for k, v in batch.items()}
        with torch.no_grad(), self.precision.autocast():
            out = self.ref_model(sub["input_ids"], sub["attention_mask"], sub["labels"])
        f_ref, _, r_ref = _split(out, answer_flags(sub), sub_bounds)
        return f_ref, r_ref

    def _atwu_loss(self, inputs: LossInputs, scorer_grad: bool) -> MicroLoss:
        assert self.scorer is not None and self.atwu is not None
        stats = inputs.forget
        g = self.scorer(stats.hidden)  # hidden is detached inside: the scorer never reaches the model
        joint = self.atwu.schedule == "joint"
        stats.weights = g if joint else g.detach()
        terms = compute(self.method, inputs, self.settings, self.retain_term)
        extra = {"mean_g": g.detach().mean()}
        if bool(stats.uw.any()) and not bool(stats.uw.all()):
            extra["g_auroc"] = torch.tensor(alignment(g.detach(), stats.uw)["auroc"])
        scorer_total = None
        if scorer_grad or joint:
            reg = ScorerRegularisers(self.atwu.entropy, self.atwu.population, self.atwu.budget, self.atwu.l2)
            own = self.atwu.base in ATWU_FORMS
            forget_term = None
            if joint:
                forget_term = torch.zeros((), device=g.device)  # the model loss already carries g
            elif not own:  # matched: the scorer minimises the model's own forget loss in g
                frozen = dataclasses.replace(stats, logits=stats.logits.detach(), weights=g, _logp=None)
                forget_term = self.method.forget(
                    dataclasses.replace(inputs, forget=frozen), self.settings
                ).total
            scorer_total, scorer_parts = scorer_loss(
                g, -stats.logp.detach(), stats.rows, stats.n_rows, self.scorer.linear.weight, reg, forget_term
            )
            extra.update(scorer_parts)
            if joint:
                terms.total = terms.total + scorer_total
                scorer_total = None
        terms.parts.update(extra)
        return MicroLoss(terms, int(stats.targets.numel()), scorer_total)


def start_session(cfg: Config, folder: Path, accelerator: Any) -> Session:
    """Load data and model, fill or reuse the reference cache, load theta0 where the method needs it."""
    method = resolve_method(cfg)
    u = cfg.unlearn
    retain_term = method.retain if u.retain_loss == "auto" else u.retain_loss
    forget = load_forget(cfg)
    retain = load_retain(cfg) if retain_term != "none" else None
    check_combination(method, cfg, forget, retain, retain_term)
    source = resolve_model(cfg.model.name)
    model, tokenizer, precision = load_model(cfg.model, source)
    method = resolve_method(cfg, model.config.hidden_size)
    pad = tokenizer.pad_token_id
    max_len = cfg.data.max_length
    forget_enc = [encode(s, tokenizer, cfg.prompt, max_len) for s in forget]
    retain_enc = [encode(s, tokenizer, cfg.prompt, max_len) for s in retain] if retain else []
    alt_enc: list[Encoded] = []
    if method.needs_alt:
        if any(s.question is None for s in forget):
            raise ConfigError("idkpo needs QA samples (a question to answer 'I don't know' to)")
        refusals = idk_answers()
        rng = random.Random(u.seed)
        alt = [Sample(answer=rng.choice(refusals), question=s.question, id=s.id) for s in forget]
        alt_enc = [encode(s, tokenizer, cfg.prompt, max_len) for s in alt]
    ids = [s.id for s in forget]

    cache: dict[str, torch.Tensor] = {}
    if method.needs_ref_logp or method.needs_ref_logit:
        groups = {"forget": forget_enc, **({"alt": alt_enc} if alt_enc else {})}
        stamp = reference_stamp(source, groups, ids, precision.label)
        if accelerator.is_main_process:
            theta0_numbers(
                folder,
                stamp,
                lambda: compute_reference(model, groups, ids, pad, precision),
                on_hit=lambda path: console.print(f"[green]unlearn[/]: theta0 reference reused from {path}"),
            )
        accelerator.wait_for_everyone()
        loaded = read_section(folder / THETA0_FILE, stamp)
        if loaded is None:
            raise RuntimeError(f"{folder / THETA0_FILE}: theta0's numbers could not be written or read back")
        cache = loaded
    n_layers = model.config.num_hidden_layers
    layer = (u.layer if u.layer is not None else n_layers // 2) if method.needs_hidden else None
    if layer is not None and layer > n_layers:
        raise ConfigError(f"unlearn.layer {layer} is past the model's {n_layers} blocks")
    ref_model = None
    if holds_theta0(method, retain_term):
        why = method.name if method.needs_ref_model else f"the {retain_term} retain term"
        console.print(f"[yellow]unlearn[/]: {why} needs theta0's full outputs: loading a frozen copy")
        ref_lm, _, _ = load_model(cfg.model, source)
        ref_model = AnswerModel(ref_lm.requires_grad_(False).eval(), layer)
    scorer = None
    keep_hidden, hidden_at = False, "predicting"
    if method.needs_scorer:
        scorer = TokenScorer(model.config.hidden_size).to(precision.device)
        keep_hidden, hidden_at = cfg.atwu.layer == -1, cfg.atwu.position
        layer = None if cfg.atwu.layer == -1 else cfg.atwu.layer
    if u.lora is not None:
        model = wrap_lora(model, u.lora, u.seed)
    return Session(
        method=method,
        settings=loss_settings(cfg, method),
        retain_term=retain_term,
        model=model,
        tokenizer=tokenizer,
        # FSDP and DeepSpeed prepare the policy later, together with its optimizer (run_steps)
        policy=maybe_prepared(accelerator, AnswerModel(model, layer, keep_hidden, hidden_at)),
        ref_model=ref_model,
        cache=cache,
        precision=precision,
        device=accelerator.device if accelerator.num_processes > 1 else precision.device,
        forget=forget_enc,
        alt=alt_enc,
        retain=retain_enc,
        ids=ids,
        sources=forget,
        model_source=source,
        scorer=scorer,
        atwu=cfg.atwu if scorer is not None else None,
    )
