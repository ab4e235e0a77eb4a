"""Prompt formatting, tokenisation with answer-only labels, and character spans -> token masks.

The prompt/answer seam is found from character offsets of the tokenised full text, never by
tokenising the two halves apart: a token whose characters reach into the answer is an answer token
(so with a prompt ending in a space, the token " Paris" that carries that space belongs to the
answer), every other token belongs to the prompt. No token is lost or counted twice, and the
tokens are exactly those the model sees at generation time. The answer then ends with the EOS
token, which is an answer token too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tokenforget.config import PromptSettings
from tokenforget.data.records import Sample, Span
from tokenforget.errors import DataError, DataIssue

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One tokenised sample. Positions index `input_ids`; answer tokens start at `prompt_len`."""

    input_ids: list[int]
    prompt_len: int
    answer_offsets: list[tuple[int, int]]  # per answer token, answer-relative chars; EOS = (n, n)
    uw: list[bool] | None  # per answer token (EOS included, always False); None = no spans given
    weights: list[float] | None = None  # per answer token: the best score of the spans it overlaps

    @property
    def labels(self) -> list[int]:
        return [IGNORE_INDEX] * self.prompt_len + self.input_ids[self.prompt_len :]

    @property
    def prompt_ids(self) -> list[int]:
        return self.input_ids[: self.prompt_len]

    @property
    def n_answer(self) -> int:
        return len(self.input_ids) - self.prompt_len


def format_prompt(question: str | None, tokenizer: PreTrainedTokenizerBase, prompt: PromptSettings) -> str:
    """The text that precedes the answer: chat template, plain template, or '' for raw text."""
    if question is None:
        return ""
    if prompt.template == "plain":
        return prompt.plain_format.format(question=question)
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            [
                DataIssue(
                    "<prompt settings>",
                    None,
                    "prompt.template",
                    "the tokenizer has no chat template",
                    "use --set prompt.template=plain",
                )
            ]
        )
    messages = []
    if prompt.system_prompt is not None:
        messages.append({"role": "system", "content": prompt.system_prompt})
    messages.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    token = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if token is None:
        raise DataError(
            [
                DataIssue(
                    "<tokenizer>",
                    None,
                    None,
                    "the tokenizer has no EOS token",
                    "use a tokenizer with eos_token set",
                )
            ]
        )
    return int(token)


def encode(
    sample: Sample,
    tokenizer: PreTrainedTokenizerBase,
    prompt: PromptSettings,
    max_length: int | None = None,
    spans: Sequence[Span] | None = None,
) -> Encoded:
    """Tokenise a sample; `spans` (default: the sample's own) mark UW answer tokens."""
    prompt_text = format_prompt(sample.question, tokenizer, prompt)
    full = prompt_text + sample.answer
    # A chat template already holds its special tokens as text; plain/raw text gets the tokenizer's
    # own BOS convention.
    add_special = not (sample.question is not None and prompt.template == "chat")
    enc = tokenizer(full, add_special_tokens=add_special, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
    if add_special:
        # Special tokens a tokenizer appends after the text (BERT's [SEP]) are not answer text.
        while len(ids) > 1 and offsets[-1] == (0, 0):
            ids.pop()
            offsets.pop()
    seam = len(prompt_text)
    prompt_len = next((i for i, (s, e) in enumerate(offsets) if e > seam and e > s), len(ids))
    if prompt_len == len(ids):
        raise DataError(
            [
                DataIssue(
                    f"sample {sample.id}",
                    None,
                    "answer",
                    "the tokenizer produced no token for the answer",
                    "check the answer text",
                )
            ]
        )
    answer_offsets = [(max(s - seam, 0), e - seam) for s, e in offsets[prompt_len:]]
    eos = eos_id(tokenizer)
    ids.append(eos)
    answer_offsets.append((len(sample.answer), len(sample.answer)))
    if max_length is not None and len(ids) > max_length:
        raise DataError(
            [
                DataIssue(
                    f"sample {sample.id}",
                    None,
                    "answer",
                    f"is {len(ids)} tokens long with its prompt, over max_length {max_length}",
                    "shorten it or raise --set data.max_length",
                )
            ]
        )
    chosen = sample.spans if spans is None else tuple(spans)
    uw = weights = None
    if chosen is not None:
        uw = [*span_mask(answer_offsets[:-1], chosen), False]
        weights = [*span_weights(answer_offsets[:-1], chosen), 0.0]
    return Encoded(
        input_ids=ids, prompt_len=prompt_len, answer_offsets=answer_offsets, uw=uw, weights=weights
    )


def span_mask(token_offsets: Sequence[tuple[int, int]], spans: Sequence[Span]) -> list[bool]:
    """True for every token whose characters overlap any span (all sub-tokens of a marked word)."""
    return [any(s < sp.end and e > sp.start for sp in spans) and e > s for s, e in token_offsets]


def span_weights(token_offsets: Sequence[tuple[int, int]], spans: Sequence[Span]) -> list[float]:
    """Per token, the highest score of the spans it overlaps (a span without a score counts 1), else 0."""
    return [
        max(
            (1.0 if sp.score is None else sp.score for sp in spans if s < sp.end and e > sp.start and e > s),
            default=0.0,
        )
        for s, e in token_offsets
    ]


def pad_batch(encoded: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded training batch. The attention mask comes from lengths, never from token ids
    (SmolLM2 pads with its EOS, which is also a real answer token)."""
    width = max(len(e.input_ids) for e in encoded)
    batch = len(encoded)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    uw = torch.zeros((batch, width), dtype=torch.bool)
    weights = torch.zeros((batch, width), dtype=torch.float32)
    for row, item in enumerate(encoded):
        n = len(item.input_ids)
        input_ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        attention[row, :n] = 1
        if item.uw is not None:
            uw[row, item.prompt_len : n] = torch.tensor(item.uw)
        if item.weights is not None:
            weights[row, item.prompt_len : n] = torch.tensor(item.weights)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention,
        "uw_mask": uw,
        "token_weights": weights,
    }


def pad_prompts_left(prompts: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompt batch (prompt passes of scoring and greedy generation)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
        attention[row, width - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention}
