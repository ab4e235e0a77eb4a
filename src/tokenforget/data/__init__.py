"""Data: loading and validating samples, benchmarks, prompt formatting and tokenisation."""

from tokenforget.data.benchmarks import MuseNews, QABenchmark, load_tofu_split, muse_news, tofu, tofu_mini
from tokenforget.data.encode import Encoded, encode, format_prompt, pad_batch, pad_prompts_left, span_mask
from tokenforget.data.records import Sample, Span, describe, read_samples, word_spans

__all__ = [
    "Encoded",
    "MuseNews",
    "QABenchmark",
    "Sample",
    "Span",
    "describe",
    "encode",
    "format_prompt",
    "load_tofu_split",
    "muse_news",
    "pad_batch",
    "pad_prompts_left",
    "read_samples",
    "span_mask",
    "tofu",
    "tofu_mini",
    "word_spans",
]
