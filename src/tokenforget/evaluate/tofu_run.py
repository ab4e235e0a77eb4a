"""`tokenforget eval tofu`: evaluate a model on a QA benchmark and write the published TOFU logs.

One teacher-forced pass scores every distinct (question, answer) text (true answer, paraphrase,
perturbed options) and one batched greedy pass generates the answers, over all splits at once when
they are small (tofu-mini) or split by split when they are not; each log is written under its
published file name as soon as its pass is done, so an interrupted evaluation resumes at the next
pass and a finished model is never evaluated twice (`eval_settings.json` records what
produced the folder: the settings, the model's identity (manifest hashes, else file sizes
and times) and the resolved precision; other ones start over).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenforget.config import Config, EvalSettings, PromptSettings
from tokenforget.data.benchmarks import QABenchmark
from tokenforget.data.encode import format_prompt
from tokenforget.data.records import Sample
from tokenforget.evaluate.metrics import rouge_recall
from tokenforget.evaluate.tofu import LOG_FILES, read_tofu_logs, summarize, write_eval_log
from tokenforget.evaluate.tokens import paraphrased_pairs, token_rows, tokens_stamp, write_token_rows
from tokenforget.forward.generation import answer_questions
from tokenforget.forward.scoring import AnswerLoss, answer_losses, answer_losses_and_greedy
from tokenforget.forward.workers import worker_count
from tokenforget.models import load_model, model_identity, precision_label
from tokenforget.progress import console
from tokenforget.runs import RESULT_NEUTRAL, changed_keys

# labels do not change these logs (they change the token-level metrics), nor do the run's neutral keys
RESULT_NEUTRAL_EVAL = frozenset(
    {"token_labels"} | {k.removeprefix("eval.") for k in RESULT_NEUTRAL if k.startswith("eval.")}
)


@dataclass(frozen=True)
class Profile:
    ds_size: int | None  # first rows of every split (None = all)
    retain_rows: int | None  # retain split only
    max_new_tokens: int
    max_length: int | None  # legacy: prompt + generation
    utility_rows: int | None = None  # real_authors and world_facts only


def resolve_profile(settings: EvalSettings) -> Profile:
    if settings.profile == "tofu-legacy":
        return Profile(ds_size=300, retain_rows=None, max_new_tokens=200, max_length=200)
    if settings.profile == "openunlearning":
        return Profile(ds_size=None, retain_rows=None, max_new_tokens=200, max_length=None)
    return Profile(
        ds_size=None,
        retain_rows=settings.retain_rows,
        max_new_tokens=settings.max_new_tokens,
        max_length=None,
        utility_rows=settings.utility_rows,
    )


def split_rows(bench: QABenchmark, profile: Profile) -> dict[str, list[Sample]]:
    rows = {}
    for split, samples in bench.eval_sets().items():
        limit = profile.ds_size
        if split == "retain" and profile.retain_rows:
            limit = profile.retain_rows
        elif split in ("real_authors", "world_facts") and profile.utility_rows:
            limit = profile.utility_rows
        rows[split] = samples[:limit] if limit else samples
    return rows


def answer_base(s: Sample) -> str:
    """The answer the truth ratio compares the perturbed ones with: the paraphrase, or the answer
    itself where the split has none (real_authors, world_facts)."""
    return s.meta.get("paraphrased_answer") or s.answer


def scored_pairs(samples: list[Sample]) -> list[tuple[str | None, str]]:
    pairs = []
    for s in samples:
        pairs += [(s.question, s.answer), (s.question, answer_base(s))]
        pairs += [(s.question, p) for p in s.meta.get("perturbed_answer", [])]
    return pairs


def split_logs(
    model: Any,
    tokenizer: Any,
    rows: dict[str, list[Sample]],
    cfg: Config,
    precision: Any,
    profile: Profile,
    unscored: list[tuple[str, str]] | None = None,
) -> tuple[dict[str, dict[str, list]], dict, list[str] | None]:
    """The published per-question fields of each split in `rows`, from one pass over all of them
    (fewer, fuller batches than split by split): each chunk of prompts runs once for both the
    scoring of its answers and the greedy answers to its questions. The legacy profile's length
    bound (`max_length`, prompt included) needs generation batches of its own.
    Also returns the answer losses, and greedy answers to the `unscored` (question, answer) pairs
    generated on the same pass (None on the legacy profile, which does not generate them)."""
    everything = [s for samples in rows.values() for s in samples]
    pairs = scored_pairs(everything)
    batch, eos = cfg.eval.batch_size, cfg.eval.include_eos
    extra: list[str] | None = None
    if profile.max_length is None:
        questions = [s.question or "" for s in everything]
        workers = worker_count(cfg.eval.workers, precision.device, len(questions) + len(unscored or ()))
        losses, answers = answer_losses_and_greedy(
            model,
            tokenizer,
            pairs,
            questions,
            cfg.prompt,
            precision,
            eos,
            batch,
            profile.max_new_tokens,
            cfg.eval.generation_batch_size,
            unscored or (),
            workers,
        )
        answers, extra = answers[: len(questions)], answers[len(questions) :]
    else:
        losses = answer_losses(model, tokenizer, pairs, cfg.prompt, precision, eos, batch)
        answers = answer_questions(
            model,
            tokenizer,
            everything,
            cfg.prompt,
            precision,
            profile.max_new_tokens,
            cfg.eval.generation_batch_size,
            profile.max_length,
        )
    generated = iter(answers)
    logs = {
        split: split_log(samples, [next(generated) for _ in samples], losses, tokenizer, cfg)
        for split, samples in rows.items()
    }
    return logs, losses, extra


def split_log(
    samples: list[Sample], generated: list[str], losses: dict, tokenizer: Any, cfg: Config
) -> dict[str, list]:
    """One split's published log fields from its answer losses and greedy answers."""
    rouge = rouge_recall(generated, [s.answer for s in samples])
    log: dict[str, list] = {
        k: []
        for k in (
            "avg_gt_loss",
            "gt_loss",
            "num_token_gt",
            "generated_text",
            "rouge1_recall",
            "rougeL_recall",
            "average_perturb_loss",
            "avg_paraphrased_loss",
            "truth_ratio",
            "paraphrased_loss",
            "perturb_loss",
            "num_token_paraphrased",
            "num_token_perturb",
        )
    }
    for s, text, scores in zip(samples, generated, rouge, strict=True):
        gt, para = losses[(s.question, s.answer)], losses[(s.question, answer_base(s))]
        perturbed = [losses[(s.question, p)] for p in s.meta.get("perturbed_answer", [])]
        log["avg_gt_loss"].append(gt.mean)
        log["gt_loss"].append(gt.total)
        log["num_token_gt"].append(gt.tokens)
        log["generated_text"].append([format_prompt(s.question, tokenizer, cfg.prompt), text, s.answer])
        log["rouge1_recall"].append(scores["rouge1_recall"])
        log["rougeL_recall"].append(scores["rougeL_recall"])
        log["average_perturb_loss"].append([p.mean for p in perturbed])
        log["avg_paraphrased_loss"].append(para.mean)
        mean_perturbed = sum(p.mean for p in perturbed) / len(perturbed) if perturbed else float("nan")
        log["truth_ratio"].append(math.exp(para.mean - mean_perturbed))  # as published: p_perturbed/p_base
        log["paraphrased_loss"].append(para.total)
        log["perturb_loss"].append([p.total for p in perturbed])
        log["num_token_paraphrased"].append(para.tokens)
        log["num_token_perturb"].append([p.tokens for p in perturbed])
    return log


