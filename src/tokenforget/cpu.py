"""The CPU's side of speed: what this CPU can do, and linear layers on oneDNN's prepacked weights.

torch reaches oneDNN's prepacked linear kernels only through private ops
(`torch.ops.mkldnn._reorder_linear_weight`, `torch.ops.mkldnn._linear_pointwise`). They are looked
up here and nowhere else, and checked once against `F.linear` on a small random layer: when they are
missing, renamed, or no longer compute a linear layer (a torch release may change them), every
layer takes the plain path (`packed_linears` yields 0) and the numbers are the plain forward's.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

# the private ops, by name: torch.ops.<namespace>.<pack> and .<linear>
ONEDNN_OPS = ("mkldnn", "_reorder_linear_weight", "_linear_pointwise")


# the instruction sets that decide which bf16 / fp32 kernels run, and so the last bits of every number
ARITHMETIC_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


@functools.cache
def machine() -> dict[str, Any]:
    """The CPU that made a world or a run: model name, the arithmetic-relevant instruction sets and
    the core count. The same prepare settings made on two CPUs gave two different targets (issue 21),
    so a world and a receipt say where they were made."""
    name, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name is None:
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu": name,
        "isa": [flag for flag in ARITHMETIC_FLAGS if flag in flags],
        "cores": os.cpu_count(),
    }


def cpu_supports_bf16() -> bool:
    """Native bf16 matmul instructions (AVX512-BF16 or AMX) make CPU autocast pay off."""
    return any(flag in machine()["isa"] for flag in ("avx512_bf16", "amx_bf16"))


def fits_in_free_memory(nbytes: int, share: float) -> bool:
    """A copy of `nbytes` takes under `share` of the memory free now."""
    import psutil

    return nbytes < share * psutil.virtual_memory().available


def _private_ops() -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """(pack(weight), linear(x, packed, bias)) on the ops named by ONEDNN_OPS; AttributeError when
    torch has no such op."""
    namespace, pack_name, linear_name = ONEDNN_OPS
    ops = getattr(torch.ops, namespace)
    reorder, pointwise = getattr(ops, pack_name), getattr(ops, linear_name)

    def pack(weight: torch.Tensor) -> torch.Tensor:
        return reorder(weight, None)

    def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return pointwise(x, packed, bias, "none", [], "")

    return pack, linear


@functools.cache
def onednn_ops() -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] | None:
    """The private ops when they are there and still compute x W^T + b on a small random layer; None
    otherwise (the plain path then serves every layer)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        pack, linear = _private_ops()
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*shape, generator=gen) for shape in ((3, 16), (5, 16), (5,)))
        if not torch.allclose(linear(x, pack(w), b), F.linear(x, w, b), rtol=1e-4, atol=1e-4):
            return None
        return pack, linear
    except (AttributeError, RuntimeError, TypeError):
        return None


# pack only while the packed copies leave this fraction of the free memory untouched
_PACK_MEMORY_SHARE = 0.5


