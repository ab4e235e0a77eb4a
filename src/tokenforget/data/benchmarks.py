"""Benchmark data: TOFU (local folder or hub), the bundled TOFU-mini, MUSE-News (local folder)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tokenforget.config import Config
from tokenforget.data.records import Sample, read_json_file, read_samples, samples_from_rows
from tokenforget.errors import DataError, DataIssue

TOFU_HUB = "locuslab/TOFU"
TOFU_MINI_FORGET = 40  # forget01 = the last 2 of forget10's 20 authors


@dataclass
class QABenchmark:
    """A world of QA facts split into forget and retain, plus evaluation sets.

    Eval sets keep TOFU's extra fields in `Sample.meta` (`paraphrased_answer`, `perturbed_answer`,
    `paraphrased_question`). real_authors/world_facts have perturbed answers but no paraphrase.
    """

    name: str
    forget: list[Sample]
    retain: list[Sample]
    eval_forget: list[Sample]
    eval_retain: list[Sample]
    eval_real_authors: list[Sample]
    eval_world_facts: list[Sample]

    @property
    def world(self) -> list[Sample]:
        return self.retain + self.forget

    def eval_sets(self) -> dict[str, list[Sample]]:
        return {
            "forget": self.eval_forget,
            "retain": self.eval_retain,
            "real_authors": self.eval_real_authors,
            "world_facts": self.eval_world_facts,
        }


def load_tofu_split(split: str, source: str = TOFU_HUB) -> list[Sample]:
    """One TOFU split (`forget01`, `retain_perturbed`, ...) from a local folder or the hub."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        path = folder / f"{split}.json"
        if not path.is_file():
            available = sorted(p.stem for p in folder.glob("*.json"))
            raise DataError(
                [
                    DataIssue(
                        str(path),
                        None,
                        None,
                        f"TOFU split {split!r} is not in {folder}",
                        f"use one of {available} or a folder in the published layout",
                    )
                ]
            )
        samples = read_samples(path)
    else:
        try:
            import datasets

            rows = datasets.load_dataset(source, split, split="train")
        except Exception as exc:  # offline, unknown name: say what to do instead
            raise DataError(
                [
                    DataIssue(
                        source,
                        None,
                        None,
                        f"cannot load TOFU split {split!r} from the hub ({exc})",
                        "pass a local folder in the published layout: --set data.tofu=DIR",
                    )
                ]
            ) from exc
        samples = samples_from_rows([(k + 1, dict(r)) for k, r in enumerate(rows)], f"{source}:{split}")
    for k, sample in enumerate(samples):
        sample.id = f"{split}:{k}"
    return samples


def tofu_splits(forget_split: str = "forget01") -> dict[str, str]:
    """The TOFU split behind each part of the benchmark: forget = forgetXX, retain = retain(100-XX)."""
    percent = int(forget_split.removeprefix("forget"))
    return {
        "forget": forget_split,
        "retain": f"retain{100 - percent:02d}",
        "eval_forget": f"{forget_split}_perturbed",
        "eval_retain": "retain_perturbed",
        "eval_real_authors": "real_authors_perturbed",
        "eval_world_facts": "world_facts_perturbed",
    }


def tofu(source: str = TOFU_HUB, forget_split: str = "forget01") -> QABenchmark:
    """Full TOFU: the 200-author world; forget = forgetXX, retain = retain(100-XX)."""
    parts = {part: load_tofu_split(split, source) for part, split in tofu_splits(forget_split).items()}
    return QABenchmark(name=f"tofu-{forget_split}", **parts)


def load_benchmark(cfg: Config) -> QABenchmark:
    """The benchmark a config names: `run.benchmark` (tofu-mini, or tofu with `run.tofu_split`)."""
    if cfg.run.benchmark == "tofu-mini":
        return tofu_mini()
    return tofu(cfg.data.tofu, cfg.run.tofu_split)


def bundled_file(name: str) -> Any:
    """The bundled TOFU-mini file `name`.json (a Traversable; a real path in an installed package)."""
    return resources.files("tokenforget") / "benchmark_data" / "tofu_mini" / f"{name}.json"


