"""ATWU: Alternating Token-Weighted Unlearning (docs/atwu.md). A linear scorer over the model's hidden
states learns per-token forget weights g_t in [0, 1] while the model unlearns; no identifier needed.

- Scorer: g_t = sigmoid(v . h_t + b), one `nn.Linear(d, 1)` in fp32, zero-initialised (every g_t
  starts at 0.5). h_t is *detached*: the scorer never backpropagates into the model. h_t comes from
  the same forward that gives the logits (no second forward): by default the last layer at the
  position of the token itself, as the authors' code does (`atwu.position=token`); `predicting` uses
  the position that predicts the token instead (a choice the authors' own TODO questions).
- Model step (g held fixed; `losses.atwu_loss`, method `atwu`):
  alpha * retain NLL - gamma * mean_t[g_t * sg(p_t^(beta g_t)) * nll_t] (`atwu.form=saturated`, the
  authors' main variant); `correct` = sg(p_t^beta) (saturation independent of g); `plain` = no
  saturation (their ablation, reported insufficient).
- Scorer step, once every n model steps with gradients accumulated over that step's micro-batches:
  mean_t[(1 - g_t) sg(nll_t)] + l_ent mean_t H_b(g_t) + l_pop mean_seq(mean_t STE(1[g_t > 0.5]) - b)^2
  + l_l2 ||v||^2 (the bias is not penalised). The straight-through estimator (STE) uses the hard
  indicator forward and g's gradient backward. SGD with momentum, weight decay, clipping and a linear
  decay, as the authors ran it.
- `atwu.schedule=joint` is the non-alternating control: the scorer's parameters join the model's
  optimizer and one backward pass serves both (the model loss then sees g with its gradient).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class TokenScorer(torch.nn.Module):
    """g = sigmoid(v . h + b) on detached hidden states, fp32, zero-initialised."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1, dtype=torch.float32)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(hidden.detach().float()).squeeze(-1))


def binary_entropy(g: torch.Tensor) -> torch.Tensor:
    """H_b(g) = -g log g - (1-g) log(1-g), per token (nats), safe at 0 and 1."""
    g = g.clamp(1e-6, 1 - 1e-6)
    return -(g * g.log() + (1 - g) * (1 - g).log())


def straight_through(g: torch.Tensor) -> torch.Tensor:
    """1[g > 0.5] forward, the gradient of g backward."""
    return (g > 0.5).float() + g - g.detach()


@dataclass
class ScorerRegularisers:
    entropy: float = 1.0
    population: float = 10.0
    budget: float = 0.2
    l2: float = 1.0


def scorer_loss(
    g: torch.Tensor,
    nll: torch.Tensor,
    rows: torch.Tensor,
    n_rows: int,
    weight: torch.Tensor,
    reg: ScorerRegularisers,
    forget_term: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The scorer's objective on one forget micro-batch (see the module doc); `weight` = v.

    `forget_term` replaces mean_t[(1 - g) sg(nll)] for the matched variants (the model's own forget
    loss as a function of g) and for the joint control (0: the model loss already carries g)."""
    forget = ((1 - g) * nll.detach()).mean() if forget_term is None else forget_term
    entropy = binary_entropy(g).mean()
    selected = straight_through(g)
    count = torch.zeros(n_rows, dtype=g.dtype, device=g.device).index_add(0, rows, torch.ones_like(g))
    share = torch.zeros(n_rows, dtype=g.dtype, device=g.device).index_add(
        0, rows, selected
    ) / count.clamp_min(1)
    population = (share[count > 0] - reg.budget).square().mean()
    l2 = weight.square().sum()
    total = forget + reg.entropy * entropy + reg.population * population + reg.l2 * l2
    parts = {
        "scorer_forget": forget,
        "scorer_entropy": entropy,
        "scorer_population": population,
        "scorer_l2": l2,
    }
    return total, {k: v.detach() for k, v in parts.items()}


def scorer_optimizer(
    scorer: TokenScorer, lr: float, total_updates: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD (momentum 0.9, weight decay 1e-4) with a linear decay to 0 over the scorer's updates."""
    optimizer = torch.optim.SGD(scorer.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: max(0.0, 1.0 - k / max(total_updates, 1))
    )
    return optimizer, scheduler


def alignment(scores: torch.Tensor, gold: torch.Tensor) -> dict[str, float | None]:
    """AUROC and average precision of token weights against gold UW tokens (None without both classes)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = gold.bool().cpu().numpy()
    if y.all() or not y.any():
        return {"auroc": None, "average_precision": None}
    s = scores.float().cpu().numpy()
    return {"auroc": float(roc_auc_score(y, s)), "average_precision": float(average_precision_score(y, s))}


def learned_weights(session: Any, path: Path, batch_size: int) -> dict[str, Any]:
    """ATWU's final weights over the whole forget set: `token_weights.jsonl` (the identified-set
    format: spans = tokens with g > 0.5, `token_scores` per answer token, `word_scores` per word) and
    their AUROC / average precision against the forget data's own spans, when it has them.
    `session` is the run's `session.Session` (not imported here: the session imports this module)."""
    from tokenforget.data.encode import pad_batch
    from tokenforget.data.identified import write_identified
    from tokenforget.data.records import Sample, Span, answer_words
    from tokenforget.forward import answer_flags
    from tokenforget.models import eval_mode

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
            g = session.scorer(out.hidden).float().cpu()
            uw = answer_flags(batch)[0].cpu()
            counts = torch.bincount(out.rows.cpu(), minlength=len(rows)).tolist()
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
