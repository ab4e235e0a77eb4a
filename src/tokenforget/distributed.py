"""Distributed set-up for `unlearn` through accelerate: DDP, FSDP or DeepSpeed ZeRO, what each
supports, DeepSpeed's "auto" values, and the full weights gathered back from the shards.
"""

from __future__ import annotations

from typing import Any

import torch

from tokenforget.config import Config
from tokenforget.errors import ConfigError
from tokenforget.losses import METHODS
from tokenforget.train import DATA_PARALLEL, SHARDED, distributed_kind


def make_accelerator(cfg: Config) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # RMU's loss reads a middle layer only: the blocks above it get no gradient
    unused = METHODS[cfg.unlearn.method].needs_hidden
    accelerator = Accelerator(
        cpu=cfg.model.device == "cpu",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused)],
    )
    kind = distributed_kind(accelerator)
    if kind not in (*DATA_PARALLEL, *SHARDED):
        raise ConfigError(
            f"accelerate launched with {kind}: not supported by `unlearn`. Use DDP "
            "(`accelerate launch --multi_gpu --num_processes N -m tokenforget.cli unlearn ...`), FSDP "
            "(--use_fsdp) or DeepSpeed ZeRO (--use_deepspeed)."
        )
    if kind in SHARDED:
        check_sharded(cfg, kind)
    return accelerator


def check_sharded(cfg: Config, kind: str) -> None:
    """What FSDP / DeepSpeed runs do not support yet, each with the way out."""
    fix = "or run it under DDP (`accelerate launch --multi_gpu ...`) or in one process"
    if cfg.unlearn.lora is not None:
        raise ConfigError(
            f"unlearn.lora with {kind}: not supported yet (the adapter would be sharded with the frozen "
            f"weights it sits on). Drop unlearn.lora for a sharded full fine-tune, {fix}."
        )
    if METHODS[cfg.unlearn.method].needs_scorer:
        raise ConfigError(f"ATWU with {kind}: its token scorer is trained outside the sharded model; {fix}.")
    if cfg.unlearn.eval_every is not None:
        raise ConfigError(
            f"unlearn.eval_every with {kind}: the in-training evaluation reads the unsharded model. Set "
            "--set unlearn.eval_every=null and evaluate the saved model after."
        )


def maybe_prepared(accelerator: Any, policy: torch.nn.Module) -> torch.nn.Module:
    """DDP wraps the policy now; FSDP and DeepSpeed prepare it later, together with its optimizer."""
    return policy if distributed_kind(accelerator) in SHARDED else accelerator.prepare(policy)


def configure_deepspeed(accelerator: Any, micro: int, n_micro: int, max_grad_norm: float) -> None:
    """Fill the DeepSpeed config's "auto" values from this run's settings (there is no dataloader for
    accelerate to read them from) and refuse values that contradict them."""
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    for key in ("optimizer", "scheduler"):
        if key in config:
            raise ConfigError(
                f"the DeepSpeed config has an {key!r} section: remove it. `unlearn` passes its own AdamW "
                "and linear warm-up (unlearn.lr, unlearn.warmup_ratio, unlearn.weight_decay)."
            )
    wanted = {
        "train_micro_batch_size_per_gpu": (micro, "unlearn.micro_batch_size"),
        "gradient_accumulation_steps": (n_micro, "unlearn.batch_size / processes / micro_batch_size"),
        "gradient_clipping": (max_grad_norm, "unlearn.max_grad_norm"),
    }
    for key, (value, source) in wanted.items():
        # accelerate launch writes gradient_accumulation_steps=1 when no flag sets it
        if config.get(key, "auto") == "auto" or (key == "gradient_accumulation_steps" and config[key] == 1):
            config[key] = value
        elif config[key] != value:
            raise ConfigError(
                f"the DeepSpeed config sets {key}={config[key]}, this run needs {value} ({source}): "
                f'set it to "auto" or change {source}'
            )
    accelerator.gradient_accumulation_steps = n_micro


def full_weights(accelerator: Any, policy: torch.nn.Module, tied: set[str]) -> dict[str, torch.Tensor] | None:
    """The whole model's weights gathered from the FSDP / DeepSpeed shards, named as the bare
    CausalLM names them, without the `tied` names (the gathered copies no longer share memory, so
    save_pretrained would write a tied weight twice). None on processes other than the main one."""
    state = accelerator.get_state_dict(policy)
    prefix = "lm."  # AnswerModel's attribute
    if not accelerator.is_main_process:
        return None
    named = {k.removeprefix(prefix): v for k, v in state.items()}
    return {k: v for k, v in named.items() if k not in tied}


def tied_names(model: torch.nn.Module) -> set[str]:
    """Parameter names that repeat an earlier parameter (tied embeddings: `lm_head.weight`)."""
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return every - {name for name, _ in model.named_parameters()}
