"""`tokenforget unlearn`: train a model to forget a forget set with any registered method.

One optimizer step = `unlearn.batch_size` forget samples (split over processes and micro-batches),
each micro-batch with as many retain samples (when the method has a retain term) and, for IdkPO, the
forget questions with their "I don't know" answers. All rows of a micro-batch go through **one**
policy forward; the LM head runs at answer positions only. theta0 enters through the reference cache
(`reference.safetensors`) unless the method needs its whole distribution (ga_kl, undial) or its
hidden states (rmu): then it is loaded, frozen, and said so in the log.

The output folder is a run folder (docs/design.md): `config.yaml`, `reference.safetensors`,
`checkpoints/`, `train_log.jsonl` (one line per step, every loss term), `model/` (save_pretrained,
safetensors; merged weights or the LoRA adapter) and `unlearn.json`. Kill it at any moment and run
the same command again: it resumes from the last checkpoint and ends with the same weights.

Distributed: run the same command under `accelerate launch` (DDP; tested here with 2 CPU
processes). Gradients are averaged over processes and micro-batches, so with the same global batch
GA and NPO give the same result on any number of processes; TPO's Delta is one number per
micro-batch by definition, so TPO depends on the micro-batch size (as in the published code).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from tokenforget.atwu import (
    OWN_FORMS,
    ScorerRegularisers,
    TokenScorer,
    alignment,
    scorer_loss,
    scorer_optimizer,
)
from tokenforget.config import AtwuSettings, Config
from tokenforget.data.encode import Encoded, encode, pad_batch
from tokenforget.data.records import Sample, Span, read_samples
from tokenforget.errors import ConfigError, DataError, DataIssue
from tokenforget.evaluate.trajectory import LeakProbe, Probe, Trajectory, theta0_key
from tokenforget.forward import AnswerModel
from tokenforget.inputs import check_inputs
from tokenforget.losses import (
    METHODS,
    LossInputs,
    LossTerms,
    Method,
    MethodSettings,
    RefStats,
    TokenStats,
    compute,
)
from tokenforget.models import cache_dir, eval_mode, load_model, resolve_model, save_model, wrap_lora
from tokenforget.progress import console
from tokenforget.reference import (
    compute_reference,
    load_reference,
    reference_key,
    reference_stats,
    save_reference,
)
from tokenforget.runs import open_folder, trim_step_log, write_json
from tokenforget.stopping import parse_condition, stop_reason
from tokenforget.train import (
    DATA_PARALLEL,
    SHARDED,
    FitSettings,
    batch_schedule,
    distributed_kind,
    resume_state,
    run_steps,
)

TRAIN_LOG = "train_log.jsonl"
TOKEN_WEIGHTS = "token_weights.jsonl"


@dataclass
class UnlearnResult:
    folder: Path
    model_dir: Path
    summary: dict[str, Any]


def atwu_method(cfg: Config) -> Method:
    """The loss ATWU trains the model with: its own saturated form, or a registered loss on weights g."""
    own = METHODS["atwu"]
    if cfg.atwu.base in OWN_FORMS:
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


def idk_answers() -> list[str]:
    """TOFU's refusal answers (99, from the TIF paper's repository; MIT) for IdkPO."""
    text = (resources.files("tokenforget") / "benchmark_data" / "idontknow.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_forget(cfg: Config) -> list[Sample]:
    from tokenforget.identify import read_identified

    if cfg.data.forget is None:
        raise ConfigError("no forget set: give --forget FILE (identified.jsonl, or JSONL/CSV with spans)")
    return read_identified(cfg.data.forget)


def load_retain(cfg: Config) -> list[Sample] | None:
    if cfg.data.retain is None:
        return None
    if cfg.data.retain == "tofu-mini":
        from tokenforget.data.benchmarks import tofu_mini

        return tofu_mini().retain
    return read_samples(cfg.data.retain)


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
        raise ConfigError(
            f"method {method.name!r} uses a retain term ({retain_term}) but no retain set was given. "
            "Fix: --retain FILE (or --retain tofu-mini), or --set unlearn.retain_loss=none"
        )
    u = cfg.unlearn
    if u.batch_size % u.micro_batch_size:
        raise ConfigError(
            f"unlearn.batch_size {u.batch_size} is not a multiple of "
            f"unlearn.micro_batch_size {u.micro_batch_size}"
        )


def _flags(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uw, token weight and EOS flags at answer positions, flattened like answer_forward's output."""
    where = batch["labels"][:, 1:] != -100
    lengths = batch["attention_mask"].sum(1)
    cols = torch.arange(where.shape[1], device=where.device)[None, :]
    eos = (cols == (lengths[:, None] - 2))[where]
    return batch["uw_mask"][:, 1:][where], batch["token_weights"][:, 1:][where], eos


