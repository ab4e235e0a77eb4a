"""Teacher-forced answer losses: one pass per distinct (question, answer) text, in padded batches.

Every metric that needs an answer's NLL (probability, truth ratio, membership attacks, token-level
forgetting) reads it from here, so a text shared by two metrics is scored once. The forward is the
training forward (LM head at answer positions only).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from tokenforget.config import PromptSettings
from tokenforget.data.encode import IGNORE_INDEX, Encoded, encode, pad_batch, pad_prompts_left
from tokenforget.data.records import Sample
from tokenforget.forward import AnswerForward, answer_forward, causal_lm, token_nll
from tokenforget.models import Precision, eval_mode

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def min_k_plus_plus_z(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token Min-K%++ z = (log p(x_t) - mu_t) / sigma_t; logits (T, V) predict targets (T,)."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    probs = logp.exp()
    mu = (probs * logp).sum(-1)
    sigma = ((probs * logp.square()).sum(-1) - mu.square()).clamp_min(1e-12).sqrt()
    return (logp.gather(-1, targets[:, None]).squeeze(-1) - mu) / sigma


@dataclasses.dataclass
class AnswerLoss:
    """Per-token statistics of one answer under one model."""

    token_nll: torch.Tensor  # (tokens,) float64
    token_z: torch.Tensor | None = None  # Min-K%++ z per token, when asked for
    hits: torch.Tensor | None = None  # (tokens,) bool: the teacher-forced argmax is the answer token

    @property
    def total(self) -> float:
        return float(self.token_nll.sum())

    @property
    def tokens(self) -> int:
        return self.token_nll.numel()

    @property
    def mean(self) -> float:
        return self.total / self.tokens


def answer_losses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str | None, str]],
    prompt: PromptSettings,
    precision: Precision,
    include_eos: bool = True,
    batch_size: int = 32,
    with_distribution: bool = False,
) -> dict[tuple[str | None, str], AnswerLoss]:
    """Token NLLs of each distinct (question, answer) pair's answer (EOS counted when include_eos).

    with_distribution adds the Min-K%++ z-score of every token (needs a softmax over the vocabulary
    at each answer position, computed batch by batch and not kept).
    """
    from tokenforget.progress import task_progress

    with task_progress("score answers", len(set(pairs))) as bar:
        return _score_pairs(
            model, tokenizer, pairs, prompt, precision, include_eos, batch_size, with_distribution, bar
        )


def answer_losses_and_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str | None, str]],
    questions: Sequence[str],
    prompt: PromptSettings,
    precision: Precision,
    include_eos: bool,
    batch_size: int,
    max_new_tokens: int,
    generation_batch_size: int,
    unscored: Sequence[tuple[str, str]] = (),
    workers: int = 1,
) -> tuple[dict[tuple[str | None, str], AnswerLoss], list[str]]:
    """`answer_losses` of the pairs and greedy answers to `questions` (each one a question of the
    pairs) on one prompt pass: each chunk of `generation_batch_size` prompts is run once, its answers
    are scored from their rows of its KV cache, then its questions are answered from the cache itself.
    `unscored` (question, answer) pairs join the pass for generation only: their questions are
    answered from the prompt that `answer` would continue (a tokenizer may merge across the seam),
    after `questions`' answers in the returned list.
    `workers` > 1 splits the questions (with their pairs) over that many forked CPU processes
    (`eval.workers`); the numbers agree with one process to float32 rounding.
    Same numbers as `answer_losses` + `answer_questions` without `max_length` (legacy TOFU's length
    bound depends on the generation batch's padded width, so that profile keeps separate passes)."""
    from tokenforget.progress import task_progress

    scored_questions = {q for q, _ in pairs}
    orphans = [q for q in questions if q not in scored_questions]
    if orphans:  # before any forward: the pass could not answer it
        raise ValueError(f"{len(orphans)} questions have no scored pair, e.g. {orphans[0]!r}")
    job = _GreedyPass(
        pairs,
        questions,
        unscored,
        prompt,
        precision,
        include_eos,
        batch_size,
        max_new_tokens,
        generation_batch_size,
    )
    with task_progress("score answers", len(set(pairs))) as bar:
        bar.add_task("generate", total=len(questions) + len(unscored))
        if workers <= 1:
            return _losses_and_greedy(model, tokenizer, job, bar)
        return _losses_and_greedy_in_workers(model, tokenizer, job, bar, workers)


@dataclasses.dataclass(frozen=True)
class _GreedyPass:
    """The inputs of one `answer_losses_and_greedy` pass (or of one worker's share of it)."""

    pairs: Sequence[tuple[str | None, str]]
    questions: Sequence[str]
    unscored: Sequence[tuple[str, str]]
    prompt: PromptSettings
    precision: Precision
    include_eos: bool
    batch_size: int
    max_new_tokens: int
    generation_batch_size: int


def _losses_and_greedy_in_workers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, job: _GreedyPass, bar: Any, workers: int
) -> tuple[dict[tuple[str | None, str], AnswerLoss], list[str]]:
    """The pass split by question over forked workers: a question's pairs and its greedy answers
    stay in one share (they share its prompt pass); an `unscored` pair is a share item of its own."""
    from functools import partial

    from tokenforget.forward.workers import balanced_shares, run_in_workers

    by_question: dict[str | None, list[tuple[str | None, str]]] = {}
    for pair in dict.fromkeys(job.pairs):
        by_question.setdefault(pair[0], []).append(pair)
    asked = collections.Counter(job.questions)
    units: list[tuple[str | None, int | None]] = [(q, None) for q in by_question]
    units += [(None, k) for k in range(len(job.unscored))]
    generated_chars = 2 * job.max_new_tokens  # about half the new-token budget, at ~4 characters a token

    def cost(unit: tuple[str | None, int | None]) -> float:
        question, extra = unit
        if extra is not None:
            return len(job.unscored[extra][0]) + generated_chars
        texts = sum(len(a) for _, a in by_question[question])
        return len(question or "") + texts + asked[question] * generated_chars

    shares = []
    for share in balanced_shares([cost(u) for u in units], workers):
        own = {units[k][0] for k in share if units[k][1] is None}
        shares.append(
            dataclasses.replace(
                job,
                pairs=[p for q in by_question if q in own for p in by_question[q]],
                questions=[q for q in job.questions if q in own],
                unscored=[job.unscored[units[k][1]] for k in share if units[k][1] is not None],
            )
        )
    losses: dict[tuple[str | None, str], AnswerLoss] = {}
    answer_of: dict[str, str] = {}
    extra_answers: dict[tuple[str, str], str] = {}
    with eval_mode(model, dtype=job.precision.compute_dtype):  # packed once here, shared by the children
        jobs = [partial(_losses_and_greedy, model, tokenizer, share) for share in shares]
        results = run_in_workers(jobs, bar)
        for share, (part, answers) in zip(shares, results, strict=True):
            losses.update(part)
            answer_of.update(zip(share.questions, answers, strict=False))
            extra_answers.update(zip(share.unscored, answers[len(share.questions) :], strict=True))
    return losses, [answer_of[q] for q in job.questions] + [extra_answers[p] for p in job.unscored]


