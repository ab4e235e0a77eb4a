"""Typed configuration: one pydantic model per stage, loadable from YAML, overridable by `--set`.

Overrides use one syntax everywhere: `--set section.key=value`, where `value` is read as a YAML
scalar (`--set prepare.lr=2e-4`, `--set prepare.lora.r=8`, `--set prepare.lora=null`). A config file
(`--config run.yaml`) is applied first, then every `--set` in order, then the whole config is
validated, so an error names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from tokenforget.errors import ConfigError
from tokenforget.registry import IDENTIFIERS, METHODS

DEFAULT_MODEL = "smollm2-135m-instruct"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSettings(_Section):
    """LoRA adapter (peft). Absent (null) means full fine-tuning."""

    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (lora_alpha).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules to adapt: 'all-linear' or a list of module names."
    )


class ModelSettings(_Section):
    name: str = Field(
        DEFAULT_MODEL,
        description=(
            f"Model to load: '{DEFAULT_MODEL}' (embedded, offline), a local folder in "
            "save_pretrained layout, or a Hugging Face hub name (needs internet)."
        ),
    )
    precision: Literal["auto", "fp32", "bf16", "bf16-autocast", "fp16"] = Field(
        "auto",
        description=(
            "auto: bf16 weights on GPUs with bf16 support, fp32 weights with bf16 autocast on CPUs "
            "that have native bf16 instructions, fp32 otherwise. bf16-autocast: fp32 weights, bf16 "
            "matmuls (mixed precision)."
        ),
    )
    device: str = Field(
        "auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ..."
    )
    trust_remote_code: bool = Field(
        False, description="Run code shipped with a hub model. Off unless you trust its authors."
    )


class PromptSettings(_Section):
    template: Literal["chat", "plain"] = Field(
        "chat",
        description=(
            "chat: the tokenizer's chat template (user turn = question, assistant turn = answer); "
            "plain: the `plain_format` string. Raw-text samples (no question) use no template."
        ),
    )
    system_prompt: str | None = Field(
        "",
        description=(
            "chat only: the system message. '' (default) = an empty system turn: TOFU itself uses no "
            "system prompt, and SmolLM2's default one would add 16 tokens (19%) to every TOFU-mini "
            "sample. null = whatever the chat template inserts by default."
        ),
    )
    plain_format: str = Field(
        "Question: {question}\nAnswer: ",
        description="plain only: the prompt before the answer; must contain {question}.",
    )

    @field_validator("plain_format")
    @classmethod
    def _has_question(cls, value: str) -> str:
        if "{question}" not in value:
            raise ValueError("must contain the placeholder {question}")
        return value


class DataSettings(_Section):
    tofu: str = Field(
        "locuslab/TOFU",
        description=(
            "Where full TOFU comes from: a local folder in the published JSON-lines layout "
            "(forget01.json, ...) or a hub dataset name (needs internet). TOFU-mini ships inside "
            "the package and needs neither."
        ),
    )
    forget: str | None = Field(None, description="A user forget set (JSONL or CSV) instead of a benchmark's.")
    retain: str | None = Field(None, description="A user retain set (JSONL or CSV).")
    holdout: str | None = Field(
        None,
        description="Texts or QA pairs the model never saw, for membership attacks against the forget set.",
    )
    max_length: int = Field(512, ge=8, description="Longest tokenised sample; longer ones are an error.")


# Each recipe's epochs when none are given: `independent` is TOFU's protocol made fast enough for the
# main job (LoRA, 3 epochs each: 285 steps, about 5.5 min on 2 cores, where TOFU's own full
# fine-tuning at lr 1e-4 for 5 epochs takes 28.6 min; both answer issue 21's question the same way,
# with other numbers: benchmarks/results/worlds_15steps.md); `nested` keeps the numbers of the
# worlds made before `independent` was the default.
RECIPE_EPOCHS: dict[str, dict[str, float]] = {
    "independent": {"retain_epochs": 3.0, "target_epochs": 3.0},
    "nested": {"retain_epochs": 2.0, "target_epochs": 6.0},
}


class PrepareSettings(_Section):
    recipe: Literal["independent", "nested"] = Field(
        "independent",
        description=(
            "independent: target and retain both trained from the base model, the target on the "
            "whole world and the retain model on the retain set, as TOFU does. nested (ours, the "
            "default before issue 21): retain model = base trained on the retain set; target = "
            "the retain model trained further on the forget set with retain replay."
        ),
    )
    retain_epochs: float = Field(
        RECIPE_EPOCHS["independent"]["retain_epochs"],
        gt=0,
        description="Epochs over the retain set (retain model); unset: "
        + ", ".join(f"{e['retain_epochs']:g} ({recipe})" for recipe, e in RECIPE_EPOCHS.items())
        + ".",
    )
    target_epochs: float = Field(
        RECIPE_EPOCHS["independent"]["target_epochs"],
        gt=0,
        description="independent: epochs over the world; nested: over forget+replay; unset: "
        + ", ".join(f"{e['target_epochs']:g} ({recipe})" for recipe, e in RECIPE_EPOCHS.items())
        + ".",
    )
    replay_ratio: float = Field(
        1.0, ge=0, description="nested: retain samples replayed per forget sample in the target stage."
    )
    lora: LoraSettings | None = Field(
        LoraSettings(r=32, alpha=64),
        description=(
            "Train a LoRA adapter and merge it into the saved weights (a step takes ~0.5x the time of a full "
            "fine-tuning step on a 2-core CPU, benchmarks/results/); null = full fine-tune."
        ),
    )
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="Fraction of steps of linear warm-up.")
    batch_size: int = Field(8, ge=1, description="Samples per optimizer step.")
    micro_batch_size: int = Field(8, ge=1, description="Samples per forward (gradient accumulation).")
    checkpoint_every: int = Field(
        25,
        ge=1,
        description="Optimizer steps between resumable checkpoints (each costs about 3 s for "
        "SmolLM2-135M on 2 CPU cores; 25 steps are about 1.6 min of training).",
    )
    seed: int = Field(0, description="Seed for data order and initialisation.")
    eval_max_new_tokens: int = Field(
        48, ge=1, description="Greedy tokens generated for the ROUGE check after training."
    )
    eval_batch_size: int = Field(32, ge=1, description="Prompts per generation batch.")

    @model_validator(mode="before")
    @classmethod
    def _recipe_epochs(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("recipe") in RECIPE_EPOCHS:
            data = {**RECIPE_EPOCHS[data["recipe"]], **data}
        return data

    @field_validator("micro_batch_size")
    @classmethod
    def _divides(cls, value: int, info: Any) -> int:
        batch = info.data.get("batch_size")
        if batch is not None and batch % value:
            raise ValueError(f"must divide batch_size ({batch})")
        return value


class EvalSettings(_Section):
    profile: Literal["tofu-mini", "openunlearning", "tofu-legacy"] = Field(
        "tofu-mini",
        description=(
            "tofu-mini: all forget rows, the first `retain_rows` retain rows and `utility_rows` "
            "real_authors/world_facts rows, `max_new_tokens` new tokens (the cheap profile); "
            "openunlearning: all rows, max_new_tokens=200; tofu-legacy: the published TOFU eval "
            "(first 300 rows, generation to max_length=200 tokens in total)."
        ),
    )
    retain_rows: int = Field(40, ge=1, description="tofu-mini profile: retain rows evaluated.")
    utility_rows: int | None = Field(
        50,
        ge=1,
        description="tofu-mini profile: real_authors and world_facts rows evaluated (null = all 100/117).",
    )
    max_new_tokens: int = Field(
        48,
        ge=1,
        description=(
            "tofu-mini profile: greedy tokens per answer (ROUGE, UW leak rate); the two published "
            "profiles generate up to 200."
        ),
    )
    include_eos: bool = Field(True, description="Count the answer's EOS token in answer losses.")
    truth_ratio: Literal["geometric", "legacy-arithmetic"] = Field(
        "geometric",
        description="geometric: the published aggregation; legacy-arithmetic: TOFU's training-time code.",
    )
    batch_size: int = Field(32, ge=1, description="Answers per teacher-forced scoring batch.")
    generation_batch_size: int = Field(
        96,
        ge=1,
        description=(
            "Questions per greedy generation batch (a decoding step costs little more for more "
            "rows, so larger is faster while memory allows)."
        ),
    )
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description=(
            "Processes that share an evaluation pass on a CPU, each with threads/workers torch "
            "threads; auto = one per thread (two single-thread processes took 0.905x the time of "
            "one 2-thread process on a 2-core CPU). 1 on GPUs, off Linux and in distributed runs."
        ),
    )
    token_labels: str | None = Field(
        None,
        description=(
            "The labelling token-level metrics use (identified.jsonl or the published layout); null = "
            "the run's own identified.jsonl. Give one file to every run you compare, e.g. the "
            "published GPT-4o labels of TOFU forget01."
        ),
    )


class IdentifySettings(_Section):
    """`tokenforget identify`: which words of each forget answer are unwanted (UW). The identifier's
    own keys (model, threshold, ...) are keys of this section too: each registered identifier brings
    its settings model (identify/registry.py), and the section is validated as its variant."""

    method: str = Field(
        "predictability", description="The identifier (`tokenforget identify --help` explains each)."
    )
    drop_question_words: bool = Field(
        False,
        description=(
            "Any identifier: unmark answer words that also occur in the question (they restate it, "
            "they do not answer it)."
        ),
    )
    labels: str | None = Field(
        None,
        description=(
            "`tokenforget run` on a benchmark: take the forget set's labels from this file (identified.jsonl "
            "or the published layout, e.g. the paper's GPT-4o labels) instead of running an identifier."
        ),
    )

    @field_validator("method")
    @classmethod
    def _known(cls, value: str) -> str:
        IDENTIFIERS.known(value)
        return value


def identify_variant(method: str) -> type[IdentifySettings]:
    """The `identify` section of one registered identifier: the common keys plus its settings model."""
    return _variant(IdentifySettings, IDENTIFIERS.known(method).settings)


class UnlearnSettings(_Section):
    """`tokenforget unlearn`: the method and training. The method's own numbers (beta, lam, ...) are
    keys of this section too: each registered method brings its settings model (losses.py), and the
    section is validated as that method's variant (`unlearn_variant`), a union discriminated by
    `method`."""

    method: str = Field(
        "npo_kl_uw",
        description=(
            "Unlearning method (`tokenforget unlearn --help` lists them with their defaults). npo_kl_uw "
            "(NPO on the unwanted-word tokens only + 10 x KL to theta0 on the retain answers; needs a "
            "retain set) with lr 3e-5 and 10 epochs: on TOFU-mini it forgets by TOFU's test at >= "
            "0.98x the target's utility in every seed with less KL on retain than the sample-level "
            "NPO+RT, and it clears a four-answer deletion request in every seed (README). npo_rt_uw "
            "(retain NLL) was the default before; tpo is the paper's TPO alone (no retain set "
            "needed), tpo_gd the paper's TPO + retain NLL, tpo_kl our TPO variant (hinge PL, KL x3)."
        ),
    )
    retain_loss: Literal["auto", "none", "nll", "kl"] = Field(
        "auto", description="Retain term: auto = the method's own (e.g. graddiff: nll, npo: none)."
    )
    lr: float = Field(
        3e-5,
        gt=0,
        description=(
            "Peak learning rate (AdamW). 3e-5 with 10 epochs: measured for npo_kl_uw on the embedded "
            "135M model and TOFU-mini (README; the TPO forms want about 1e-4: tpo_kl 1.25e-4); the "
            "papers' 7B recipe is lr 1e-5, 10 epochs."
        ),
    )
    epochs: float = Field(
        10.0,
        gt=0,
        description="Epochs over the forget set (papers, 7B: 10; TOFU-mini's 40 answers: 50 steps).",
    )
    min_steps: int = Field(
        25,
        ge=0,
        description=(
            "At least this many optimizer steps, however small the forget set: epochs alone give a "
            "4-answer deletion request 5 (4 answers x 10 epochs at batch 8). That request needs 25 "
            "(tpo_kl: at 15 one of its 12 unwanted spans still comes out; README)."
        ),
    )
    stop_when: list[str] | Literal["auto"] = Field(
        "auto",
        description=(
            "Stop once every condition holds at an in-training evaluation point (needs eval_every), "
            "e.g. [uw_leak_rate<=0] (no unwanted word in the greedy answers) or [uw_dlogp<=-3]; the "
            "run then takes up to max_steps. Metrics: those of trajectory.jsonl; VALUE may end in x "
            "(relative to step 0). unlearn.json records what stopped the run and when. auto "
            "(default): [uw_leak_rate<=0] where the unwanted words are spans marked by hand "
            "(identify.method=spans) and the epochs would take no more than max_steps (a deletion "
            "request) and the model gives some back at step 0, checked once per epoch unless "
            "eval_every says; else none (the step budget). [] = never."
        ),
    )
    guard: list[str] = Field(
        default_factory=list,
        description=(
            "Utility guard: stop once one of these fails at an evaluation point, e.g. "
            "[retain_Q_A_Prob>=0.9x] (retain answers keep 0.9x their probability at step 0)."
        ),
    )
    max_steps: int = Field(
        100, ge=1, description="With stop_when: the step cap, and the length of the learning-rate schedule."
    )
    batch_size: int = Field(
        8, ge=1, description="Forget samples per optimizer step (all processes together)."
    )
    micro_batch_size: int = Field(8, ge=1, description="Forget samples per forward and process.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(
        0.1,
        ge=0,
        le=1,
        description=(
            "Fraction of steps of linear warm-up (the papers: 1 epoch of 10). A four-answer deletion "
            "request needs it: without it, 1 of 12 unwanted spans still comes out at 25 steps "
            "(npo_rt_uw; tpo_kl 2); with it, none (README, Unlearning)."
        ),
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    lora: LoraSettings | None = Field(
        None, description="Train a LoRA adapter (peft); null = full fine-tuning."
    )
    merge_lora: bool = Field(True, description="With LoRA: write merged weights (false: the adapter only).")
    checkpoint_every: int = Field(5, ge=1, description="Optimizer steps between resumable checkpoints.")
    seed: int = Field(0, description="Seed for data order, IdkPO answers and RMU's control vector.")
    eval_every: int | None = Field(
        None,
        ge=1,
        description=(
            "Every N optimizer steps (and at step 0 and the last step), score the forget answers and "
            "the first eval.retain_rows retain answers: trajectory.jsonl with Q_A_Prob on both and "
            "the change of log p on UW/GW tokens (labels: eval.token_labels, else the run's). One "
            "process only; null = off."
        ),
    )

    @field_validator("stop_when", "guard")
    @classmethod
    def _conditions(cls, value: list[str] | str) -> list[str] | str:
        from tokenforget.stopping import parse_condition

        for text in [] if value == "auto" else value:
            parse_condition(text)
        return value

    @field_validator("method")
    @classmethod
    def _known(cls, value: str) -> str:
        METHODS.known(value)
        return value


def unlearn_variant(method: str, atwu_base: str | None = None) -> type[UnlearnSettings]:
    """The `unlearn` section of one registered method: the training keys plus its settings model.

    ATWU on another method's loss (`atwu.base=tpo`) takes that method's settings, so `unlearn.lam`
    means the same with and without learned weights."""
    settings = METHODS.known(method).settings
    if METHODS[method].needs_scorer and atwu_base in METHODS:
        settings = METHODS[atwu_base].settings
    return _variant(UnlearnSettings, settings)


@functools.cache
def _variant(section: type[_Section], settings: type[BaseModel]) -> type[Any]:
    """A section merged with a registered component's settings model (one class per pair)."""
    return create_model(
        f"{section.__name__}{settings.__name__}", __base__=(settings, section), __doc__=section.__doc__
    )


