"""`eval tofu` on a tiny model: batched scoring is exact, logs are in the published layout, resume works."""

import json
import math

import pytest
import torch

from tokenforget.config import ModelSettings, PromptSettings, load_config
from tokenforget.data import Sample, encode, tofu_mini
from tokenforget.evaluate.tofu import LOG_FILES, read_tofu_logs, summarize
from tokenforget.evaluate.tofu_run import evaluate_tofu
from tokenforget.forward.scoring import answer_losses
from tokenforget.models import load_model


def direct_loss(model, tok, question, answer, include_eos=True):
    enc = encode(Sample(answer=answer, question=question), tok, PromptSettings())
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].log_softmax(-1)
    end = len(enc.input_ids) if include_eos else len(enc.input_ids) - 1
    nll = [-logp[t - 1, enc.input_ids[t]].item() for t in range(enc.prompt_len, end)]
    return sum(nll), len(nll)


def test_greedy_generation_drops_finished_rows_and_matches_model_generate(smollm_dir):
    """Same tokens as `model.generate` one prompt at a time, while rows end at different steps."""
    from tokenforget.forward.generation import greedy_tokens

    model, tok, _ = load_model(ModelSettings(precision="fp32"), str(smollm_dir))
    questions = [
        "What is 2+2? Reply with the number only.",
        "Write a long story about a dragon who learns to read.",
        "What is the capital of France?",
    ]
    prompts = [encode(Sample(answer="x", question=q), tok, PromptSettings()).prompt_ids for q in questions]
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    expected = []
    for p in prompts:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([p]), max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id
            )[0, len(p) :].tolist()
        expected.append(out[: out.index(tok.eos_token_id) + 1] if tok.eos_token_id in out else out)
    lengths = [len(r) for r in expected]
    assert min(lengths) < 12 and len(set(lengths)) == 3  # rows leave the batch at different steps
    assert greedy_tokens(model, prompts, tok.pad_token_id, tok.eos_token_id, 12, "cpu") == expected


def test_one_prompt_pass_for_scoring_and_generation_equals_two_passes(smollm_dir):
    """On SmolLM2 (forward only), whose greedy answers are real text, not a random model's EOS."""
    from tokenforget.forward.generation import answer_questions
    from tokenforget.forward.scoring import answer_losses_and_greedy

    model, tok, precision = load_model(ModelSettings(precision="fp32"), str(smollm_dir))
    rows = tofu_mini().eval_forget[:5]
    pairs = [(s.question, a) for s in rows for a in [s.answer, *s.meta["perturbed_answer"][:2]]]
    asked = rows[:4] + rows[:1]  # one question scored but not asked, one asked twice
    losses, answers = answer_losses_and_greedy(
        model, tok, pairs, [s.question for s in asked], PromptSettings(), precision, True, 4, 6, 2
    )
    alone = answer_losses(model, tok, pairs, PromptSettings(), precision, True, batch_size=4)
    assert answers == answer_questions(model, tok, asked, PromptSettings(), precision, 6, batch_size=2)
    assert losses.keys() == alone.keys()
    for pair, loss in alone.items():
        assert torch.allclose(losses[pair].token_nll, loss.token_nll, atol=1e-5)
        assert torch.equal(losses[pair].hits, loss.hits)
    para = [(s.meta["paraphrased_question"], s.answer) for s in rows[:3]]
    _, with_para = answer_losses_and_greedy(
        model, tok, pairs, [s.question for s in asked], PromptSettings(), precision, True, 4, 6, 2, para
    )
    as_questions = [Sample(answer=a, question=q) for q, a in para]
    assert all(len(text.split()) >= 2 for text in with_para)
    assert with_para[: len(asked)] == answers  # generation-only prompts join without changing the rest
    assert with_para[len(asked) :] == answer_questions(
        model, tok, as_questions, PromptSettings(), precision, 6, batch_size=2
    )
    with pytest.raises(ValueError, match="no scored pair"):
        answer_losses_and_greedy(
            model, tok, pairs, ["never scored?"], PromptSettings(), precision, True, 4, 6, 2
        )


