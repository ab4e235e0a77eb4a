"""The data sets a command names: a file, or `tofu-mini` for the bundled benchmark's own set."""

from __future__ import annotations

from importlib import resources
from typing import Literal

from tokenforget.config import Config
from tokenforget.data.identified import read_identified
from tokenforget.data.records import Sample, read_samples
from tokenforget.errors import ConfigError

BUNDLED = "tofu-mini"  # a data setting that means the bundled TOFU-mini set


def named_set(name: str, part: Literal["retain", "eval_forget"]) -> list[Sample]:
    """`tofu-mini`'s `part`, or the samples of the file `name`."""
    if name == BUNDLED:
        from tokenforget.data.benchmarks import tofu_mini

        return getattr(tofu_mini(), part)
    return read_identified(name) if part == "eval_forget" else read_samples(name)


def idk_answers() -> list[str]:
    """TOFU's refusal answers (99, from the TIF paper's repository; MIT) for IdkPO."""
    text = (resources.files("tokenforget") / "benchmark_data" / "idontknow.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_forget(cfg: Config) -> list[Sample]:
    """The forget set to unlearn, with its UW spans (identified.jsonl or any data file)."""
    if cfg.data.forget is None:
        raise ConfigError("no forget set: give --forget FILE (identified.jsonl, or JSONL/CSV with spans)")
    return read_identified(cfg.data.forget)


def load_retain(cfg: Config) -> list[Sample] | None:
    """The retain set, or None when the config names none."""
    return None if cfg.data.retain is None else named_set(cfg.data.retain, "retain")