class AtwuSettings(_Section):
    """`unlearn --method atwu`: the learned token scorer (docs/atwu.md; defaults: the authors' final runs)."""

    base: str = Field(
        "saturated",
        description=(
            "The forget loss the weights enter: saturated (the authors' main form, -mean g sg(p^(beta g)) "
            "nll), correct (sg(p^beta)), plain (no saturation); or a registered loss that takes token "
            "weights g (ga, npo, simnpo, wga, tpo = LPL on g, PL on 1-g), whose scorer then minimises "
            "that loss."
        ),
    )
    layer: int = Field(
        -1, description="Hidden layer the scorer reads: -1 = last (post-norm), k = after block k."
    )
    position: Literal["token", "predicting"] = Field(
        "token",
        description="token: the hidden state at the token itself (authors' code); predicting: the one "
        "before it.",
    )
    schedule: Literal["alternating", "joint"] = Field(
        "alternating", description="alternating (the method) or joint (control: one optimizer, one backward)."
    )
    update_every: int = Field(5, ge=1, description="One scorer step every n model steps (authors: 5).")
    scorer_lr: float = Field(0.05, gt=0, description="Scorer SGD learning rate (momentum 0.9, linear decay).")
    entropy: float = Field(
        1.0, ge=0, description="Weight of the binary-entropy penalty (pushes g to 0 or 1)."
    )
    population: float = Field(10.0, ge=0, description="Weight of the soft per-sequence budget term.")
    budget: float = Field(0.2, ge=0, le=1, description="Target fraction of tokens with g > 0.5 per sequence.")
    l2: float = Field(1.0, ge=0, description="L2 penalty on the scorer's weights.")

    @field_validator("base")
    @classmethod
    def _known_base(cls, value: str) -> str:
        if value not in atwu_bases():
            raise ValueError(f"unknown ATWU base {value!r}; choose one of {', '.join(atwu_bases())}")
        return value


