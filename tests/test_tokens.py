"""Token-level forgetting (`eval tokens`): hand-computed summaries, and the scoring pass end to end."""

import json

import pytest
import torch

from tokenforget.config import PromptSettings, load_config
from tokenforget.data.encode import encode
from tokenforget.data.records import Sample, Span
from tokenforget.errors import ConfigError
from tokenforget.evaluate.tokens import sample_key, token_summary, token_summary_for

ANSWER = "Basil was born in Kuwait City."


def labelled() -> Sample:
    spans = [Span(0, 5), Span(18, 24)]  # "Basil", "Kuwait"
    return Sample(answer=ANSWER, question="Who is he?", spans=spans, id="s0")


def row(sample: Sample, n: int, logp: list[float], hits: list[bool], generated: str, para: str) -> dict:
    return {
        "key": sample_key(sample),
        "id": sample.id,
        "question": sample.question,
        "answer": sample.answer,
        "offsets": [],
        "logp": logp,
        "hits": hits,
        "generated": generated,
        "paraphrased_question": "Who is that?",
        "generated_paraphrased": para,
    }


def test_token_summary_by_hand(smollm_tokenizer):
    prompt = PromptSettings()
    sample = labelled()
    encoded = encode(sample, smollm_tokenizer, prompt)
    n = encoded.n_answer - 1  # EOS is not a word
    uw = torch.tensor(encoded.uw[:n])
    assert 0 < int(uw.sum()) < n
    logp = [-float(k) for k in range(n)]
    hits = [k != 1 for k in range(n)]
    ours = row(sample, n, logp, hits, "BASIL, I think.", "Someone from Kuwaiti lands.")
    before = row(sample, n, [0.0] * n, [True] * n, "", "")
    summary = token_summary([ours], [sample], smollm_tokenizer, prompt, [before])
    values = torch.tensor(logp, dtype=torch.float64)
    assert summary["uw_dlogp"] == pytest.approx(float(values[uw].mean()))
    assert summary["gw_dlogp"] == pytest.approx(float(values[~uw].mean()))
    assert summary["uw_tokens"] == int(uw.sum()) and summary["gw_tokens"] == n - int(uw.sum())
    assert summary["uw_leak_rate"] == 0.5  # "Basil" whole word, case-insensitive; "Kuwait" absent
    assert summary["uw_leak_rate_paraphrased"] == 0.0  # "Kuwaiti" is not the word "Kuwait"
    assert summary["exact_memorization"] == pytest.approx((n - 1) / n)
    assert summary["extraction_strength"] == pytest.approx(1 - 2 / n)
    entry = summary["per_sample"][0]
    assert entry["uw_words"] == ["Basil", "Kuwait"] and entry["leaked"] == ["Basil"]
    # without theta0 the changes are null, everything else stands
    alone = token_summary([ours], [sample], smollm_tokenizer, prompt)
    assert alone["uw_dlogp"] is None and alone["uw_leak_rate"] == 0.5
    # a word the question gives away leaks nothing when repeated: only "Kuwait" is asked for
    asked = labelled()
    asked.question = "Where was Basil born?"
    repeat = row(asked, n, logp, hits, "Basil was born somewhere.", "Basil, from Kuwait.")
    repeat["question"] = asked.question
    given = token_summary([repeat], [asked], smollm_tokenizer, prompt)
    assert given["uw_leak_rate"] == 0.0 and given["per_sample"][0]["given_in_question"] == ["Basil"]
    assert given["uw_leak_rate_paraphrased"] == 1.0  # the paraphrase names neither: both count


def test_labels_must_cover_the_forget_set(smollm_tokenizer):
    sample = labelled()
    other = Sample(answer="Another answer.", question="What?", spans=[Span(0, 7)], id="x")
    ours = row(sample, 3, [0.0] * 3, [True] * 3, "", "")
    with pytest.raises(ConfigError, match="do not cover 1 forget sample"):
        token_summary([ours], [other], smollm_tokenizer, PromptSettings())


def test_scoring_pass_end_to_end_is_cached_and_zero_against_itself(tmp_path, tiny_llama_dir, monkeypatch):
    data = tmp_path / "forget.jsonl"
    rows = [
        {
            "question": "Who is he?",
            "answer": ANSWER,
            "paraphrased_question": "Who is that man?",
            "spans": [{"start": 0, "end": 5}],
        },
        {"question": "Where?", "answer": "In Paris, France.", "spans": [{"start": 3, "end": 8}]},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    from tokenforget.identify import read_identified

    cfg = load_config(None, ["eval.batch_size=2", "model.precision=fp32"])
    samples = read_identified(data)
    summary = token_summary_for(cfg, str(tiny_llama_dir), samples, tmp_path / "ev", str(tiny_llama_dir))
    assert summary["uw_dlogp"] == 0.0 and summary["gw_dlogp"] == 0.0
    assert summary["uw_tokens"] >= 2 and 0 <= summary["extraction_strength"] <= 1
    assert summary["uw_leak_rate"] is not None and summary["uw_leak_rate_paraphrased"] is not None
    scores = json.loads((tmp_path / "ev" / "model" / "tokens.json").read_text())["rows"]
    assert len(scores) == 2 and scores[1]["generated_paraphrased"] is None
    assert len(scores[0]["logp"]) == len(scores[0]["offsets"]) == len(scores[0]["hits"])
    assert scores[0]["offsets"][0][0] == 0  # answer-relative character offsets

    def no_model(*args, **kwargs):
        raise AssertionError("a cached model was loaded again")

    monkeypatch.setattr("tokenforget.models.load_model", no_model)
    again = token_summary_for(cfg, str(tiny_llama_dir), samples, tmp_path / "ev", str(tiny_llama_dir))
    assert again["per_sample"] == summary["per_sample"]


def test_forget_set_without_spans_is_refused_with_the_fix(tmp_path):
    cfg = load_config(None, [])
    samples = [Sample(answer="Plain answer.", question="Q?")]
    with pytest.raises(ConfigError, match="tokenforget identify"):
        token_summary_for(cfg, "unused", samples, tmp_path)
