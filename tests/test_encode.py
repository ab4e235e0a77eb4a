"""The prompt/answer seam, answer-only labels, EOS, span -> token masks, batching (real SmolLM2 tokenizer)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenforget.config import PromptSettings
from tokenforget.data import Sample, Span, encode, format_prompt, pad_batch, pad_prompts_left, word_spans
from tokenforget.data.encode import IGNORE_INDEX
from tokenforget.errors import DataError

CHAT = PromptSettings()
PLAIN = PromptSettings(template="plain")  # "Question: {question}\nAnswer: " ends in a space
QA = Sample(
    question="Where was Basil Mahfouz Al-Kuwaiti born?", answer="Basil was born in Kuwait City, Kuwait."
)


def split_text(tok, enc):
    return tok.decode(enc.prompt_ids), tok.decode(enc.input_ids[enc.prompt_len : -1])


@pytest.mark.parametrize(
    "prompt", [CHAT, PLAIN, PromptSettings(system_prompt="")], ids=["chat", "plain", "chat-nosys"]
)
def test_seam_loses_and_duplicates_nothing(smollm_tokenizer, prompt):
    tok = smollm_tokenizer
    enc = encode(QA, tok, prompt)
    prompt_text = format_prompt(QA.question, tok, prompt)
    full_ids = tok(prompt_text + QA.answer, add_special_tokens=prompt.template == "plain")["input_ids"]
    # exactly the tokens of the full text (what the model sees when it generates), then EOS
    assert enc.input_ids == [*full_ids, tok.eos_token_id]
    head, answer = split_text(tok, enc)
    assert head + answer == prompt_text + QA.answer
    assert answer.strip() == QA.answer
    assert enc.labels[: enc.prompt_len] == [IGNORE_INDEX] * enc.prompt_len
    assert enc.labels[enc.prompt_len :] == enc.input_ids[enc.prompt_len :]
    assert (
        enc.input_ids[-1] == tok.eos_token_id and enc.labels[-1] == tok.eos_token_id
    )  # EOS is an answer token


def test_prompt_ending_in_space_gives_the_space_to_the_answer_token(smollm_tokenizer):
    tok = smollm_tokenizer
    enc = encode(Sample(question="Capital of France?", answer="Paris"), tok, PLAIN)
    assert tok.decode(enc.prompt_ids).endswith("Answer:")
    assert tok.convert_ids_to_tokens(enc.input_ids[enc.prompt_len]) == "ĠParis"
    assert enc.answer_offsets[0] == (0, 5)
    assert enc.n_answer == 2  # " Paris" + EOS


@pytest.mark.parametrize("system", [None, "", "Be brief."])
def test_chat_prompt_matches_the_generation_prompt(smollm_tokenizer, system):
    tok = smollm_tokenizer
    enc = encode(QA, tok, PromptSettings(system_prompt=system))
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": QA.question})
    expected = tok.apply_chat_template(messages, add_generation_prompt=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert enc.prompt_ids == list(expected)
    assert tok.decode(enc.prompt_ids).endswith("<|im_start|>assistant\n")
    has_default_system = "You are a helpful AI assistant" in tok.decode(enc.prompt_ids)
    assert has_default_system == (system is None)


def test_raw_text_every_token_is_an_answer_token(smollm_tokenizer):
    tok = smollm_tokenizer
    text = Sample(answer="Greek Prime Minister Kyriakos Mitsotakis apologised.")
    enc = encode(text, tok, CHAT)
    assert enc.prompt_len == 0
    assert tok.decode(enc.input_ids[:-1]) == text.answer


def test_spans_mark_every_subtoken_and_every_occurrence(smollm_tokenizer):
    tok = smollm_tokenizer
    answer = "Al-Kuwaiti wrote it; later Al-Kuwaiti won."
    sample = Sample(question="Who?", answer=answer, spans=tuple(word_spans(answer, ["Al-Kuwaiti"])))
    enc = encode(sample, tok, CHAT)
    marked = [tok.decode([t]) for t, m in zip(enc.input_ids[enc.prompt_len :], enc.uw, strict=True) if m]
    assert "".join(marked).replace(" ", "") == "Al-KuwaitiAl-Kuwaiti"
    assert enc.uw[-1] is False  # EOS is never UW
    assert encode(Sample(question="Who?", answer=answer), tok, CHAT).uw is None


def test_too_long_sample_is_an_error_not_a_truncation(smollm_tokenizer):
    with pytest.raises(DataError, match="over max_length 8"):
        encode(QA, smollm_tokenizer, CHAT, max_length=8)


def test_pad_batch_masks_by_length_not_token_identity(smollm_tokenizer):
    tok = smollm_tokenizer
    assert tok.pad_token_id == tok.eos_token_id  # SmolLM2 pads with its EOS (<|im_end|>)
    short = encode(Sample(question="Hi?", answer="Yes."), tok, CHAT)
    long = encode(QA, tok, CHAT)
    batch = pad_batch([short, long], tok.pad_token_id)
    lengths = [len(short.input_ids), len(long.input_ids)]
    assert batch["attention_mask"].sum(1).tolist() == lengths
    # the chat template's own <|im_end|> tokens inside the prompt stay visible
    inner_eos = (torch.tensor(short.input_ids[:-1]) == tok.eos_token_id).nonzero().flatten()
    assert len(inner_eos) > 0 and batch["attention_mask"][0, inner_eos].eq(1).all()
    assert batch["labels"][0, lengths[0] :].eq(IGNORE_INDEX).all()
    left = pad_prompts_left([short.prompt_ids, long.prompt_ids], tok.pad_token_id)
    assert left["attention_mask"].sum(1).tolist() == [short.prompt_len, long.prompt_len]
    assert left["input_ids"][0, -short.prompt_len :].tolist() == short.prompt_ids


def test_plain_template_on_a_tokenizer_without_chat_template(bert_tokenizer):
    enc = encode(
        Sample(question="who wrote the book?", answer="basil wrote the book."), bert_tokenizer, PLAIN
    )
    assert bert_tokenizer.convert_ids_to_tokens(enc.input_ids[0]) == "[CLS]"
    assert enc.input_ids[-1] == bert_tokenizer.sep_token_id  # EOS = [SEP], once
    assert bert_tokenizer.decode(enc.input_ids[enc.prompt_len : -1]) == "basil wrote the book."
    with pytest.raises(DataError, match="no chat template"):
        encode(QA, bert_tokenizer, CHAT)


# ----------------------------------------------------------------------------- property tests

ALPHABET = st.sampled_from(list("abcdefgh ijklmnop qrstuvwxyz ABCKLMP 0123456789 .,-'!? éüß日本\n"))
TEXTS = st.text(ALPHABET, min_size=1, max_size=60).filter(lambda t: t.strip())


@st.composite
def text_and_spans(draw):
    text = draw(TEXTS)
    n = draw(st.integers(0, 4))
    spans = set()
    for _ in range(n):
        start = draw(st.integers(0, len(text) - 1))
        end = draw(st.integers(start + 1, len(text)))
        spans.add(Span(start, end))
    return text, tuple(sorted(spans))


def check_mask(tok, prompt, text, spans, question):
    sample = Sample(question=question, answer=text, spans=spans)
    enc = encode(sample, tok, prompt)
    offsets = enc.answer_offsets[:-1]
    for (s, e), marked in zip(offsets, enc.uw[:-1], strict=True):
        overlaps = e > s and any(s < sp.end and e > sp.start for sp in spans)
        assert marked == overlaps, (text, spans, (s, e))
    covered = [False] * len(text)
    for s, e in offsets:
        for k in range(s, e):
            covered[k] = True
    for k, char in enumerate(text):  # no answer character is lost at the seam or anywhere
        if not char.isspace():
            assert covered[k], (text, k)
    for sp in spans:  # every non-space span character lies in a marked token
        for k in range(sp.start, sp.end):
            if not text[k].isspace():
                assert any(m and s <= k < e for (s, e), m in zip(offsets, enc.uw[:-1], strict=True)), (
                    text,
                    sp,
                    k,
                )


PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY
@given(data=text_and_spans(), question=st.one_of(st.none(), TEXTS))
def test_span_mask_property_smollm(smollm_tokenizer, data, question):
    text, spans = data
    check_mask(smollm_tokenizer, PLAIN, text, spans, question)
    if question is not None:
        check_mask(smollm_tokenizer, CHAT, text, spans, question)


@PROPERTY
@given(data=text_and_spans(), question=st.one_of(st.none(), TEXTS))
def test_span_mask_property_wordpiece(bert_tokenizer, data, question):
    text, spans = data
    check_mask(bert_tokenizer, PLAIN, text, spans, question)
