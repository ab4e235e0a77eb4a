"""`tokenforget unlearn`: train a model to forget a forget set with any registered method.

One optimizer step = `unlearn.batch_size` forget samples (split over processes and micro-batches),
each micro-batch with as many retain samples (when the method has a retain term) and, for IdkPO, the
forget questions with their "I don't know" answers. All rows of a micro-batch go through **one**
policy forward; the LM head runs at answer positions only. theta0 enters through the reference cache
(`theta0.safetensors`) unless its whole distribution or hidden states are read: on the retain rows by
a KL or RMU retain term (ga_kl, tpo_kl, rmu), on the forget rows by UNDIAL's loss. Then it is loaded,
frozen, said so in the log, and run on those rows only.

The output folder is a run folder (docs/design.md): `config.yaml`, `theta0.safetensors`,
`checkpoints/`, `train_log.jsonl` (one line per step, every loss term), `model/` (save_pretrained,
safetensors; merged weights or the LoRA adapter) and `unlearn.json`. Kill it at any moment and run
the same command again: it resumes from the last checkpoint and ends with the same weights.

Distributed: run the same command under `accelerate launch` (DDP; tested here with 2 CPU
processes). Gradients are averaged over processes and micro-batches, so with the same global batch
GA and NPO give the same result on any number of processes; TPO's Delta is one number per
micro-batch by definition, so TPO depends on the micro-batch size (as in the published code).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokenforget.atwu import (
    learned_weights,
    scorer_optimizer,
)
from tokenforget.config import Config
from tokenforget.data.encode import encode
from tokenforget.data.sets import load_retain
from tokenforget.disk import check_space, unlearn_need, weight_bytes
from tokenforget.distributed import configure_deepspeed, full_weights, make_accelerator, tied_names
from tokenforget.errors import ConfigError
from tokenforget.evaluate.trajectory import LeakProbe, Probe, Trajectory, theta0_stamp
from tokenforget.inputs import check_inputs
from tokenforget.losses import MethodSettings
from tokenforget.models import has_weights, resolve_model, save_model
from tokenforget.progress import console
from tokenforget.runs import open_folder, trim_step_log, write_json
from tokenforget.session import Session, start_session
from tokenforget.stopping import (
    auto_stop_when,
    budget_reason,
    parse_condition,
    steps_by_epochs,
    stop_reason,
)
from tokenforget.train import (
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


def unlearn(cfg: Config, out: Path) -> UnlearnResult:
    """Unlearn cfg.data.forget from cfg.model.name with cfg.unlearn.method; everything lands in `out`."""
    check_inputs(cfg)  # every file and model folder, before the run folder exists
    check_space([unlearn_need(cfg, out, weight_bytes(resolve_model(cfg.model.name)))])
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
    if (folder / "unlearn.json").is_file() and has_weights(model_dir):
        console.print(f"[green]unlearn[/]: already done in {folder}")
        return UnlearnResult(folder, model_dir, json.loads((folder / "unlearn.json").read_text()))
    started = time.perf_counter()
    session = start_session(cfg, folder, accelerator)
    auto = cfg.unlearn.stop_when == "auto"
    cfg = concrete_stopping(cfg, len(session.forget), world == 1 and not sharded)
    u = cfg.unlearn
    log_path = folder / TRAIN_LOG
    checkpoint_dir = folder / "checkpoints"
    saved = resume_state(checkpoint_dir, accelerator)  # the checkpoint run_steps will resume from
    done = saved["step"] if saved else 0
    trim_step_log(log_path, done)
    stop_when, guard = [parse_condition(c) for c in u.stop_when], [parse_condition(c) for c in u.guard]
    generates = any(c.metric == "uw_leak_rate" for c in [*stop_when, *guard])  # only then: it is slow
    trajectory = start_trajectory(cfg, session, folder, world, done, generates)
    if auto and stop_when and trajectory is not None:
        first = trajectory.first_row()
        if stop_reason(first, first, stop_when, []):  # theta0 gives no marked span back: nothing to wait for
            console.print(
                "[yellow]unlearn[/]: unlearn.stop_when=auto: the model gives no marked span back before "
                "unlearning (uw_leak_rate 0 at step 0), so the step budget decides"
            )
            cfg = cfg.model_copy(update={"unlearn": u.model_copy(update={"stop_when": []})})
            u, stop_when = cfg.unlearn, []
    session.settings = concrete_ratio(session.settings, u.stop_when)
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
    if not stopped:
        cap = u.max_steps if stop_when else None
        reason = budget_reason(u.epochs, len(session.forget), u.batch_size, u.min_steps, cap)
        stopped.update(reason=reason, step=total)
        console.print(f"[green]unlearn[/]: stopped at step {total}/{total}: {reason}")
    summary = {
        "method": method.name,
        "retain_term": retain_term,
        "tokens": settings.tokens,
        "settings": settings.model_dump(mode="json"),
        "forget_samples": len(session.forget),
        "forget_samples_with_uw": sum(1 for e in session.forget if e.uw and any(e.uw)),
        "retain_samples": len(session.retain),
        "steps": result.steps,
        "stop_when": u.stop_when,  # after auto was made concrete
        "stopped": stopped,
        "answer_tokens": result.tokens,
        "processes": world,
        "distributed": kind,
        "precision": precision.label,
        "theta0_in_memory": session.ref_model is not None,
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


def concrete_stopping(cfg: Config, forget_samples: int, one_process: bool) -> Config:
    """cfg with `unlearn.stop_when=auto` made concrete (`stopping.auto_stop_when`). A criterion it adds
    is checked once per epoch over the forget set unless eval_every says; the in-training evaluation
    runs in one unsharded process, so elsewhere auto adds none."""
    u = cfg.unlearn
    if u.stop_when != "auto":
        return cfg
    budget = max(u.min_steps, steps_by_epochs(u.epochs, forget_samples, u.batch_size))
    conditions = auto_stop_when(cfg.identify.method == "spans" and one_process, budget, u.max_steps)
    every = u.eval_every
    if conditions:
        every = every or steps_by_epochs(1, forget_samples, u.batch_size)
        console.print(
            f"[green]unlearn[/]: unlearn.stop_when=auto: until {' and '.join(conditions)} (spans marked by "
            f"hand), checked every {'step' if every == 1 else f'{every} steps'}, at most {u.max_steps} "
            "(unlearn.stop_when=[] turns it off)"
        )
    update = {"stop_when": conditions, "eval_every": every}
    return cfg.model_copy(update={"unlearn": u.model_copy(update=update)})


def concrete_ratio(settings: MethodSettings, stop_when: list[str]) -> MethodSettings:
    """NPO's `ratio=auto` (npo_kl_uw) made concrete: per token where the run stops on uw_leak_rate,
    else the published sequence form. Measured (README, "Unlearning"): on a deletion request the
    sequence form's log-sigmoid saturated on the tokens that fell far while one span still came out
    (seed 1, step 39), the per-token form cleared every seed; on TOFU-mini the per-token form forgot
    less at more KL on retain (0.165 at 0.87x, KL 0.39, against 0.766 at 0.98x, KL 0.019)."""
    if getattr(settings, "ratio", None) != "auto":
        return settings
    on_leak = any(parse_condition(c).metric == "uw_leak_rate" for c in stop_when)
    return settings.model_copy(update={"ratio": "token" if on_leak else "sequence"})


def planned_steps(cfg: Config, forget_samples: int) -> int:
    """Optimizer steps the run plans: `epochs` over the forget set but at least `min_steps`, so a small
    deletion request still gets a real budget; with `stop_when`, `max_steps` (it may stop earlier)."""
    u = cfg.unlearn
    if u.stop_when:
        return u.max_steps
    return max(u.min_steps, steps_by_epochs(u.epochs, forget_samples, u.batch_size), 1)


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
        from tokenforget.data.identified import read_identified

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
    trajectory = Trajectory(folder, probe, theta0_stamp(session.model_source, probe))
    trajectory.resume(done)
    if done == 0:
        trajectory.measure(session.model, 0)
    return trajectory