def test_the_pass_split_over_worker_processes_equals_one_process(smollm_dir, monkeypatch):
    """Each question's pairs and answers go to one forked worker; results come back in order."""
    from tokenforget.forward import workers
    from tokenforget.forward.scoring import answer_losses_and_greedy

    model, tok, precision = load_model(ModelSettings(precision="fp32"), str(smollm_dir))
    rows = tofu_mini().eval_forget[:6]
    pairs = [(s.question, a) for s in rows for a in [s.answer, *s.meta["perturbed_answer"][:2]]]
    asked = [s.question for s in rows[:5] + rows[:1]]  # one scored but not asked, one asked twice
    para = [(s.meta["paraphrased_question"], s.answer) for s in rows[:3]]
    args = (model, tok, pairs, asked, PromptSettings(), precision, True, 4, 6, 2, para)
    shares, real = [], workers.run_in_workers

    def counted(jobs, bar):
        shares.append(len(jobs))
        return real(jobs, bar)

    monkeypatch.setattr(workers, "run_in_workers", counted)
    losses, answers = answer_losses_and_greedy(*args, workers=2)
    assert shares == [2]
    one_losses, one_answers = answer_losses_and_greedy(*args, workers=1)
    assert answers == one_answers and len(answers) == len(asked) + len(para)
    assert losses.keys() == one_losses.keys()
    for pair, loss in one_losses.items():
        # float32 rounding: other batches, one thread instead of two (a mix-up would be off by >0.1)
        assert torch.allclose(losses[pair].token_nll, loss.token_nll, rtol=0, atol=1e-4)
        assert torch.equal(losses[pair].hits, loss.hits)


@pytest.mark.parametrize("include_eos", [True, False])
def test_batched_padded_scoring_equals_one_sequence_at_a_time(tiny_llama_dir, include_eos):
    model, tok, precision = load_model(ModelSettings(precision="fp32"), str(tiny_llama_dir))
    rows = tofu_mini().eval_forget[:3]
    pairs = [(s.question, a) for s in rows for a in [s.answer, *s.meta["perturbed_answer"]]]
    pairs.append(pairs[0])  # a duplicate is scored once
    losses = answer_losses(model, tok, pairs, PromptSettings(), precision, include_eos, batch_size=4)
    assert len(losses) == len(pairs) - 1
    for q, a in pairs:
        total, count = direct_loss(model, tok, q, a, include_eos)
        assert losses[(q, a)].tokens == count
        assert losses[(q, a)].total == pytest.approx(total, rel=1e-4)