def write_forget_token_rows(
    cfg: Config,
    model_name: str,
    out: Path,
    forget: list[Sample],
    losses: dict,
    forget_log: dict[str, list],
    paraphrased_answers: list[str],
    tokenizer: Any,
) -> None:
    """`eval tokens`' label-free rows of this model (tokens.json) from this pass: the forget
    answers' per-token scores, greedy answers to the original questions (the forget log's) and to
    the paraphrased ones (generated on the same pass), so the token-level stage needs no pass of
    its own."""
    eos = cfg.eval.include_eos
    stats = {pair: without_eos(losses[pair], eos) for pair in ((s.question, s.answer) for s in forget)}
    originals = [generated for _, generated, _ in forget_log["generated_text"]]
    rows = token_rows(forget, tokenizer, cfg.prompt, stats, originals, paraphrased_answers)
    write_token_rows(out, tokens_stamp(cfg, model_name, forget), rows)


def without_eos(loss: AnswerLoss, include_eos: bool) -> AnswerLoss:
    """An answer's scores without its final EOS token, when they include it."""
    if not include_eos:
        return loss
    hits = loss.hits[:-1] if loss.hits is not None else None
    return AnswerLoss(loss.token_nll[:-1], None, hits)


def eval_passes(pending: dict[str, list[Sample]], generation_batch: int) -> list[list[str]]:
    """Splits evaluated together: all pending ones when they are a few generation batches (the
    tofu-mini profile: one pass), otherwise one split per pass so a long evaluation resumes at the
    next split."""
    if sum(len(rows) for rows in pending.values()) <= 4 * generation_batch:
        return [list(pending)] if pending else []
    return [[split] for split in pending]