def _losses_and_greedy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, job: _GreedyPass, bar: Any
) -> tuple[dict[tuple[str | None, str], AnswerLoss], list[str]]:
    from tokenforget.forward.generation import greedy_tokens

    answer_of = {q: a for q, a in reversed(job.pairs)}  # the prompt ids as the scored pairs encode them
    prompt_of = {
        q: tuple(encode(Sample(answer=answer_of[q], question=q), tokenizer, job.prompt).prompt_ids)
        for q in job.questions
    }
    extra = [
        tuple(encode(Sample(answer=a, question=q), tokenizer, job.prompt).prompt_ids) for q, a in job.unscored
    ]
    asked = collections.Counter([*prompt_of.values(), *extra])
    answers: dict[tuple[int, ...], str] = {}

    def answer(chunk: list[tuple[int, ...]], state: PromptState) -> None:
        rows = [k for k, ids in enumerate(chunk) if ids in asked]
        if not rows:
            return
        if len(rows) < len(chunk):  # prompts scored but not asked: leave them out of generation
            keep = torch.tensor(rows, device=state.mask.device)
            state.cache.batch_select_indices(keep)
            state = PromptState(state.cache, state.mask[keep], state.last_hidden[keep])
        wanted = [chunk[k] for k in rows]
        pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        new = greedy_tokens(model, wanted, pad, eos, job.max_new_tokens, job.precision.device, state)
        for ids, tokens in zip(wanted, new, strict=True):
            answers[ids] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        bar.advance(bar.task_ids[1], sum(asked[ids] for ids in wanted))

    losses = _score_pairs(
        model,
        tokenizer,
        job.pairs,
        job.prompt,
        job.precision,
        job.include_eos,
        job.batch_size,
        False,
        bar,
        prompt_batch=job.generation_batch_size,
        after_prompts=answer,
        extra_prompts=extra,
    )
    wanted = [prompt_of[q] for q in job.questions] + extra
    missing = [ids for ids in wanted if ids not in answers]
    if missing:  # their prompts were scored without a shared prompt pass (raw text among the pairs)
        raise ValueError(f"{len(missing)} questions got no prompt pass")
    return losses, [answers[ids] for ids in wanted]


