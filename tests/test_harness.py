"""`eval harness`: lm-evaluation-harness on our loaded model, checked against our own scoring."""

import json

import pytest

from tokenforget.config import ModelSettings
from tokenforget.data.benchmarks import bundled_file
from tokenforget.data.encode import Encoded
from tokenforget.evaluate.harness import LOCAL_TASKS, run_harness
from tokenforget.forward.scoring import encoded_nll
from tokenforget.models import load_model

pytest.importorskip("lm_eval")


def own_accuracy(model_dir, items):
    """The share of items whose true answer (choice 0) has the highest log-likelihood after
    'Question: ...\\nAnswer:', scored by tokenforget's own teacher-forced forward on the token split
    the harness uses (the context encoded alone, the continuation as the rest of the whole text)."""
    settings = ModelSettings(precision="fp32", device="cpu")
    model, tokenizer, precision = load_model(settings, str(model_dir))
    encoded, sizes = [], []
    for item in items:
        context = f"Question: {item['question']}\nAnswer:"
        choices = [item["answer"], *item["perturbed_answer"]]
        sizes.append(len(choices))
        for choice in choices:
            whole = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
            prompt = tokenizer(context, add_special_tokens=False)["input_ids"]
            n = len(whole) - len(prompt)
            encoded.append(Encoded(whole, len(prompt), [(0, 0)] * n, None))
    nll = [float(x.sum()) for x in encoded_nll(model, encoded, tokenizer.pad_token_id, precision)]
    correct, start = 0, 0
    for size in sizes:
        scores = nll[start : start + size]
        correct += min(range(size), key=scores.__getitem__) == 0
        start += size
    return correct / len(sizes)


def test_the_harness_on_our_model_agrees_with_our_own_scoring(tmp_path, tiny_llama_dir):
    lines = bundled_file("world_facts_perturbed").read_text().splitlines()
    items = [json.loads(line) for line in lines]
    settings = ModelSettings(precision="fp32", device="cpu")
    record = run_harness(settings, str(tiny_llama_dir), ["tofu_world_facts_mc"], tmp_path, limit=40)
    result = record["results"]["tofu_world_facts_mc"]
    assert record["n_samples"]["tofu_world_facts_mc"]["effective"] == 40
    assert result["acc,none"] == pytest.approx(own_accuracy(tiny_llama_dir, items[:40]), abs=1e-9)
    assert json.loads((tmp_path / "harness.json").read_text())["results"] == record["results"]
    assert LOCAL_TASKS["tofu_world_facts_mc"]["output_type"] == "multiple_choice"
