"""The published inputs some benchmarks compare against, which the repository does not ship.

The TIF paper's labels of TOFU forget01 (`forget01_gpt.jsonl`: GPT-4o's unwanted words;
`forget01_bert.jsonl`: the distilroberta fill-mask labels) come from the paper's public repository
(arXiv 2506.03142, "Not All Tokens Are Meant to Be Forgotten"). They carry no licence, so a user
downloads them and passes the folder; the test suite uses labels of its own in the same layouts
(`tests/data/labels/`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

LABELS_HELP = (
    "folder holding the TIF paper's published labels of TOFU forget01, forget01_gpt.jsonl (GPT-4o) "
    "and forget01_bert.jsonl (distilroberta), from the paper's public repository (arXiv 2506.03142); "
    "not shipped here, as they carry no licence"
)


def add_labels_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", type=Path, required=True, help=LABELS_HELP)


def gpt_labels(folder: Path) -> Path:
    """The GPT-4o labels file in the folder given by --labels, checked to exist."""
    return _existing(folder / "forget01_gpt.jsonl")


def bert_labels(folder: Path) -> Path:
    return _existing(folder / "forget01_bert.jsonl")


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: --labels names the folder of the paper's files ({LABELS_HELP})")
    return path
