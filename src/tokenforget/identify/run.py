"""`tokenforget identify`: label a forget set with a chosen identifier and write `identified.jsonl`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tokenforget.artifacts import Codec, Stamp, cached
from tokenforget.config import Config
from tokenforget.data.identified import read_identified, write_identified
from tokenforget.data.records import Sample
from tokenforget.errors import ConfigError
from tokenforget.identify.identifiers import combine, drop_question_words, from_spans
from tokenforget.identify.registry import IDENTIFIERS, BuildContext, Identifier
from tokenforget.identify.score import jaccard


def build(cfg: Config, retain: list[Sample] | None = None, out: Path | None = None) -> Identifier:
    """The identifier the config names, with its models loaded."""
    kind = IDENTIFIERS[cfg.identify.method]
    if kind.build is None:
        raise ConfigError(f"identify.method {kind.name!r} has no identifier to build")  # spans/union
    return kind.build(cfg.identify, BuildContext(cfg, retain, out))


def identify_stamp(cfg: Config, samples: list[Sample]) -> Stamp | None:
    """What a model-based identifier's labels depend on, or None (not cached): the identify and
    prompt settings, the precision, the identity of every model the identifier reads, the samples
    and the tool version."""
    from tokenforget.models import model_identity, resolve_model
    from tokenforget.version import __version__

    i = cfg.identify
    kind = IDENTIFIERS[i.method]
    if kind.models is None or not samples:
        return None
    used = kind.models(i, cfg)
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
    return Stamp("identified", payload)


def _write_labels(path: Path, value: tuple[list[Sample], dict[str, Any]], stamp: Stamp) -> None:
    write_identified(path, value[0], stamp.payload["identify"]["method"], value[1])


def _read_labels(path: Path, stamp: Stamp) -> tuple[list[Sample], dict[str, Any]] | None:
    labelled = read_identified(path)  # the file is named by the stamp's key
    return (labelled, labelled[0].meta["settings"]) if labelled else None  # settings: on every row


LABELS: Codec[tuple[list[Sample], dict[str, Any]]] = Codec(_write_labels, _read_labels)


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

    def label() -> tuple[list[Sample], dict[str, Any]]:
        identifier = build(cfg, retain, out)
        settings = identifier.settings()
        runs = getattr(i, "runs", 1)
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
        return labelled, settings

    if i.method == "spans":
        labelled = from_spans(samples)
    elif i.method in ("union", "intersection"):
        if inputs is None:
            raise ConfigError(f"{i.method} combines two identified files: --first A.jsonl --second B.jsonl")
        labelled = combine(read_identified(inputs[0]), read_identified(inputs[1]), i.method)
        settings = {"first": str(inputs[0]), "second": str(inputs[1])}
    elif (stamp := identify_stamp(cfg, samples)) is not None:
        path = stamp.shared_path(".jsonl", prefix=f"{i.method}-")
        labelled, settings = cached(path, stamp, label, LABELS, on_hit=lambda p: report.update(cached=str(p)))
    else:
        labelled, settings = label()
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