def _split(out: tuple, flags: tuple, bounds: list[tuple[int, int]]) -> list[TokenStats | None]:
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
        flags = _flags(batch)
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
            with torch.no_grad(), self.precision.autocast():
                ref_out = self.ref_model(batch["input_ids"], batch["attention_mask"], batch["labels"])
            f_ref, _, r_ref = _split(ref_out, flags, bounds)
            inputs.forget_ref = RefStats(logits=f_ref.logits, hidden=f_ref.hidden)
            if r_ref is not None:
                inputs.retain_ref = RefStats(logits=r_ref.logits, hidden=r_ref.hidden)
        if self.scorer is None:
            terms = compute(self.method, inputs, self.settings, self.retain_term)
            return MicroLoss(terms, int(f_stats.targets.numel()))
        return self._atwu_loss(inputs, scorer_grad)

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
            own = self.atwu.base in OWN_FORMS
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
        key = reference_key(source, groups, ids, precision.label)
        ref_file = folder / "reference.safetensors"
        shared = cache_dir() / "reference" / f"{key[:24]}.safetensors"
        loaded = load_reference(ref_file, key)
        if loaded is None and accelerator.is_main_process:
            if load_reference(shared, key) is None:
                shared.parent.mkdir(parents=True, exist_ok=True)
                save_reference(shared, compute_reference(model, groups, ids, pad, precision), key)
            else:
                console.print(f"[green]unlearn[/]: theta0 reference reused from {shared}")
            shutil.copyfile(shared, ref_file)
        accelerator.wait_for_everyone()
        loaded = loaded or load_reference(ref_file, key)
        if loaded is None:
            raise RuntimeError(f"the reference cache {ref_file} could not be written or read back")
        cache = loaded
    n_layers = model.config.num_hidden_layers
    layer = (u.layer if u.layer is not None else n_layers // 2) if method.needs_hidden else None
    if layer is not None and layer > n_layers:
        raise ConfigError(f"unlearn.layer {layer} is past the model's {n_layers} blocks")
    ref_model = None
    if method.needs_ref_model:
        console.print(f"[yellow]unlearn[/]: {method.name} needs theta0's full outputs: loading a frozen copy")
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
        policy=_maybe_prepared(accelerator, AnswerModel(model, layer, keep_hidden, hidden_at)),
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


def make_accelerator(cfg: Config) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # RMU's loss reads a middle layer only: the blocks above it get no gradient
    unused = METHODS[cfg.unlearn.method].needs_hidden
    accelerator = Accelerator(
        cpu=cfg.model.device == "cpu",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused)],
    )
    kind = distributed_kind(accelerator)
    if kind not in (*DATA_PARALLEL, *SHARDED):
        raise ConfigError(
            f"accelerate launched with {kind}: not supported by `unlearn`. Use DDP "
            "(`accelerate launch --multi_gpu --num_processes N -m tokenforget.cli unlearn ...`), FSDP "
            "(--use_fsdp) or DeepSpeed ZeRO (--use_deepspeed)."
        )
    if kind in SHARDED:
        check_sharded(cfg, kind)
    return accelerator