def _score_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str | None, str]],
    prompt: PromptSettings,
    precision: Precision,
    include_eos: bool,
    batch_size: int,
    with_distribution: bool,
    bar: Any,
    prompt_batch: int | None = None,
    after_prompts: AfterPrompts | None = None,
    extra_prompts: Sequence[tuple[int, ...]] = (),
) -> dict[tuple[str | None, str], AnswerLoss]:
    unique = list(dict.fromkeys(pairs))
    encoded = [encode(Sample(answer=a, question=q), tokenizer, prompt) for q, a in unique]
    results: dict[tuple[str | None, str], AnswerLoss] = {}
    with eval_mode(model, dtype=precision.compute_dtype):
        for chunk, fwd in _forwards(
            model,
            encoded,
            tokenizer.pad_token_id,
            precision,
            include_eos,
            batch_size,
            prompt_batch,
            after_prompts,
            extra_prompts,
        ):
            per_row = _by_row(token_nll(fwd).double(), fwd, len(chunk))
            z_rows = (
                _by_row(min_k_plus_plus_z(fwd.logits, fwd.targets), fwd, len(chunk))
                if with_distribution
                else [None] * len(chunk)
            )
            hit_rows = _by_row(fwd.logits.argmax(-1) == fwd.targets, fwd, len(chunk))
            for row, index in enumerate(chunk):
                results[unique[index]] = AnswerLoss(per_row[row], z_rows[row], hit_rows[row])
            bar.advance(bar.task_ids[0], len(chunk))
    return results


def encoded_nll(
    model: PreTrainedModel,
    encoded: Sequence[Encoded],
    pad_id: int,
    precision: Precision,
    batch_size: int = 32,
) -> list[torch.Tensor]:
    """Per-token NLL (float64, CPU, EOS included) of each already encoded answer, in input order."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(encoded)
    with eval_mode(model, dtype=precision.compute_dtype):
        for chunk, fwd in _forwards(model, list(encoded), pad_id, precision, True, batch_size):
            for index, nll in zip(chunk, _by_row(token_nll(fwd).double(), fwd, len(chunk)), strict=True):
                out[index] = nll
    return out


def _by_row(values: torch.Tensor, fwd: AnswerForward, rows: int) -> tuple[torch.Tensor, ...]:
    """Per-position values split into one CPU tensor per row (positions are grouped by row, in order)."""
    counts = torch.bincount(fwd.rows.cpu(), minlength=rows).tolist()
    return torch.split(values.cpu(), counts)


def _forwards(
    model: PreTrainedModel,
    encoded: list[Encoded],
    pad_id: int,
    precision: Precision,
    include_eos: bool,
    batch_size: int,
    prompt_batch: int | None = None,
    after_prompts: AfterPrompts | None = None,
    extra_prompts: Sequence[tuple[int, ...]] = (),
) -> Iterator[tuple[list[int], AnswerForward]]:
    """Answer-position logits for every encoded pair, `batch_size` answers at a time, in chunks of
    (indices into `encoded`, forward). Answers that share a prompt (the true answer, the paraphrase
    and the perturbed options of one question) are scored on one pass of that prompt, run for
    `prompt_batch` prompts at a time (default `batch_size`); `after_prompts(prompts, state)` then
    receives each chunk's prompt state once its answers are scored (it may consume the cache).
    `extra_prompts` (with `after_prompts` only) join the prompt passes without answers to score."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, item in enumerate(encoded):
        groups.setdefault(tuple(item.prompt_ids), []).append(index)
    if after_prompts is not None:
        for ids in extra_prompts:
            groups.setdefault(tuple(ids), [])
    shared = all(len(p) > 0 for p in groups) and (len(groups) < len(encoded) or after_prompts is not None)
    if not shared:  # raw text, or no prompt is shared: one padded forward per batch
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = {
                k: v.to(precision.device) for k, v in pad_batch([encoded[i] for i in chunk], pad_id).items()
            }
            if not include_eos:
                lengths = batch["attention_mask"].sum(1)
                batch["labels"][torch.arange(len(chunk)), lengths - 1] = IGNORE_INDEX
            with precision.autocast():
                yield chunk, answer_forward(model, batch)
        return
    prompts = sorted(groups, key=len)
    per_chunk = prompt_batch or batch_size
    for start in range(0, len(prompts), per_chunk):
        chunk_prompts = prompts[start : start + per_chunk]
        with precision.autocast():
            state = prompt_state(model, chunk_prompts, pad_id, precision.device)
        # answers of every prompt in the chunk, by length: a batch pads to similar lengths
        members = sorted(
            ((g, i) for g, p in enumerate(chunk_prompts) for i in groups[p]),
            key=lambda m: len(encoded[m[1]].input_ids) - encoded[m[1]].prompt_len,
        )
        for first in range(0, len(members), batch_size):
            batch = members[first : first + batch_size]
            answers = [encoded[i].input_ids[encoded[i].prompt_len :] for _, i in batch]
            with precision.autocast():
                fwd = continue_prompts(model, state, [g for g, _ in batch], answers, pad_id, include_eos)
            yield [i for _, i in batch], fwd
        if after_prompts is not None:
            with precision.autocast():
                after_prompts(list(chunk_prompts), state)


