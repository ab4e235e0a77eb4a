"""`tokenforget attack quantize`: does the forgetting survive 4-bit or 8-bit weights?

Unlearning moves weights by small amounts; rounding them to a 4-bit grid can undo much of it
("Catastrophic Failure of LLM Unlearning via Quantization", Zhang et al., ICLR 2025). The attack
quantizes a copy of each model with torchao through transformers' `TorchAoConfig` (weight-only,
round to nearest: int4 in groups along the input dimension, int8 per output channel), saves it
(safetensors, the library's own format, loadable by any transformers with torchao) and evaluates it
with `evaluate_tofu`, so its numbers are those `tokenforget eval tofu` gives on the saved copy.
The target and retain models quantized the same way are the yardsticks: the quantized unlearned
model's forget quality is measured against the quantized retain model (what a model that never saw
the forget set looks like after the same rounding), and its forget Q_A_Prob, truth ratio and UW leak
rate against both. Their copies live in the world's folder, shared by every run.

Why torchao (`benchmarks/results/quantize_backends.md`, the libraries transformers drives, on a
2-core CPU): its int4 and int8 models run on CPU within 1.15x of float32, save to safetensors and
reload to the same numbers. optimum-quanto quantizes as well but transformers refuses to save its
models; bitsandbytes' 4-bit copy reloaded on CPU to other numbers (max |dNLL| 18); HQQ is not wired
into transformers 5. Every one of them also runs on GPUs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenforget.artifacts import Stamp
from tokenforget.config import Config
from tokenforget.data.benchmarks import QABenchmark
from tokenforget.data.records import Sample
from tokenforget.errors import TokenforgetError
from tokenforget.evaluate.tofu_run import evaluate_tofu
from tokenforget.evaluate.tokens import sample_key
from tokenforget.models import model_identity, resolve_model, verify_manifest, write_manifest
from tokenforget.progress import console

BITS = (4, 8)
SCORED = ("forget_quality", "model_utility", "forget_Q_A_Prob", "forget_truth_ratio", "uw_leak_rate")
ATTACKED = ("unlearned", "retain", "target")  # the run's model and its world's two yardsticks


def group_size_for(in_features: list[int], wanted: int) -> int:
    """The largest power of two <= `wanted` that divides every linear layer's input width (a group
    never straddles two rows: SmolLM2-135M's 576 takes 64, not 128)."""
    size = 1 << (max(wanted, 1).bit_length() - 1)
    while size > 1 and any(width % size for width in in_features):
        size //= 2
    return size


def quantization_config(bits: int, group_size: int) -> Any:
    """transformers' TorchAoConfig for weight-only round-to-nearest at `bits`."""
    if bits not in BITS:
        raise TokenforgetError(f"--bits {bits}: expected one of {', '.join(map(str, BITS))}")
    from tokenforget.models import quiet_transformers

    quiet_transformers()  # before torchao is imported
    try:
        import torch
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
        from torchao.quantization.granularity import PerGroup
        from transformers import TorchAoConfig
    except ImportError as exc:
        raise TokenforgetError(
            f"attack quantize needs torchao ({exc}): pip install 'tokenforget[quantize]'"
        ) from exc
    if bits == 8:
        return TorchAoConfig(Int8WeightOnlyConfig())
    return TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size)))


def quantized(model: str, bits: int, group_size: int, folder: Path, trust_remote_code: bool = False) -> str:
    """A copy of `model` with weights rounded to `bits` (in `folder`/model; made once, resumable)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tokenforget.models import load_tokenizer, quiet_transformers, save_model

    out = folder / "model"
    if verify_manifest(out):
        return str(out)
    quiet_transformers()
    source = resolve_model(model)
    console.print(f"[bold]quantize[/] {model}: int{bits} weights (torchao, groups of {group_size})")
    quant = AutoModelForCausalLM.from_pretrained(
        source,
        quantization_config=quantization_config(bits, group_size),
        dtype=torch.float32,
        device_map="cpu",
        trust_remote_code=trust_remote_code,
    )
    save_model(quant, load_tokenizer(source, trust_remote_code), out)
    write_manifest(out, {"quantized_from": model_identity(source), "bits": bits, "group_size": group_size})
    return str(out)


def linear_widths(model: str) -> list[int]:
    """Every linear layer's input width, read from the model's config (no weights loaded)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model(model))
    widths = [config.hidden_size]
    if getattr(config, "intermediate_size", None):
        widths.append(config.intermediate_size)
    heads, dim = config.num_attention_heads, getattr(config, "head_dim", None)
    widths.append(heads * (dim or config.hidden_size // heads))  # the attention output projection
    return widths


def attack_folder(cfg: Config, root: Path, bits: int, group_size: int) -> Path:
    """Where the quantized copies of one recipe live under `root` (a run folder, or the world's)."""
    import torchao

    payload = {
        "backend": f"torchao {torchao.__version__}",
        "bits": bits,
        "group_size": group_size if bits == 4 else None,
        "precision": cfg.model.precision,
        "prompt": cfg.prompt.model_dump(mode="json"),
    }
    return root / "attacks" / f"quantize-{Stamp('quantize', payload).key[:12]}"


def copy_folder(name: str, out: Path, yardstick: Path) -> Path:
    """Where model `name`'s quantized copy lives (its `model/` and `eval/`): the world's target's and
    retain's under `yardstick`, shared by every run in the world; the others' under `out`."""
    return (yardstick if name in ("retain", "target") else out) / name


def quantized_copies(out: Path, yardstick: Path, bits: int) -> dict[Path, str]:
    """Every copy the attack writes (folder -> what it is): the unlearned, retain and target models'."""
    return {copy_folder(name, out, yardstick): f"the {name} model in int{bits}" for name in ATTACKED}


def quantize_attack(
    cfg: Config,
    models: dict[str, str],
    before: dict[str, Path],
    bench: QABenchmark,
    out: Path,
    labels: list[Sample],
    bits: int,
    group_size: int,
    yardstick: Path,
) -> dict[str, Any]:
    """Quantize each model (name -> folder; `retain` and `target` go under `yardstick`, the others
    under `out`) and evaluate it on every split; `before`: each model's evaluation folder unquantized.
    Per model, the numbers before and after, and the change."""
    from tokenforget.relearn import scored_leak_rate

    labelled = {sample_key(s): s for s in labels}
    order = ["retain", *(name for name in models if name != "retain")]  # retain first: FQ needs it
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for name in order:
        folder = copy_folder(name, out, yardstick)
        copy = quantized(models[name], bits, group_size, folder, cfg.model.trust_remote_code)
        rows[name] = {}
        # the quantized retain model is the quantized models' yardstick, itself measured against the original
        quantized_retain = yardstick / "retain" / "eval" if name != "retain" else before["retain"]
        for when, model, eval_dir, retain_logs in (
            ("before", models[name], before[name], before["retain"]),
            ("after", copy, folder / "eval", quantized_retain),
        ):
            summary = evaluate_tofu(cfg, model, bench, eval_dir, retain_logs)
            point = {key: summary.get(key) for key in SCORED}
            point["uw_leak_rate"] = scored_leak_rate(eval_dir, labelled, bench.eval_forget)
            rows[name][when] = point
    result = {
        "backend": "torchao",
        "bits": bits,
        "group_size": group_size if bits == 4 else None,
        "yardstick": str(yardstick),
        "models": rows,
        "change": {
            name: {
                key: row["after"][key] - row["before"][key]
                if row["after"][key] is not None and row["before"][key] is not None
                else None
                for key in SCORED
            }
            for name, row in rows.items()
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantize.json").write_text(json.dumps(result, indent=2))
    return result