def check_sharded(cfg: Config, kind: str) -> None:
    """What FSDP / DeepSpeed runs do not support yet, each with the way out."""
    fix = "or run it under DDP (`accelerate launch --multi_gpu ...`) or in one process"
    if cfg.unlearn.lora is not None:
        raise ConfigError(
            f"unlearn.lora with {kind}: not supported yet (the adapter would be sharded with the frozen "
            f"weights it sits on). Drop unlearn.lora for a sharded full fine-tune, {fix}."
        )
    if METHODS[cfg.unlearn.method].needs_scorer:
        raise ConfigError(f"ATWU with {kind}: its token scorer is trained outside the sharded model; {fix}.")
    if cfg.unlearn.eval_every is not None:
        raise ConfigError(
            f"unlearn.eval_every with {kind}: the in-training evaluation reads the unsharded model. Set "
            "--set unlearn.eval_every=null and evaluate the saved model after."
        )


def _maybe_prepared(accelerator: Any, policy: torch.nn.Module) -> torch.nn.Module:
    return policy if distributed_kind(accelerator) in SHARDED else accelerator.prepare(policy)


def configure_deepspeed(accelerator: Any, micro: int, n_micro: int, max_grad_norm: float) -> None:
    """Fill the DeepSpeed config's "auto" values from this run's settings (there is no dataloader for
    accelerate to read them from) and refuse values that contradict them."""
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    for key in ("optimizer", "scheduler"):
        if key in config:
            raise ConfigError(
                f"the DeepSpeed config has an {key!r} section: remove it. `unlearn` passes its own AdamW "
                "and linear warm-up (unlearn.lr, unlearn.warmup_ratio, unlearn.weight_decay)."
            )
    wanted = {
        "train_micro_batch_size_per_gpu": (micro, "unlearn.micro_batch_size"),
        "gradient_accumulation_steps": (n_micro, "unlearn.batch_size / processes / micro_batch_size"),
        "gradient_clipping": (max_grad_norm, "unlearn.max_grad_norm"),
    }
    for key, (value, source) in wanted.items():
        # accelerate launch writes gradient_accumulation_steps=1 when no flag sets it
        if config.get(key, "auto") == "auto" or (key == "gradient_accumulation_steps" and config[key] == 1):
            config[key] = value
        elif config[key] != value:
            raise ConfigError(
                f"the DeepSpeed config sets {key}={config[key]}, this run needs {value} ({source}): "
                f'set it to "auto" or change {source}'
            )
    accelerator.gradient_accumulation_steps = n_micro


