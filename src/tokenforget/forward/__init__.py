"""The answer forward: one pass of a causal LM whose LM head runs at answer positions only.

Training, the theta0 reference cache and evaluation all take their per-token statistics from
`answer_forward`, so the numbers a loss sees at step 0 are the reference's and the evaluation's.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import torch

from tokenforget.data.encode import IGNORE_INDEX


class AnswerForward(NamedTuple):
    """What one policy forward yields at answer positions (flattened over the batch). A named
    tuple, so every distributed wrapper (DDP, FSDP, DeepSpeed) finds the tensors in it."""

    logits: torch.Tensor  # (N, V): logits that predict each answer token
    targets: torch.Tensor  # (N,): the answer tokens
    rows: torch.Tensor  # (N,): which sample of the batch each position belongs to
    hidden: torch.Tensor | None = None  # (N, H) last hidden state at those positions, if asked


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers CausalLM inside an optional peft wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def answer_forward(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    keep_hidden: bool = False,
    hidden_layer: int | None = None,
    hidden_at: str = "predicting",
) -> AnswerForward:
    """One forward; LM head applied only where a label follows (position t predicts token t+1).

    keep_hidden keeps the last hidden state (post-norm) at answer positions; hidden_layer (an index
    into transformers' hidden_states: 0 = embeddings, k = after block k) keeps that layer's instead.
    hidden_at: "predicting" = the position that predicts each answer token, "token" = the position
    of the answer token itself.
    """
    lm = causal_lm(model)
    backbone = lm.get_decoder()
    out = backbone(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        output_hidden_states=hidden_layer is not None,
    )
    hidden = out.last_hidden_state
    targets = batch["labels"][:, 1:]
    where = targets != IGNORE_INDEX
    picked = hidden[:, :-1][where]
    logits = lm.get_output_embeddings()(picked)
    rows = torch.arange(targets.shape[0], device=targets.device)[:, None].expand_as(targets)[where]
    source = out.hidden_states[hidden_layer] if hidden_layer is not None else hidden if keep_hidden else None
    kept = None
    if source is not None:
        kept = (source[:, 1:] if hidden_at == "token" else source[:, :-1])[where]
    return AnswerForward(logits=logits, targets=targets[where], rows=rows, hidden=kept)


class AnswerModel(torch.nn.Module):
    """`answer_forward` as a module, so distributed wrappers (DDP via accelerate) see the forward
    that produces the loss and synchronise gradients."""

    def __init__(
        self,
        lm: torch.nn.Module,
        hidden_layer: int | None = None,
        keep_hidden: bool = False,
        hidden_at: str = "predicting",
    ):
        super().__init__()
        self.lm = lm
        # FSDP's transformer-based auto wrap reads the block classes from the root module
        self._no_split_modules = getattr(causal_lm(lm), "_no_split_modules", None)
        self.hidden_layer = hidden_layer
        self.keep_hidden = keep_hidden
        self.hidden_at = hidden_at

    # accelerate's FSDP2 preparation moves the model to the meta device and back, which unties
    # tied embeddings unless the root module can tie them again; it also groups the embeddings
    # with the final norm when it can find them
    def tie_weights(self, *args: Any, **kwargs: Any) -> Any:
        return causal_lm(self.lm).tie_weights(*args, **kwargs)

    def get_input_embeddings(self) -> torch.nn.Module:
        return causal_lm(self.lm).get_input_embeddings()

    def get_output_embeddings(self) -> torch.nn.Module:
        return causal_lm(self.lm).get_output_embeddings()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> AnswerForward:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        return answer_forward(self.lm, batch, self.keep_hidden, self.hidden_layer, self.hidden_at)


class AnswerLogits(Protocol):
    """Anything with logits at answer positions and the tokens they predict (an AnswerForward, the
    losses' TokenStats)."""

    logits: torch.Tensor
    targets: torch.Tensor


def token_nll(fwd: AnswerLogits) -> torch.Tensor:
    """Per answer token negative log-likelihood, (N,), in fp32: the one definition of log p that
    training, the reference cache and evaluation share."""
    return torch.nn.functional.cross_entropy(fwd.logits.float(), fwd.targets, reduction="none")


def answer_flags(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uw, token weight and EOS flags at answer positions, flattened like answer_forward's output."""
    where = batch["labels"][:, 1:] != IGNORE_INDEX
    lengths = batch["attention_mask"].sum(1)
    cols = torch.arange(where.shape[1], device=where.device)[None, :]
    eos = (cols == (lengths[:, None] - 2))[where]
    return batch["uw_mask"][:, 1:][where], batch["token_weights"][:, 1:][where], eos