@dataclasses.dataclass
class PromptState:
    """Left-padded prompts run once: their KV cache, mask and last hidden state."""

    cache: Any
    mask: torch.Tensor  # (prompts, width)
    last_hidden: torch.Tensor  # (prompts, hidden): the state that predicts the first answer token


# receives a chunk of prompts (token ids) and their prompt state once their answers are scored
AfterPrompts = Callable[[list[tuple[int, ...]], "PromptState"], None]


def prompt_state(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> PromptState:
    backbone = causal_lm(model).get_decoder()
    padded = pad_prompts_left(prompts, pad_id)
    ids, mask = padded["input_ids"].to(device), padded["attention_mask"].to(device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    out = backbone(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    return PromptState(cache=cache, mask=mask, last_hidden=out.last_hidden_state[:, -1])


def continue_prompts(
    model: torch.nn.Module,
    state: PromptState,
    owners: Sequence[int],
    answers: Sequence[Sequence[int]],
    pad_id: int,
    include_eos: bool = True,
) -> AnswerForward:
    """Answer-position logits of `answers[k]` continuing prompt `owners[k]` of `state` (left intact,
    so one prompt pass serves any number of answer batches)."""
    lm = causal_lm(model)
    backbone = lm.get_decoder()
    device = state.mask.device
    owner = torch.tensor(list(owners), device=device)
    cache = _rows_of(state.cache, owner)  # the continuation appends to it
    width = max(len(a) for a in answers)
    answer_ids = torch.full((len(answers), width), pad_id, dtype=torch.long)
    answer_mask = torch.zeros((len(answers), width), dtype=torch.long)
    for row, ids in enumerate(answers):
        answer_ids[row, : len(ids)] = torch.tensor(ids)
        answer_mask[row, : len(ids)] = 1
    answer_ids, answer_mask = answer_ids.to(device), answer_mask.to(device)
    lengths = state.mask.sum(-1)[owner]
    answer_positions = lengths[:, None] + torch.arange(width, device=device)[None]
    after = backbone(
        input_ids=answer_ids,
        attention_mask=torch.cat([state.mask[owner], answer_mask], dim=1),
        position_ids=answer_positions,
        use_cache=True,
        **{_cache_argument(backbone): cache},
    )
    # the state that predicts answer token j: the prompt's last for j = 0, answer token j-1 after
    predicting = torch.cat([state.last_hidden[owner, None], after.last_hidden_state[:, :-1]], dim=1)
    where = answer_mask.bool()
    if not include_eos:
        where[torch.arange(len(answers), device=device), answer_mask.sum(-1) - 1] = False
    logits = lm.get_output_embeddings()(predicting[where])
    rows = torch.arange(len(answers), device=device)[:, None].expand_as(answer_ids)[where]
    return AnswerForward(logits=logits, targets=answer_ids[where], rows=rows)


def _rows_of(cache: Any, rows: torch.Tensor) -> Any:
    """A cache holding only `rows` of `cache`, which stays intact. Every transformers cache layer
    selects rows by indexing, which makes new tensors, so shallow copies of the layers suffice: no
    copy of the rows that are not needed (a prompt chunk is larger than an answer batch)."""
    import copy

    if not hasattr(cache, "layers"):  # another cache design: copy it whole
        selected = copy.deepcopy(cache)
    else:
        selected = copy.copy(cache)
        selected.layers = [copy.copy(layer) for layer in cache.layers]
    selected.batch_select_indices(rows)
    return selected


def _cache_argument(backbone: torch.nn.Module) -> str:
    """The KV-cache keyword of this transformers release (`cache` since 5.2x, `past_key_values` before)."""
    import inspect

    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"
