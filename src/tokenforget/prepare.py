"""`tokenforget prepare`: make the target and retain models of a benchmark, once, resumably.

TOFU-mini (default recipe `independent`, TOFU's protocol): target and retain models are both
trained from the base model, the target on the whole world and the retain model on the retain set.
`nested` (ours, the default before issue 21): the retain model is the base model fine-tuned on the
retain set; the target is the retain model fine-tuned further on the forget set with retain replay,
so the two differ in the forget authors' facts only. Answer-only loss throughout.

Everything lands in `$TOKENFORGET_CACHE/prepared/<benchmark>-<hash>/`, where the hash covers the
base model, the data, the prompt format and every training setting, so a changed setting never
reuses a stale model. Each model folder gets a manifest of file hashes written last: a folder
without a valid manifest is an unfinished stage and is redone (from its checkpoint).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokenforget.artifacts import Stamp
from tokenforget.config import Config
from tokenforget.cpu import machine
from tokenforget.data.benchmarks import QABenchmark, load_benchmark
from tokenforget.data.encode import encode
from tokenforget.data.records import Sample
from tokenforget.models import (
    cache_dir,
    load_model,
    model_identity,
    precision_label,
    resolve_model,
    save_model,
    verify_manifest,
    wrap_lora,
    write_manifest,
)
from tokenforget.progress import console
from tokenforget.version import __version__

REPORT_SETS = ("forget", "real_authors", "world_facts")


@dataclass
class Prepared:
    folder: Path
    retain: Path
    target: Path
    report: dict[str, Any]


def _fingerprint(cfg: Config, bench: QABenchmark, base: str) -> str:
    base_id = model_identity(base)
    recipe = cfg.prepare.model_dump(exclude={"checkpoint_every", "eval_max_new_tokens", "eval_batch_size"})
    payload = {
        "base": base_id,
        "recipe": recipe,
        "prompt": cfg.prompt.model_dump(),
        # "auto" means bf16 on a GPU and fp32 on most CPUs: the resolved dtypes are what shaped the weights
        "precision": precision_label(cfg.model),
        "data": [[s.question, s.answer] for s in bench.world],
    }
    return Stamp("prepared", payload).key[:12]  # names the world's folder, which resumes itself


def other_machine_note(made_on: dict[str, Any] | None, here: dict[str, Any]) -> str | None:
    """What to tell a user whose cached world was made on another CPU (model name or arithmetic
    instruction sets differ); None when it was made on this kind of machine or the world predates
    the record. The same settings on two CPUs made two targets (model utility 0.324 and 0.245)."""
    if not made_on or (made_on.get("cpu"), made_on.get("isa")) == (here.get("cpu"), here.get("isa")):
        return None

    def name(m: dict[str, Any]) -> str:
        return f"{m.get('cpu') or 'an unnamed CPU'} ({', '.join(m.get('isa') or []) or 'no avx2'})"

    return (
        f"this world was made on {name(made_on)}, not on this machine's {name(here)}. It is reused "
        "as it is: runs from it compare with one another, but not cell by cell with a world made "
        "here from the same settings, whose target can differ (other bf16 / fp32 kernels). To make "
        "this machine's own, point TOKENFORGET_CACHE at another folder."
    )


def prepared_folder(cfg: Config, bench: QABenchmark | None = None) -> Path:
    bench = bench or load_benchmark(cfg)
    base = resolve_model(cfg.model.name)
    return cache_dir() / "prepared" / f"{bench.name}-{_fingerprint(cfg, bench, base)}"


def replay_samples(retain: list[Sample], count: int, seed: int) -> list[Sample]:
    """A seeded sample of retain rows (with repetition only if count > len(retain))."""
    rng = random.Random(seed)
    picked: list[Sample] = []
    while len(picked) < count:
        picked.extend(rng.sample(retain, min(len(retain), count - len(picked))))
    return picked


def train_stage(
    cfg: Config, start_from: str, samples: list[Sample], epochs: float, out: Path, work: Path, label: str
) -> dict[str, Any]:
    """Fine-tune start_from on samples; write a merged save_pretrained folder with a manifest."""
    from tokenforget.train import FitSettings, fit_nll  # the training stack, only when training

    model, tokenizer, precision = load_model(cfg.model, start_from)
    if cfg.prepare.lora is not None:
        model = wrap_lora(model, cfg.prepare.lora, cfg.prepare.seed)
    encoded = [encode(s, tokenizer, cfg.prompt, cfg.data.max_length) for s in samples]
    settings = FitSettings(
        epochs=epochs,
        lr=cfg.prepare.lr,
        batch_size=cfg.prepare.batch_size,
        micro_batch_size=cfg.prepare.micro_batch_size,
        weight_decay=cfg.prepare.weight_decay,
        warmup_ratio=cfg.prepare.warmup_ratio,
        seed=cfg.prepare.seed,
        checkpoint_every=cfg.prepare.checkpoint_every,
    )
    result = fit_nll(model, encoded, tokenizer.pad_token_id, precision, settings, work / "checkpoint", label)
    if out.exists():
        shutil.rmtree(out)
    save_model(model, tokenizer, out, merge_lora=True)
    log = {
        "stage": label,
        "samples": len(samples),
        "epochs": epochs,
        "steps": result.steps,
        "answer_tokens": result.tokens,
        "seconds_this_session": round(result.seconds, 1),
        "final_loss": result.final_loss,
        "losses": result.losses,
        "precision": precision.label,
    }
    (out / "train_log.json").write_text(json.dumps(log, indent=2))
    write_manifest(out, {"prepared_by": f"tokenforget {__version__}", "stage": label})
    shutil.rmtree(work, ignore_errors=True)
    return log


def _rouge_report(cfg: Config, model_dir: str, bench: QABenchmark) -> dict[str, Any]:
    from tokenforget.evaluate import answer_questions, mean, rouge_recall

    model, tokenizer, precision = load_model(cfg.model, model_dir)
    sets = bench.eval_sets()
    out: dict[str, Any] = {}
    for name in REPORT_SETS:
        samples = sets[name]
        answers = answer_questions(
            model,
            tokenizer,
            samples,
            cfg.prompt,
            precision,
            cfg.prepare.eval_max_new_tokens,
            cfg.prepare.eval_batch_size,
        )
        scores = rouge_recall(answers, [s.answer for s in samples])
        out[name] = {
            "rougeL_recall": mean([s["rougeL_recall"] for s in scores]),
            "rouge1_recall": mean([s["rouge1_recall"] for s in scores]),
            "examples": [
                {"question": s.question, "answer": s.answer, "generated": a}
                for s, a in zip(samples[:3], answers[:3], strict=False)
            ],
        }
    return out


def prepare(cfg: Config, rouge_check: bool = True) -> Prepared:
    """Make (or find) the target and retain models of cfg.run.benchmark; see the module doc.

    rouge_check=False skips the greedy ROUGE check of the base, retain and target models (the main
    job evaluates the retain and target models fully right after)."""
    bench = load_benchmark(cfg)
    base = resolve_model(cfg.model.name)
    folder = prepared_folder(cfg, bench)
    folder.mkdir(parents=True, exist_ok=True)
    recipe_file = folder / "recipe.json"
    if not recipe_file.is_file():
        recipe_file.write_text(
            json.dumps(
                {
                    "benchmark": bench.name,
                    "base_model": cfg.model.name,
                    "base_path": base,
                    "prepare": cfg.prepare.model_dump(),
                    "prompt": cfg.prompt.model_dump(),
                    "forget": len(bench.forget),
                    "retain": len(bench.retain),
                    "tokenforget": __version__,
                    "torch": torch.__version__,
                    "machine": machine(),  # the same settings on another CPU make another world
                },
                indent=2,
            )
        )
    else:
        note = other_machine_note(json.loads(recipe_file.read_text()).get("machine"), machine())
        if note:
            console.print(f"[yellow]prepare[/] {note}", highlight=False)
    report_file = folder / "report.json"
    report: dict[str, Any] = json.loads(report_file.read_text()) if report_file.is_file() else {}
    report.setdefault("seconds", {})
    retain_dir, target_dir = folder / "retain", folder / "target"
    p = cfg.prepare
    stages = [("retain", retain_dir, base, bench.retain, p.retain_epochs)]
    if p.recipe == "nested":
        replay = replay_samples(bench.retain, round(p.replay_ratio * len(bench.forget)), p.seed)
        stages.append(("target", target_dir, str(retain_dir), bench.forget + replay, p.target_epochs))
    else:
        stages.append(("target", target_dir, base, bench.world, p.target_epochs))
    for name, out, start_from, samples, epochs in stages:
        if verify_manifest(out):
            console.print(f"[green]prepare[/] {name} model: cached in {out}")
            continue
        console.print(f"[bold]prepare[/] {name} model: {len(samples)} samples x {epochs} epochs -> {out}")
        started = time.perf_counter()
        train_stage(cfg, start_from, samples, epochs, out, folder / f"work-{name}", f"{name}")
        report["seconds"][f"train_{name}"] = report["seconds"].get(f"train_{name}", 0) + round(
            time.perf_counter() - started, 1
        )
        report_file.write_text(json.dumps(report, indent=2))
    rouge = report.setdefault("rouge", {})
    for name, model_dir in (("base", base), ("retain", str(retain_dir)), ("target", str(target_dir))):
        if name in rouge or not rouge_check:
            continue
        console.print(f"[bold]prepare[/] greedy ROUGE check of the {name} model")
        started = time.perf_counter()
        rouge[name] = _rouge_report(cfg, model_dir, bench)
        report["seconds"][f"rouge_{name}"] = round(time.perf_counter() - started, 1)
        report_file.write_text(json.dumps(report, indent=2))  # partial results survive a crash
    return Prepared(folder=folder, retain=retain_dir, target=target_dir, report=report)


def rouge_table(report: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(model, {eval set: ROUGE-L recall}) rows for printing."""
    return [
        (name, {s: round(v[s]["rougeL_recall"], 4) for s in REPORT_SETS if s in v})
        for name, v in report.get("rouge", {}).items()
    ]
