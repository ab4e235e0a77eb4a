"""The shared teacher-forced pass: answers sharing a prompt, scored on one pass of the prompt, give
the same numbers as scoring each (prompt + answer) sequence on its own."""

import pytest
import torch

from tokenforget.config import PromptSettings
from tokenforget.forward.scoring import answer_losses
from tokenforget.models import Precision


def test_prompt_sharing_gives_the_numbers_of_separate_sequences(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    precision = Precision(torch.float32, None, torch.device("cpu"))
    questions = ["Who wrote it?", "Where was the author of many well known novels born, and when?"]
    answers = ["Basil did.", "Nobody knows.", "In Kuwait City in 1956.", "A short one.", "Paris."]
    pairs = [(q, a) for q in questions for a in answers]
    for include_eos in (True, False):
        shared = answer_losses(model, tokenizer, pairs, PromptSettings(), precision, include_eos, 4, True)
        for pair in pairs:
            alone = answer_losses(
                model, tokenizer, [pair], PromptSettings(), precision, include_eos, 4, True
            )[pair]
            got = shared[pair]
            assert got.tokens == alone.tokens
            assert got.token_nll.tolist() == pytest.approx(alone.token_nll.tolist(), abs=1e-5)
            assert got.token_z.tolist() == pytest.approx(alone.token_z.tolist(), abs=1e-5)
            assert torch.equal(got.hits, alone.hits)
