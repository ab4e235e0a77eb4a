"""Shared fixtures: the real SmolLM2 tokenizer/weights (converted once per cache), tiny random models.

TOKENFORGET_CACHE defaults to a folder under the repository (`.cache/`, git-ignored) so the test
suite never touches a user's cache, and the one-time conversion is shared by every test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"  # what the suite reads: see tests/data/README.md and NOTICE
TOFU_DIR = DATA / "tofu"  # published TOFU splits (MIT)
TOFU_LOGS = DATA / "tofu_logs"  # published TOFU eval logs (MIT)
# our own labels of TOFU-mini forget01, in the layouts of the paper's GPT-4o and distilroberta files
GENERATIVE_LABELS = DATA / "labels" / "forget01_generative_layout.jsonl"
DISCRIMINATIVE_LABELS = DATA / "labels" / "forget01_discriminative_layout.jsonl"
os.environ.setdefault("TOKENFORGET_CACHE", str(REPO / ".cache" / "tokenforget"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def smollm_dir() -> Path:
    from tokenforget.models import ensure_embedded_model

    return ensure_embedded_model()


@pytest.fixture(scope="session")
def smollm_tokenizer(request):
    """TOKENFORGET_TEST_TOKENIZER names a folder holding the SmolLM2 tokenizer files alone: the GPU
    machine runs the tiny-model tests without the embedded weights (they do not travel there)."""
    from tokenforget.models import load_tokenizer

    folder = os.environ.get("TOKENFORGET_TEST_TOKENIZER") or request.getfixturevalue("smollm_dir")
    return load_tokenizer(str(folder))


@pytest.fixture(scope="session")
def bert_tokenizer():
    """A real WordPiece tokenizer (BERT layout) built from a small vocabulary."""
    from transformers import BertTokenizerFast

    words = [
        "the",
        "of",
        "and",
        "in",
        "to",
        "was",
        "born",
        "author",
        "his",
        "her",
        "name",
        "is",
        "a",
        "city",
        "novel",
        "book",
        "wrote",
        "year",
        "paris",
        "london",
        "new",
        "york",
        "kuwait",
        "basil",
        "award",
        "prize",
        "father",
        "mother",
        "published",
    ]
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *list("abcdefghijklmnopqrstuvwxyz0123456789"),
        *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"],
        *list(".,'-!?:;()/\"&"),
        *words,
    ]
    tokenizer = BertTokenizerFast(
        vocab={token: k for k, token in enumerate(dict.fromkeys(vocab))}, do_lower_case=True
    )
    tokenizer.eos_token = "[SEP]"
    return tokenizer


def make_tiny_llama(folder: Path, tokenizer, seed: int = 0) -> Path:
    """A 2-layer random Llama with the real SmolLM2 tokenizer, saved in save_pretrained layout."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm_tokenizer) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm_tokenizer)


@pytest.fixture(scope="session")
def forget_file(tmp_path_factory) -> Path:
    """The first 8 TOFU-mini forget answers with the fixture's UW labels (the published generative layout)."""
    path = tmp_path_factory.mktemp("forget") / "forget8.jsonl"
    path.write_text("".join(GENERATIVE_LABELS.read_text().splitlines(keepends=True)[:8]))
    return path


def write_muse_news_layout(folder: Path) -> Path:
    """A small folder in MUSE-News's release layout, with news-like texts written for the tests (the
    repository holds no MUSE text; a user points `eval muse --data` at the real release)."""
    import json

    places = ["Orkney", "Leeds", "Cardiff", "Belfast", "Dundee", "Bristol"]
    stories = [
        f"The council in {place} said on Monday that the new bridge over the river would open in "
        f"{2020 + k}, after a delay of {k + 2} years. Residents told reporters the works had closed "
        f"{k + 3} roads and moved the weekly market to the old harbour."
        for k, place in enumerate(places)
    ]
    qa = [
        {"question": f"When will the bridge in {p} open?", "answer": str(2020 + k)}
        for k, p in enumerate(places)
    ]
    files = {
        "verbmem/forget.json": [{"prompt": s[:60], "gt": s[60:]} for s in stories[:3]],
        "knowmem/forget_qa.json": qa[:3],
        "knowmem/retain_qa.json": qa[3:],
        "knowmem/forget_qa_icl.json": qa[:1],
        "knowmem/retain_qa_icl.json": qa[3:4],
        "privleak/forget.json": stories[:2],
        "privleak/retain.json": stories[2:4],
        "privleak/holdout.json": stories[4:],
    }
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content))
    (folder / "raw").mkdir(exist_ok=True)
    (folder / "raw" / "forget.txt").write_text("\n\n".join(stories[:3]))
    return folder


@pytest.fixture
def muse_news_dir(tmp_path) -> Path:
    return write_muse_news_layout(tmp_path / "muse-news")