def atwu_bases() -> tuple[str, ...]:
    """What `atwu.base` may name: ATWU's own forms and every registered method that takes weights."""
    methods = METHODS.load().values()
    return tuple(form for m in methods for form in m.forms) + tuple(
        m.name for m in methods if m.takes_weights
    )


class RunSettings(_Section):
    name: str = Field("tofu-mini", description="Run folder name under runs_dir.")
    runs_dir: str = Field("runs", description="Where run folders are created.")
    benchmark: Literal["tofu-mini", "tofu"] = Field("tofu-mini", description="Benchmark the run uses.")
    tofu_split: Literal["forget01", "forget05", "forget10"] = Field(
        "forget01", description="Full TOFU only: the forget split."
    )


# Before methods and identifiers brought their own settings, `unlearn` and `identify` listed every
# key of every one of them, with these values for "not set" (null: the method's default). A config
# file written then (a run folder's config.yaml) still reads (`legacy_layout`): such a key is
# dropped where the chosen method or identifier does not take it, or where it is null. `--set`
# values are never dropped: a key set by hand that the method does not take is an error.
LEGACY_UNLEARN = {
    "tokens": "all", "beta": None, "lam": 1.0, "gamma": None, "alpha": None, "lpl_reduction": "batch",
    "pl_reduction": "sum", "lpl_space": "logit", "delta": None, "delta_inside_beta": False,
    "beta2": None, "steering": None, "layer": None,
}  # fmt: skip
LEGACY_IDENTIFY = {
    "model": None, "reference": None, "oracle": False, "threshold": None, "top_k": 1,
    "context": "question", "batch_size": 16, "min_df": 0.02, "spacy_model": "en_core_web_sm",
    "noun_chunks": False, "pos": [], "backend": "openai", "base_url": None, "api_model": "gpt-4o",
    "api_key_env": "OPENAI_API_KEY", "concurrency": 4, "timeout": 60.0, "max_retries": 3,
    "temperature": 0.0, "max_tokens": 512, "runs": 1,
}  # fmt: skip