def unlearn(cfg: Config, out: Path) -> UnlearnResult:
    """Unlearn cfg.data.forget from cfg.model.name with cfg.unlearn.method; everything lands in `out`."""
    check_inputs(cfg)  # every file and model folder, before the run folder exists
    u = cfg.unlearn
    accelerator = make_accelerator(cfg)
    world, rank = accelerator.num_processes, accelerator.process_index
    kind = distributed_kind(accelerator)
    sharded, deepspeed = kind in SHARDED, kind == "DEEPSPEED"
    per_process = u.batch_size // world
    if u.batch_size % world or per_process % min(u.micro_batch_size, per_process):
        raise ConfigError(
            f"unlearn.batch_size {u.batch_size} must split evenly over {world} processes and "
            f"micro-batches of {u.micro_batch_size}"
        )
    micro = min(u.micro_batch_size, per_process)
    folder = open_folder(out, cfg) if accelerator.is_main_process else out
    accelerator.wait_for_everyone()
    model_dir = folder / "model"
    if (folder / "unlearn.json").is_file() and model_dir.is_dir():
        console.print(f"[green]unlearn[/]: already done in {folder}")
        return UnlearnResult(folder, model_dir, json.loads((folder / "unlearn.json").read_text()))
    started = time.perf_counter()
    session = start_session(cfg, folder, accelerator)
    method, settings, retain_term = session.method, session.settings, session.retain_term
    model, tokenizer, precision = session.model, session.tokenizer, session.precision
    forget_lengths = [len(e.input_ids) for e in session.forget]
    forget_steps = batch_schedule(
        forget_lengths, u.batch_size, u.epochs, u.seed, planned_steps(cfg, len(forget_lengths))
    )
    total = len(forget_steps)
    retain_steps = []
    if session.retain:
        retain_lengths = [len(e.input_ids) for e in session.retain]
        retain_epochs = total * u.batch_size / len(session.retain)
        retain_steps = batch_schedule(retain_lengths, u.batch_size, retain_epochs, u.seed + 1, total)

    scorer, a = session.scorer, cfg.atwu
    alternating = scorer is not None and a.schedule == "alternating"
    extra_state: dict[str, Any] = {}
    if alternating:
        scorer_opt, scorer_sched = scorer_optimizer(scorer, a.scorer_lr, total // a.update_every)
        extra_state = {"scorer": scorer, "scorer_optimizer": scorer_opt, "scorer_scheduler": scorer_sched}
    elif scorer is not None:
        extra_state = {"scorer": scorer}

    def step_fn(step: int) -> tuple[dict[str, float], int]:
        # contiguous shards: process r's micro-batches are exactly those one process would form
        share = slice(rank * per_process, (rank + 1) * per_process)
        mine = forget_steps[step][share]
        mine_retain = retain_steps[step][share] if retain_steps else []
        n_micro = len(range(0, len(mine), micro))
        scorer_step = alternating and (step + 1) % a.update_every == 0
        sums: dict[str, float] = {}
        tokens = 0
        for start in range(0, len(mine), micro):
            result = session.micro_loss(
                mine[start : start + micro], mine_retain[start : start + micro], scorer_step
            )
            if deepspeed:  # the engine divides by its accumulation steps and steps at the last one
                with accelerator.accumulate(session.policy):
                    accelerator.backward(result.terms.total)
            else:
                accelerator.backward(result.terms.total / n_micro)
            if result.scorer_total is not None:
                (result.scorer_total / n_micro).backward()  # its own graph: scorer parameters only
            for name, value in result.terms.parts.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) / n_micro
            tokens += result.tokens
        if scorer_step:
            if world > 1:  # every process keeps the same scorer
                for p in scorer.parameters():
                    p.grad = accelerator.reduce(p.grad, reduction="mean")
            torch.nn.utils.clip_grad_norm_(scorer.parameters(), 1.0)
            scorer_opt.step()
            scorer_sched.step()
            scorer_opt.zero_grad(set_to_none=True)
        if world > 1:
            # processes may log different terms (a diagnostic needs UW tokens in its batch): average
            # each term over the processes that have it
            from accelerate.utils import gather_object

            every = gather_object([sums])
            sums = {
                n: sum(d[n] for d in every if n in d) / sum(n in d for d in every)
                for n in set().union(*every)
            }
        parts = {"loss": 0.0, **{name: sums[name] for name in sorted(sums)}}
        return parts, tokens

    log_path = folder / TRAIN_LOG
    checkpoint_dir = folder / "checkpoints"
    saved = resume_state(checkpoint_dir, accelerator)  # the checkpoint run_steps will resume from
    done = saved["step"] if saved else 0
    trim_step_log(log_path, done)
    stop_when, guard = [parse_condition(c) for c in u.stop_when], [parse_condition(c) for c in u.guard]
    generates = any(c.metric == "uw_leak_rate" for c in [*stop_when, *guard])  # only then: it is slow
    trajectory = start_trajectory(cfg, session, folder, world, done, generates)
    seconds_at_start = time.perf_counter()

    stopped: dict[str, Any] = {}

    def on_step(step: int, parts: dict[str, float], lr: float) -> str | None:
        if accelerator.is_main_process:
            row = {"step": step, "lr": lr, **{k: round(v, 6) for k, v in parts.items()}}
            row["seconds"] = round(time.perf_counter() - seconds_at_start, 2)
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        if trajectory is None or not (step % (u.eval_every or 1) == 0 or step == total):
            return None
        point = trajectory.measure(model, step)
        reason = stop_reason(point, trajectory.first_row(), stop_when, guard)
        if reason:
            stopped.update(reason=reason, step=step)
            console.print(f"[green]unlearn[/]: stopped at step {step}/{total}: {reason}")
        return reason

    fit = FitSettings(
        epochs=u.epochs,
        lr=u.lr,
        batch_size=u.batch_size,
        micro_batch_size=micro,
        weight_decay=u.weight_decay,
        warmup_ratio=u.warmup_ratio,
        seed=u.seed,
        checkpoint_every=u.checkpoint_every,
    )
    tied = tied_names(model)  # read before sharding, which may split the tie

    def prepare(optimizer: torch.optim.Optimizer) -> tuple[Any, list[torch.nn.Parameter]]:
        """FSDP / DeepSpeed: the policy and its optimizer are prepared as one."""
        if deepspeed:
            configure_deepspeed(accelerator, micro, per_process // micro, u.max_grad_norm)
        session.policy, prepared = accelerator.prepare(session.policy, optimizer)
        return prepared, list(session.policy.parameters())

    torch.manual_seed(u.seed)
    result = run_steps(
        model,
        total,
        step_fn,
        fit,
        checkpoint_dir,
        f"unlearn {method.name}",
        on_step,
        accelerator,
        u.max_grad_norm,
        extra_params=list(scorer.parameters()) if scorer is not None and not alternating else (),
        extra_state=extra_state,
        prepare=prepare if sharded else None,
    )
    summary = {
        "method": method.name,
        "retain_term": retain_term,
        "tokens": settings.tokens,
        "settings": settings.model_dump(mode="json"),
        "forget_samples": len(session.forget),
        "forget_samples_with_uw": sum(1 for e in session.forget if e.uw and any(e.uw)),
        "retain_samples": len(session.retain),
        "steps": result.steps,
        "stopped": stopped
        or {"reason": "the step budget" + (" (max_steps)" if stop_when else ""), "step": total},
        "answer_tokens": result.tokens,
        "processes": world,
        "distributed": kind,
        "precision": precision.label,
        "theta0_in_memory": method.needs_ref_model,
        "seconds": round(time.perf_counter() - started, 1),
        "eval_every_seconds": round(trajectory.seconds, 1) if trajectory is not None else None,
        "final_loss": result.final_loss,
    }
    if scorer is not None and accelerator.is_main_process:
        summary["atwu"] = {**cfg.atwu.model_dump(), **learned_weights(session, folder / TOKEN_WEIGHTS, micro)}
    # sharded: every process joins the gather of the full weights; the main process writes them
    gathered = full_weights(accelerator, session.policy, tied) if sharded else None
    if accelerator.is_main_process:
        staging = folder / "model.partial"
        save_model(model, tokenizer, staging, merge_lora=u.merge_lora, state_dict=gathered)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        staging.replace(model_dir)
        write_json(folder / "unlearn.json", summary)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the model is safe; free the disk
    accelerator.wait_for_everyone()
    return UnlearnResult(folder=folder, model_dir=model_dir, summary=summary)


def full_weights(accelerator: Any, policy: torch.nn.Module, tied: set[str]) -> dict[str, torch.Tensor] | None:
    """The whole model's weights gathered from the FSDP / DeepSpeed shards, named as the bare
    CausalLM names them, without the `tied` names (the gathered copies no longer share memory, so
    save_pretrained would write a tied weight twice). None on processes other than the main one."""
    state = accelerator.get_state_dict(policy)
    prefix = "lm."  # AnswerModel's attribute
    if not accelerator.is_main_process:
        return None
    named = {k.removeprefix(prefix): v for k, v in state.items()}
    return {k: v for k, v in named.items() if k not in tied}


def tied_names(model: torch.nn.Module) -> set[str]:
    """Parameter names that repeat an earlier parameter (tied embeddings: `lm_head.weight`)."""
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return every - {name for name, _ in model.named_parameters()}


def learned_weights(session: Session, path: Path, batch_size: int) -> dict[str, Any]:
    """ATWU's final weights over the whole forget set: `token_weights.jsonl` (the identified-set
    format: spans = tokens with g > 0.5, `token_scores` per answer token, `word_scores` per word) and
    their AUROC / average precision against the forget data's own spans, when it has them."""
    from tokenforget.identify import write_identified
    from tokenforget.identify.score import answer_words

    assert session.scorer is not None
    samples: list[Sample] = []
    all_g, all_uw = [], []
    policy = getattr(session.policy, "module", session.policy)
    with eval_mode(session.model, dtype=session.precision.compute_dtype):
        for start in range(0, len(session.forget), batch_size):
            rows = session.forget[start : start + batch_size]
            batch = {
                k: v.to(session.device) for k, v in pad_batch(rows, session.tokenizer.pad_token_id).items()
            }
            with session.precision.autocast():
                # the bare module: a DDP forward would wait for the other processes, which are not here
                out = policy(batch["input_ids"], batch["attention_mask"], batch["labels"])
            g = session.scorer(out[3]).float().cpu()
            uw = _flags(batch)[0].cpu()
            counts = torch.bincount(out[2].cpu(), minlength=len(rows)).tolist()
            for offset, (enc, gs, us) in enumerate(zip(rows, g.split(counts), uw.split(counts), strict=True)):
                source = session.sources[start + offset]
                tokens = list(zip(enc.answer_offsets[:-1], gs[:-1].tolist(), strict=True))  # EOS left out
                all_g.append(gs[:-1])
                all_uw.append(us[:-1])
                chosen = [Span(s, e, round(v, 6)) for (s, e), v in tokens if v > 0.5 and e > s]
                words = [
                    {
                        "start": w.start,
                        "end": w.end,
                        "score": round(
                            max((v for (s, e), v in tokens if s < w.end and e > w.start), default=0.0), 6
                        ),
                    }
                    for w in answer_words(source.answer)
                ]
                meta = {
                    "token_scores": [{"start": s, "end": e, "score": round(v, 6)} for (s, e), v in tokens],
                    "word_scores": words,
                }
                samples.append(
                    Sample(
                        answer=source.answer,
                        question=source.question,
                        spans=tuple(chosen),
                        id=source.id,
                        meta=meta,
                    )
                )
    write_identified(path, samples, "atwu", {"threshold": 0.5})
    return {"alignment": alignment(torch.cat(all_g), torch.cat(all_uw)), "token_weights": str(path)}


def planned_steps(cfg: Config, forget_samples: int) -> int:
    """Optimizer steps the run plans: `epochs` over the forget set but at least `min_steps`, so a small
    deletion request still gets a real budget; with `stop_when`, `max_steps` (it may stop earlier)."""
    u = cfg.unlearn
    if u.stop_when:
        return u.max_steps
    return max(u.min_steps, math.ceil(u.epochs * forget_samples / u.batch_size), 1)


def start_trajectory(
    cfg: Config, session: Session, folder: Path, world: int, done: int, generates: bool = False
) -> Trajectory | None:
    """The in-training evaluation of `unlearn.eval_every` (None when off), measured at step 0 on a
    fresh start."""
    if cfg.unlearn.eval_every is None:
        return None
    if world > 1:
        raise ConfigError(
            "unlearn.eval_every scores the model in one process; under `accelerate launch` with "
            f"{world} processes set --set unlearn.eval_every=null (evaluate the saved model after)"
        )
    from tokenforget.evaluate.tokens import not_given, sample_key, unwanted_words

    forget, labelled = session.forget, session.sources
    if cfg.eval.token_labels:
        from tokenforget.identify import read_identified

        labels = {sample_key(s): s for s in read_identified(cfg.eval.token_labels)}
        if all(sample_key(s) in labels for s in session.sources):  # else: the run's own labels
            labelled = [labels[sample_key(s)] for s in session.sources]
            forget = [encode(s, session.tokenizer, cfg.prompt, cfg.data.max_length) for s in labelled]
    retain = (load_retain(cfg) or [])[: cfg.eval.retain_rows]
    leak = None
    if generates:  # a stop condition reads uw_leak_rate: greedy answers at every point
        leak = LeakProbe(
            prompts=[encode(s, session.tokenizer, cfg.prompt).prompt_ids for s in labelled],
            unwanted=[not_given(unwanted_words(s), s.question) for s in labelled],
            tokenizer=session.tokenizer,
            max_new_tokens=cfg.eval.max_new_tokens,
        )
    probe = Probe(
        forget=forget,
        retain=[encode(s, session.tokenizer, cfg.prompt, cfg.data.max_length) for s in retain],
        pad_id=session.tokenizer.pad_token_id,
        precision=session.precision,
        batch_size=cfg.eval.batch_size,
        leak=leak,
    )
    key = theta0_key(session.model_source, probe)
    trajectory = Trajectory(folder, probe, cache_dir() / "trajectory" / f"{key[:24]}.safetensors", key)
    trajectory.resume(done)
    if done == 0:
        trajectory.measure(session.model, 0)
    return trajectory