def test_eval_tofu_writes_published_logs_and_resumes(tmp_path, tiny_llama_dir, monkeypatch):
    from tokenforget.forward import generation

    overrides = ["model.precision=fp32", "eval.retain_rows=4", "eval.batch_size=16"]
    cfg = load_config(overrides=overrides)
    bench = tofu_mini()
    bench.eval_real_authors = bench.eval_real_authors[:6]  # keep the tiny run short
    bench.eval_world_facts = bench.eval_world_facts[:6]
    bench.eval_forget = bench.eval_forget[:8]
    summary = evaluate_tofu(cfg, str(tiny_llama_dir), bench, tmp_path / "eval")
    for name in LOG_FILES.values():
        log = json.loads((tmp_path / "eval" / name).read_text())
        assert set(log["avg_gt_loss"]) == {str(i) for i in range(len(log["avg_gt_loss"]))}
        for i in log["avg_gt_loss"]:
            assert log["avg_gt_loss"][i] == pytest.approx(log["gt_loss"][i] / log["num_token_gt"][i])
            pert = log["average_perturb_loss"][i]
            assert log["truth_ratio"][i] == pytest.approx(
                math.exp(log["avg_paraphrased_loss"][i] - sum(pert) / len(pert))
            )
            assert len(log["generated_text"][i]) == 3
    forget = json.loads((tmp_path / "eval" / "eval_log_forget.json").read_text())
    assert len(forget["avg_gt_loss"]) == 8 and len(forget["average_perturb_loss"]["0"]) == 5
    ra = json.loads((tmp_path / "eval" / "eval_real_author_wo_options.json").read_text())
    assert ra["avg_paraphrased_loss"] == ra["avg_gt_loss"]  # no paraphrase: the answer is the base
    assert summary == {
        **summarize(read_tofu_logs(tmp_path / "eval")),
        "eval_seconds": summary["eval_seconds"],
        "profile": "tofu-mini",
    }
    assert list(summary["eval_seconds"]) == ["+".join(LOG_FILES)]  # a small eval: one pass

    # the same pass left the token-level stage's rows: equal to that stage's own passes
    from tokenforget.evaluate.tokens import TOKENS_FILE, score_model, tokens_stamp

    cached = json.loads((tmp_path / "eval" / TOKENS_FILE).read_text())
    assert cached["stamp"] == tokens_stamp(cfg, str(tiny_llama_dir), bench.eval_forget)
    model, tok, precision = load_model(ModelSettings(precision="fp32"), str(tiny_llama_dir))
    own = score_model(model, tok, bench.eval_forget, cfg.prompt, precision, 48, 16, None, 96)
    assert [r["generated_paraphrased"] for r in cached["rows"]] == [r["generated_paraphrased"] for r in own]
    assert all(r["generated_paraphrased"] is not None for r in own)
    for mine, theirs in zip(cached["rows"], own, strict=True):
        assert mine.keys() == theirs.keys()
        assert all(mine[k] == theirs[k] for k in mine if k != "logp")
        assert mine["logp"] == pytest.approx(theirs["logp"], abs=1e-4)
    (tmp_path / "eval" / "eval_log.json").unlink()  # as if killed before the retain split finished
    again = evaluate_tofu(cfg, str(tiny_llama_dir), bench, tmp_path / "eval")
    assert again["model_utility"] == pytest.approx(summary["model_utility"])
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["eval_seconds"].keys() == {
        "+".join(LOG_FILES),
        "retain",  # only the missing split ran again
    }

    with_retain = evaluate_tofu(cfg, str(tiny_llama_dir), bench, tmp_path / "eval", tmp_path / "eval")
    assert with_retain["forget_quality"] == pytest.approx(1.0)  # the same model as its own retain model

    # logs written before a setting existed stay valid while it is at its default; another value redoes them
    stamp_file = tmp_path / "eval" / "eval_settings.json"
    stamp = json.loads(stamp_file.read_text())
    del stamp["eval"]["max_new_tokens"]
    stamp_file.write_text(json.dumps(stamp))
    written = {name: (tmp_path / "eval" / name).stat().st_mtime_ns for name in LOG_FILES.values()}
    evaluate_tofu(cfg, str(tiny_llama_dir), bench, tmp_path / "eval")
    assert written == {name: (tmp_path / "eval" / name).stat().st_mtime_ns for name in LOG_FILES.values()}
    # one process: the recording below sees what a forked worker generates only in that worker
    shorter = load_config(overrides=[*overrides, "eval.max_new_tokens=3", "eval.workers=1"])
    generated: list[list[int]] = []
    greedy_tokens = generation.greedy_tokens

    def recording(*args, **kwargs):
        rows = greedy_tokens(*args, **kwargs)
        generated.extend(rows)
        return rows

    monkeypatch.setattr(generation, "greedy_tokens", recording)
    short = evaluate_tofu(shorter, str(tiny_llama_dir), bench, tmp_path / "short")
    assert set(short["eval_seconds"]) == {"+".join(LOG_FILES)}
    # the random model never says EOS (it repeats a newline, decoded as ''): every answer runs to the cap
    # (8 forget questions and their 8 paraphrases, 4 retain, 6 real authors, 6 world facts)
    assert len(generated) == 8 + 8 + 4 + 6 + 6 and {len(row) for row in generated} == {3}

    # small generation batches: one pass per split, and the same logs as the all-splits pass
    split_by_split = load_config(overrides=[*overrides, "eval.generation_batch_size=2"])
    apart = evaluate_tofu(split_by_split, str(tiny_llama_dir), bench, tmp_path / "apart")
    assert set(apart["eval_seconds"]) == set(LOG_FILES)
    for name in LOG_FILES.values():
        together = json.loads((tmp_path / "eval" / name).read_text())
        alone = json.loads((tmp_path / "apart" / name).read_text())
        assert alone["generated_text"] == together["generated_text"]
        assert alone["num_token_perturb"] == together["num_token_perturb"]
        for field in ("avg_gt_loss", "avg_paraphrased_loss", "truth_ratio"):
            assert list(alone[field].values()) == pytest.approx(list(together[field].values()), rel=1e-4)
    # other settings in the same folder: everything again, and no time of the old settings kept
    redone = evaluate_tofu(split_by_split, str(tiny_llama_dir), bench, tmp_path / "eval")
    assert set(redone["eval_seconds"]) == set(LOG_FILES)