REGISTERED_SECTIONS = ("unlearn", "identify")  # sections validated as their component's variant


def section_variant(section: str, values: dict[str, Any], atwu_base: str | None = None) -> type[Any]:
    """The variant of a registered section for the method or identifier its values name (a
    ValueError naming the choices when none is registered under that name)."""
    base = UnlearnSettings if section == "unlearn" else IdentifySettings
    name = values.get("method", base.model_fields["method"].default)
    base._known(name)  # type: ignore[operator]  # an unknown name is one clear error, not one per key
    return unlearn_variant(name, atwu_base) if section == "unlearn" else identify_variant(name)


def legacy_layout(tree: dict[str, Any]) -> dict[str, Any]:
    """A config file's tree with the old flat layout's unset keys dropped (see LEGACY_UNLEARN)."""
    tree = dict(tree)
    atwu_base = (tree.get("atwu") or {}).get("base")
    for section, legacy in zip(REGISTERED_SECTIONS, (LEGACY_UNLEARN, LEGACY_IDENTIFY), strict=True):
        values = tree.get(section)
        if not isinstance(values, dict):
            continue
        try:
            variant = section_variant(section, values, atwu_base)
        except (ValueError, TypeError):
            continue  # validation names the unknown method
        tree[section] = _without_legacy(values, variant, legacy)
    return tree