def _bundled(name: str) -> list[Sample]:
    with resources.as_file(bundled_file(name)) as path:
        samples = read_samples(path)
    for k, sample in enumerate(samples):
        sample.id = f"{name.removesuffix('_perturbed')}:{k}"
    return samples


def tofu_mini(source: str | None = None) -> QABenchmark:
    """TOFU-mini: world = the 20 authors of forget10 (400 QA), forget = forget01 (the last 2
    authors, 40 QA), retain = the other 18 (360 QA). Bundled with the package; `source` reads the
    same files from a TOFU folder instead."""
    if source is None:
        world = _bundled("forget10_perturbed")
        real_authors = _bundled("real_authors_perturbed")
        world_facts = _bundled("world_facts_perturbed")
    else:
        world = load_tofu_split("forget10_perturbed", source)
        real_authors = load_tofu_split("real_authors_perturbed", source)
        world_facts = load_tofu_split("world_facts_perturbed", source)
    forget = world[-TOFU_MINI_FORGET:]
    retain = world[:-TOFU_MINI_FORGET]
    return QABenchmark(
        name="tofu-mini",
        forget=[_plain(s) for s in forget],
        retain=[_plain(s) for s in retain],
        eval_forget=forget,
        eval_retain=retain,
        eval_real_authors=real_authors,
        eval_world_facts=world_facts,
    )


def _plain(sample: Sample) -> Sample:
    """The training view of an eval row: question and answer only."""
    return Sample(answer=sample.answer, question=sample.question, spans=sample.spans, id=sample.id)


# ----------------------------------------------------------------------------- MUSE-News


@dataclass
class MuseNews:
    verbmem: list[dict[str, str]]  # {prompt, gt}
    knowmem_forget: list[Sample]
    knowmem_retain: list[Sample]
    knowmem_forget_icl: list[Sample]
    knowmem_retain_icl: list[Sample]
    privleak: dict[str, list[str]]  # forget / retain / holdout texts
    forget_corpus: str


def _json_file(path: Path) -> Any:
    return read_json_file(path, "give a folder in MUSE's News layout (knowmem/, verbmem/, privleak/, raw/)")


def _string_list(path: Path) -> list[str]:
    items = _json_file(path)
    bad = [k for k, item in enumerate(items) if not isinstance(item, str) or not item.strip()]
    if not isinstance(items, list) or bad:
        raise DataError(
            [
                DataIssue(
                    str(path),
                    (bad[0] + 1) if bad else None,
                    None,
                    "must be a JSON list of non-empty strings",
                    "restore the file",
                )
            ]
        )
    return items


def muse_news(folder: str | Path) -> MuseNews:
    """MUSE-News from a local folder in its release layout."""
    root = Path(folder).expanduser()
    verbmem = _json_file(root / "verbmem" / "forget.json")
    bad = [
        k
        for k, row in enumerate(verbmem)
        if not (
            isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("gt"), str)
        )
    ]
    if bad:
        raise DataError(
            [
                DataIssue(
                    str(root / "verbmem" / "forget.json"),
                    bad[0] + 1,
                    "prompt/gt",
                    "each item needs string fields prompt and gt",
                    "restore the file",
                )
            ]
        )
    knowmem = {
        name: read_samples(root / "knowmem" / f"{name}.json")
        for name in ("forget_qa", "retain_qa", "forget_qa_icl", "retain_qa_icl")
    }
    raw = root / "raw" / "forget.txt"
    return MuseNews(
        verbmem=[{"prompt": r["prompt"], "gt": r["gt"]} for r in verbmem],
        knowmem_forget=knowmem["forget_qa"],
        knowmem_retain=knowmem["retain_qa"],
        knowmem_forget_icl=knowmem["forget_qa_icl"],
        knowmem_retain_icl=knowmem["retain_qa_icl"],
        privleak={
            name: _string_list(root / "privleak" / f"{name}.json") for name in ("forget", "retain", "holdout")
        },
        forget_corpus=raw.read_text(encoding="utf-8") if raw.is_file() else "",
    )