def test_eval_tofu_token_rows_equal_the_token_stage_own_passes_on_smollm2(tmp_path, smollm_dir):
    """tokens.json, left by the TOFU pass, holds what the token-level stage would compute itself: the
    same greedy answers to the original and the paraphrased questions (real, non-empty answers of a
    pretrained model) and the same per-token log-probabilities."""
    from tokenforget.evaluate.tokens import TOKENS_FILE, score_model

    cfg = load_config(overrides=["model.precision=fp32", "eval.retain_rows=2", "eval.utility_rows=2"])
    bench = tofu_mini()
    bench.eval_forget = bench.eval_forget[:4]
    evaluate_tofu(cfg, str(smollm_dir), bench, tmp_path / "eval")
    cached = json.loads((tmp_path / "eval" / TOKENS_FILE).read_text())["rows"]
    model, tok, precision = load_model(ModelSettings(precision="fp32"), str(smollm_dir))
    own = score_model(model, tok, bench.eval_forget, cfg.prompt, precision, 48, 16, None, 96)
    assert all(r["generated"] and r["generated_paraphrased"] for r in own)
    assert [r["generated"] for r in cached] == [r["generated"] for r in own]
    assert [r["generated_paraphrased"] for r in cached] == [r["generated_paraphrased"] for r in own]
    for mine, theirs in zip(cached, own, strict=True):
        assert mine["offsets"] == theirs["offsets"] and mine["hits"] == theirs["hits"]
        assert mine["logp"] == pytest.approx(theirs["logp"], abs=1e-4)


def test_eval_logs_are_redone_for_other_weights_or_precision_and_kept_from_older_stamps(
    tmp_path, tiny_llama_dir
):
    import os
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model_dir)  # its files' times change below
    bench = tofu_mini()
    bench.retain = bench.retain[:2]
    out = tmp_path / "eval"
    log = out / LOG_FILES["retain"]
    overrides = ["eval.retain_rows=2", "eval.workers=1"]

    def evaluate(precision: str) -> int:
        cfg = load_config(overrides=[*overrides, f"model.precision={precision}"])
        evaluate_tofu(cfg, str(model_dir), bench, out, splits=("retain",))
        return log.stat().st_mtime_ns

    first = evaluate("fp32")
    stamp = json.loads((out / "eval_settings.json").read_text())
    assert stamp["precision"] == "float32" and "model.safetensors" in stamp["model_identity"]
    # a stamp written before these keys existed keeps its logs
    older = {k: v for k, v in stamp.items() if k not in ("precision", "model_identity")}
    (out / "eval_settings.json").write_text(json.dumps(older))
    assert evaluate("fp32") == first
    # another precision (what `auto` resolves to on another CPU) redoes them
    second = evaluate("bf16-autocast")
    assert second != first
    assert json.loads((out / "eval_settings.json").read_text())["precision"] == "float32+autocast-bfloat16"
    # so do other weights at the same path (a model trained again in place)
    weights = model_dir / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    third = evaluate("bf16-autocast")
    assert third != second
    # the same weights moved elsewhere keep their logs
    model_dir = model_dir.rename(tmp_path / "moved")
    assert evaluate("bf16-autocast") == third