def _without_legacy(
    section: dict[str, Any], variant: type[BaseModel], legacy: dict[str, Any]
) -> dict[str, Any]:
    """`section` without the old flat layout's unset keys (see LEGACY_UNLEARN)."""
    fields = variant.model_fields

    def unset(key: str, value: Any) -> bool:
        if key not in legacy:
            return False
        if value is None:
            return fields.get(key) is None or fields[key].default is not None
        return key not in fields and value == legacy[key]

    return {key: value for key, value in section.items() if not unset(key, value)}


class Config(_Section):
    """Everything a tokenforget command can be told. `config.yaml` in a run folder is one of these."""

    model: ModelSettings = ModelSettings()
    prompt: PromptSettings = PromptSettings()
    data: DataSettings = DataSettings()
    prepare: PrepareSettings = PrepareSettings()
    eval: EvalSettings = EvalSettings()
    identify: SerializeAsAny[IdentifySettings] = Field(
        default_factory=lambda: identify_variant(IdentifySettings.model_fields["method"].default)()
    )
    atwu: AtwuSettings = AtwuSettings()  # before unlearn: atwu.base picks unlearn's variant
    unlearn: SerializeAsAny[UnlearnSettings] = Field(
        default_factory=lambda: unlearn_variant(UnlearnSettings.model_fields["method"].default)()
    )
    run: RunSettings = RunSettings()

    @field_validator(*REGISTERED_SECTIONS, mode="wrap")
    @classmethod
    def _registered_variant(cls, value: Any, handler: Any, info: ValidationInfo) -> Any:
        """Validate `unlearn` / `identify` as the variant of the method / identifier they name, so
        its own keys are known and checked."""
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if isinstance(value, dict):
            atwu = info.data.get("atwu")
            return section_variant(info.field_name, value, atwu.base if atwu else None).model_validate(value)
        return handler(value)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: dict[str, Any] = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = {}
            node[key] = child
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, for example --set prepare.lr=2e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    text = raw.strip()
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict, list)) and not text.startswith(("[", "{")):
        value = raw  # "Question: {question}" is a string, not a YAML mapping
    if isinstance(value, str) and _looks_numeric(value):
        value = float(value)  # YAML 1.1 reads "2e-4" as a string
    return key, value


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _describe_validation(exc: ValidationError, source: str, tree: dict[str, Any]) -> ConfigError:
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(
                f"  {key}: unknown key{_owner_hint(err['loc'], tree)} (see `tokenforget config keys`)"
            )
        elif isinstance(err.get("input"), dict):
            lines.append(f"  {key}: {err['msg']}")
        else:
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return ConfigError(f"invalid configuration from {source}:\n" + "\n".join(lines))