@contextlib.contextmanager
def packed_linears(
    model: torch.nn.Module, training: bool = False, dtype: torch.dtype | None = torch.float32
) -> Iterator[int]:
    """Float32 `nn.Linear` layers of `model` on CPU run on copies of their weights prepacked for
    oneDNN while inside; yields how many layers were packed (0: nothing changed).

    Why: on a 2-core AVX2 CPU MKL's sgemm reached 43-74 GFLOP/s on the LM head and ~95 on the other
    layers, oneDNN on a prepacked weight 97-111 and 115-128 (`python benchmarks/cpu_linear.py`);
    under bf16 autocast on a CPU with native bf16, autocast casts every frozen weight again at each
    call, which a packed bf16 copy avoids. Results agree to rounding, not bit for bit.
    A layer computes in float32, or in bfloat16 under CPU autocast where the CPU has native bf16
    instructions: the copies for `dtype` are packed on entry (forked workers then share them),
    another dtype's on first use (None: every dtype's). Any other call takes the plain path.
    training=False (inference): every layer is packed; a call with autograd on takes the plain path,
    so a packed (stale) weight never meets an optimizer.
    training=True: only frozen layers (no parameter requires grad: a LoRA base model, a frozen LM
    head) are packed, twice: W for the forward and W^T for the backward pass, which needs only the
    input's gradient (grad x = grad y W). A float32 LoRA step of SmolLM2-135M then took 0.65x the
    plain step's time on an AVX512 EPYC (`python benchmarks/train_step_precision.py`); under bf16
    autocast the packed copies measured no faster in training, so a bf16 call with autograd on
    takes the plain path.
    Trainable layers keep the plain path: their weights change every step, and packing them again
    at every step costs more than it saves.
    Skipped when oneDNN or its private ops are unavailable or fail their check (`onednn_ops`), on
    accelerators, when float32 copies would take over half the free memory, and for layers already
    packed (nested calls)."""
    layers = [
        m
        for m in model.modules()
        if type(m) is torch.nn.Linear
        and m.weight.device.type == "cpu"
        and m.weight.dtype == torch.float32
        and type(m.weight.data) is torch.Tensor  # not a quantized tensor subclass (torchao)
        and "forward" not in vars(m)
        and not (training and any(p.requires_grad for p in m.parameters()))
    ]
    need = sum(m.weight.numel() * 4 for m in layers) * (2 if training else 1)
    if not layers or onednn_ops() is None or not fits_in_free_memory(need, _PACK_MEMORY_SHARE):
        yield 0
        return
    for layer in layers:
        layer.forward = _packed_forward(layer, training, dtype)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward


def _linear_on_packed(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    ops = onednn_ops()
    assert ops is not None  # packed_linears packs nothing without them
    return ops[1](x, packed, bias)


@dataclass(frozen=True)
class _Packed:
    """One compute dtype's copies of a layer's weights: W, W^T (training only) and the bias."""

    weight: torch.Tensor
    weight_t: torch.Tensor | None
    bias: torch.Tensor | None


class _FrozenPackedLinear(torch.autograd.Function):
    """y = x W^T + b on a packed W, with the input's gradient from a packed W^T (W and b are
    frozen: they get no gradient)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, packed: _Packed) -> torch.Tensor:
        ctx.packed = packed
        return _linear_on_packed(x, packed.weight, packed.bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        return _linear_on_packed(grad.contiguous(), ctx.packed.weight_t, None), None


def _compute_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype a linear layer computes `x` in here, if a packed copy can serve it."""
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        return dtype if x.is_floating_point() and _packable(dtype) else None
    return torch.float32 if x.dtype == torch.float32 else None


def _packable(dtype: torch.dtype) -> bool:
    return dtype == torch.float32 or (dtype == torch.bfloat16 and cpu_supports_bf16())


def _packed_forward(
    layer: torch.nn.Linear, training: bool, dtype: torch.dtype | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    plain = layer.forward
    weight = layer.weight.detach()
    bias = None if layer.bias is None else layer.bias.detach()
    copies: dict[torch.dtype, _Packed] = {}
    ops = onednn_ops()
    assert ops is not None  # packed_linears packs nothing without them
    pack = ops[0]

    def packed(dtype: torch.dtype) -> _Packed:
        if dtype not in copies:
            w = weight.to(dtype)
            copies[dtype] = _Packed(
                weight=pack(w),
                weight_t=pack(w.t().contiguous()) if training else None,
                bias=None if bias is None else bias.to(dtype),
            )
        return copies[dtype]

    if dtype is not None and _packable(dtype):
        packed(dtype)

    def forward(x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        if dtype is None:
            return plain(x)
        if not torch.is_grad_enabled():
            copy = packed(dtype)
            return _linear_on_packed(x.to(dtype), copy.weight, copy.bias)
        # bf16 training: measured no faster; a layer unfrozen since entry needs its own gradients
        unfrozen = layer.weight.requires_grad or (layer.bias is not None and layer.bias.requires_grad)
        if not training or dtype != torch.float32 or unfrozen:
            return plain(x)
        return _FrozenPackedLinear.apply(x, packed(dtype))

    return forward