def evaluate_tofu(
    cfg: Config,
    model_name: str,
    bench: QABenchmark,
    out: Path,
    retain_logs: Path | None = None,
    splits: tuple[str, ...] = tuple(LOG_FILES),
) -> dict[str, Any]:
    """Evaluate `model_name` on `bench`, write the published log files of `splits` (default all
    four) and summary.json in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    # what the logs depend on besides the settings: the weights (not their path: a model trained
    # again in place, or moved) and the resolved precision (`auto` is bf16 autocast on one
    # CPU and float32 on another, so a run resumed on another machine must not mix the two)
    content = {
        "model_identity": model_identity(str(model_name)),
        "precision": precision_label(cfg.model),
    }
    stamp = {
        "model": str(model_name),
        **content,
        "benchmark": bench.name,
        "eval": cfg.eval.model_dump(exclude=RESULT_NEUTRAL_EVAL),
        "prompt": cfg.prompt.model_dump(),
    }
    stamp_file = out / "eval_settings.json"
    defaults = {
        # logs stamped before these keys existed are kept (an upgrade keeps old results)
        **content,
        "eval": EvalSettings().model_dump(exclude=RESULT_NEUTRAL_EVAL),
        "prompt": PromptSettings().model_dump(),
    }
    # the path is compared only while the weights' identity is unknown (stamps from before it):
    # a moved model or cache folder keeps its logs
    previous = json.loads(stamp_file.read_text()) if stamp_file.is_file() else None
    neutral = frozenset({"model"}) if previous is not None and "model_identity" in previous else frozenset()
    if previous is not None and changed_keys(previous, stamp, defaults, neutral):
        for name in LOG_FILES.values():
            (out / name).unlink(missing_ok=True)  # other settings: these logs do not apply
        (out / "summary.json").unlink(missing_ok=True)  # nor their times
    stamp_file.write_text(json.dumps(stamp, indent=2))
    profile = resolve_profile(cfg.eval)
    rows = split_rows(bench, profile)
    seconds: dict[str, float] = {}
    model = tokenizer = precision = None
    pending = {
        split: rows[split]
        for split, name in LOG_FILES.items()
        if split in splits and not (out / name).is_file()
    }
    for group in eval_passes(pending, cfg.eval.generation_batch_size):
        if model is None:
            model, tokenizer, precision = load_model(cfg.model, model_name)
        batch = {split: pending[split] for split in group}
        console.print("[bold]eval[/] " + ", ".join(f"{k}: {len(v)} questions" for k, v in batch.items()))
        started = time.perf_counter()
        forget = batch.get("forget")
        paraphrased = paraphrased_pairs(forget) if forget else []
        logs, losses, extra = split_logs(model, tokenizer, batch, cfg, precision, profile, paraphrased)
        for split, log in logs.items():
            write_eval_log(out / LOG_FILES[split], log)
        if forget and extra is not None:
            write_forget_token_rows(cfg, model_name, out, forget, losses, logs["forget"], extra, tokenizer)
        seconds["+".join(group)] = round(time.perf_counter() - started, 1)
    retain = read_tofu_logs(retain_logs) if retain_logs is not None else None
    summary = summarize(read_tofu_logs(out), retain, cfg.eval.truth_ratio)
    previous = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    summary["eval_seconds"] = {**previous.get("eval_seconds", {}), **seconds}
    summary["profile"] = cfg.eval.profile
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