def _owner_hint(loc: tuple[Any, ...], tree: dict[str, Any]) -> str:
    """For a key of a registered component's section: which method or identifier refused it, and
    the keys it does take."""
    if len(loc) != 2 or loc[0] not in REGISTERED_SECTIONS:
        return ""
    values = tree.get(loc[0]) or {}
    try:
        variant = section_variant(loc[0], values, (tree.get("atwu") or {}).get("base"))
    except (ValueError, TypeError):
        return ""
    base = UnlearnSettings if loc[0] == "unlearn" else IdentifySettings
    name = values.get("method", base.model_fields["method"].default)
    what = "method" if loc[0] == "unlearn" else "identifier"
    own = [key for key in variant.model_fields if key not in base.model_fields]
    return f" for {what} {name} (its own keys: {', '.join(own) or 'none'})"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build a validated Config from an optional YAML file and `section.key=value` overrides."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping of sections, not {type(loaded).__name__}"
            )
        tree = legacy_layout(loaded or {})
        source = str(path)
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_path(tree, key, value)
    if overrides:
        source = f"{source} + --set"
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise _describe_validation(exc, source, tree) from exc


def config_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every setting, for `--help` and `config keys`."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        nested = _section_type(annotation)
        if nested is not None and field.description is None:
            rows.extend(config_keys(nested, f"{key}."))
            continue
        if nested is not None:
            rows.append((key, repr(field.default), field.description or ""))
            rows.extend(config_keys(nested, f"{key}."))
            continue
        rows.append((key, repr(field.get_default(call_default_factory=True)), field.description or ""))
    if model is Config:
        identifiers = {name: kind.settings for name, kind in IDENTIFIERS.load().items()}
        rows.extend(registered_keys("identify", IdentifySettings, identifiers))
        rows.extend(registered_keys("unlearn", UnlearnSettings, unlearn_variants()))
    return rows


def config_schema() -> dict[str, Any]:
    """Config's JSON schema, with `unlearn` as the union of every method's variant, discriminated by
    `method` (pydantic sees one base class, since methods can be registered at run time)."""
    schema = Config.model_json_schema()
    defs = schema.setdefault("$defs", {})
    mapping = {}
    for name in METHODS.load():
        variant = unlearn_variant(name)
        sub = variant.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        defs[variant.__name__] = sub
        mapping[name] = f"#/$defs/{variant.__name__}"
    schema["properties"]["unlearn"] = {
        "oneOf": [{"$ref": ref} for ref in dict.fromkeys(mapping.values())],
        "discriminator": {"propertyName": "method", "mapping": mapping},
        "description": UnlearnSettings.__doc__,
    }
    return schema


def unlearn_variants() -> dict[str, type[BaseModel]]:
    """Each registered method's settings model (what it adds to `unlearn`)."""
    return {name: method.settings for name, method in METHODS.load().items()}


def registered_keys(
    section: str, base: type[BaseModel], variants: dict[str, type[BaseModel]]
) -> list[tuple[str, str, str]]:
    """The keys registered components add to a section, one row per key and meaning, naming who
    takes it and each one's default."""
    groups: dict[tuple[str, str], list[tuple[str, Any]]] = {}
    for owner, settings in variants.items():
        for name, field in settings.model_fields.items():
            if name not in base.model_fields:
                default = field.get_default(call_default_factory=True)  # a list's factory too
                groups.setdefault((name, field.description or ""), []).append((owner, default))
    rows = []
    for (name, description), owners in groups.items():
        defaults = sorted({repr(d) for _, d in owners})
        default = defaults[0] if len(defaults) == 1 else "; ".join(f"{o} {d!r}" for o, d in owners)
        rows.append((f"{section}.{name}", default, f"[{', '.join(o for o, _ in owners)}] {description}"))
    return rows


def _section_type(annotation: Any) -> type[BaseModel] | None:
    candidates = getattr(annotation, "__args__", None) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None
