"""The training loop: answer-only forward, resumable checkpoints, progress.

`prepare` fine-tunes with it (answer-only NLL); the unlearning methods plug their losses into the
same forward. Logits are computed only at answer positions: the hidden states are sliced before
the LM head, so the (B, T, V) tensor over the prompt is never built.

Resumability: the data order is a pure function of (seed, step), so a checkpoint needs only the
step, the trainable weights, the optimizer and scheduler states and the RNG state, all stored as
safetensors plus JSON (nothing is unpickled on resume). A checkpoint is copied in memory, then
written by a background thread to a temporary folder and renamed into place, so training goes on
during the write and a kill at any moment leaves either the previous checkpoint or the new one,
never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tokenforget.artifacts import Stamp
from tokenforget.cpu import fits_in_free_memory, packed_linears
from tokenforget.data.encode import Encoded, pad_batch
from tokenforget.forward import answer_forward, token_nll
from tokenforget.models import Precision, file_sha256

# ----------------------------------------------------------------------------- data order


def batch_schedule(
    lengths: Sequence[int], batch_size: int, epochs: float, seed: int, steps: int | None = None
) -> list[list[int]]:
    """Deterministic list of batches (sample indices) for the whole run: `epochs` worth, or exactly
    `steps` batches when given (as many epochs as they take).

    Each epoch is a seeded permutation; within windows of 8 batches samples are sorted by length
    (less padding), then the batches are shuffled again so lengths do not trend within an epoch.
    """
    n = len(lengths)
    total = steps if steps is not None else max(1, math.ceil(epochs * n / batch_size))
    stream: list[int] = []
    epoch = 0
    while len(stream) < total * batch_size:
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        stream.extend(torch.randperm(n, generator=gen).tolist())
        epoch += 1
    stream = stream[: total * batch_size]
    window = 8 * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(stream), window):
        chunk = sorted(stream[start : start + window], key=lambda i: lengths[i])
        group = [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
        gen = torch.Generator().manual_seed(seed * 7919 + start)
        batches.extend(group[k] for k in torch.randperm(len(group), generator=gen).tolist())
    return batches


# ----------------------------------------------------------------------------- checkpoints


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def _copied(obj: Any) -> Any:
    """obj with every tensor copied to the CPU and every container rebuilt: a snapshot that stays
    fixed while training goes on mutating the originals in place."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _copied(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_copied(v) for v in obj)
    return obj


_TENSOR = "__tensor__"


def _split_tensors(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """A JSON-able skeleton of a state dict; its tensors go to `tensors` (safetensors, no pickle).
    Non-string dict keys (optimizer states are keyed by parameter index) and tuples are tagged so
    `_join_tensors` restores them exactly."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.contiguous()
        return {_TENSOR: path}
    if isinstance(obj, dict):
        return {
            "__dict__": [
                [k if isinstance(k, str) else {"__int__": k}, _split_tensors(v, tensors, f"{path}/{k}")]
                for k, v in obj.items()
            ]
        }
    if isinstance(obj, tuple):
        return {"__tuple__": [_split_tensors(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_split_tensors(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {path or 'the top level'}")


def _join_tensors(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, list):
        return [_join_tensors(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if _TENSOR in skeleton:
        return tensors[skeleton[_TENSOR]]
    if "__tuple__" in skeleton:
        return tuple(_join_tensors(v, tensors) for v in skeleton["__tuple__"])
    pairs = skeleton["__dict__"]
    return {(k["__int__"] if isinstance(k, dict) else k): _join_tensors(v, tensors) for k, v in pairs}


@dataclass
class CheckpointSnapshot:
    weights: dict[str, torch.Tensor]
    blob: dict[str, Any]  # optimizer, scheduler, RNG, extra states
    state: dict


def checkpoint_snapshot(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict,
    extra: dict[str, Any] | None = None,
    copy: bool = True,
) -> CheckpointSnapshot:
    """Everything a checkpoint holds; copy=True copies it to CPU memory (for a write that runs
    while training goes on), copy=False references the live tensors (for a write done now).
    `extra`: more objects with state_dict/load_state_dict (ATWU's scorer and its optimizer)."""
    take = _copied if copy else (lambda obj: obj)
    return CheckpointSnapshot(
        weights=take(_trainable_state(model)),
        blob=take(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "extra": {name: obj.state_dict() for name, obj in (extra or {}).items()},
            }
        ),
        state=json.loads(json.dumps(state)),
    )


def write_checkpoint(folder: Path, snapshot: CheckpointSnapshot) -> None:
    """Write to a staging folder, then rename it into place (a kill leaves the old or the new one)."""
    staging = folder.with_name(folder.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    save_file(snapshot.weights, staging / "trainable.safetensors")
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split_tensors(snapshot.blob, tensors)
    save_file(tensors, staging / "optimizer.safetensors")
    (staging / "optimizer.json").write_text(json.dumps(skeleton))
    (staging / "state.json").write_text(json.dumps(snapshot.state, indent=2))
    _swap_into_place(staging, folder)


def _swap_into_place(staging: Path, folder: Path) -> None:
    """Two renames: a kill between them leaves `<folder>.old`, which `_recover` puts back."""
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.replace(old)
    staging.replace(folder)
    if old.exists():
        shutil.rmtree(old)


def _recover(folder: Path) -> None:
    """Undo a kill inside a checkpoint write. Before the renames: the staging folder (complete or
    not) is dropped and the previous checkpoint stands. Between them: `<folder>.old` holds the last
    complete checkpoint and is put back. After them: the new checkpoint is in place and the
    left-over `.old`, which would block the next write's first rename, is removed. A folder with
    state.json is complete: state.json is the last file written before the rename."""
    old = folder.with_name(folder.name + ".old")
    if not (folder / "state.json").is_file() and (old / "state.json").is_file():
        if folder.exists():
            shutil.rmtree(folder)
        old.replace(folder)
    for leftover in (old, folder.with_name(folder.name + ".tmp")):
        if leftover.exists():
            shutil.rmtree(leftover)


def resume_state(folder: Path, accelerator: Any = None) -> dict | None:
    """The one answer to "which checkpoint does this run resume from", asked by every trainer's
    loader and by the training log's trimming: the state of the checkpoint in `folder` once a kill
    in the middle of a write is undone (None: a fresh start). In a distributed run the main process
    recovers and the others wait for it."""
    if accelerator is None or accelerator.is_main_process:
        _recover(folder)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    state = folder / "state.json"
    return json.loads(state.read_text()) if state.is_file() else None


class CheckpointWriter:
    """Writes checkpoints, in a background thread when training runs on an accelerator: the loop
    then pays for a copy of the state in host memory instead of the disk write and the GPU keeps
    working while the files land. One write at a time: the next checkpoint, and `wait()`, join the
    one in flight and re-raise its error; the thread is not a daemon, so a crash of the loop still
    lets the write finish. On a CPU the write runs in the loop's thread: there the copy and the
    write take the compute threads' own cores, and on 2 cores the gain was within the machine's
    noise (benchmarks/checkpoint_overhead.py: 0.8 s vs 1.8 s per checkpoint in one run, 3.4 s vs
    3.0 s in another) while the copy doubles the memory the state takes. A copy that would not fit
    comfortably in free host memory is never made (a large model writes in the loop's thread)."""

    def __init__(self, background: bool | None = None) -> None:
        """background: None = on an accelerator only (see above)."""
        self.background = background
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def save(
        self,
        folder: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        state: dict,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.wait()
        background = self.background
        if background is None:
            background = any(p.device.type != "cpu" for p in model.parameters())
        copy = background and _copy_fits(model, optimizer)
        snapshot = checkpoint_snapshot(model, optimizer, scheduler, state, extra, copy=copy)
        if not copy:  # written now, in this thread
            write_checkpoint(folder, snapshot)
            return
        self._thread = threading.Thread(
            target=self._write, args=(folder, snapshot), name="tokenforget-checkpoint"
        )
        self._thread.start()

    def _write(self, folder: Path, snapshot: CheckpointSnapshot) -> None:
        try:
            write_checkpoint(folder, snapshot)
        except BaseException as error:  # re-raised in the training thread by wait()
            self._failure = error

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise RuntimeError(f"writing a checkpoint failed: {failure}") from failure


def _fused_adamw(params: Sequence[torch.nn.Parameter], accelerator: Any) -> bool | None:
    """AdamW's fused kernel where it is known to work: float parameters on CPU or CUDA, one process or
    DDP. On this project's CPU one step over SmolLM2-135M's parameters takes 0.13-0.14 s fused against
    0.67-0.86 s for the default per-parameter loop, with the same update up to float rounding
    (`python benchmarks/optimizer_step.py`). None keeps
    PyTorch's choice (FSDP and DeepSpeed shard or replace the optimizer)."""
    if distributed_kind(accelerator) not in DATA_PARALLEL:
        return None
    usable = all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)
    return True if params and usable else None


def _copy_fits(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """A CPU copy of the trainable weights and the optimizer state takes under a quarter of the
    free memory."""
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    for per_param in optimizer.state.values():
        nbytes += sum(v.numel() * v.element_size() for v in per_param.values() if isinstance(v, torch.Tensor))
    return fits_in_free_memory(nbytes, 0.25)


def load_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    extra: dict[str, Any] | None = None,
) -> dict | None:
    """Restore a checkpoint written by `CheckpointWriter`; None when there is none."""
    saved = resume_state(folder)
    if saved is None:
        return None
    weights = load_file(folder / "trainable.safetensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    if (folder / "optimizer.json").is_file():
        skeleton = json.loads((folder / "optimizer.json").read_text())
        blob = _join_tensors(skeleton, load_file(folder / "optimizer.safetensors"))
    else:  # an older checkpoint (pickled); weights_only refuses anything but tensors and containers
        blob = torch.load(folder / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["rng"])
    for name, obj in (extra or {}).items():
        obj.load_state_dict(blob["extra"][name])
    return saved


# ----------------------------------------------------------------------------- sharded runs

DATA_PARALLEL = ("NO", "MULTI_CPU", "MULTI_GPU")  # every process holds the whole model
SHARDED = ("FSDP", "DEEPSPEED")


def distributed_kind(accelerator: Any) -> str:
    """accelerate's DistributedType as a plain name ("NO" without an accelerator)."""
    kind = getattr(accelerator, "distributed_type", None)
    return "NO" if kind is None else str(getattr(kind, "value", kind))


def _written_files(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under a checkpoint folder but state.json (the stamp holding them)."""
    return {
        p.relative_to(folder).as_posix(): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "state.json"
    }


def sharded_stamp_problem(folder: Path, saved: dict, run: str) -> str | None:
    """Why a sharded checkpoint is not one this run wrote (None: it is). accelerate's `load_state`
    unpickles its RNG and scheduler files, so it only ever reads a folder whose stamp names this run
    and whose every file still has the hash recorded when this run wrote it."""
    stamp = saved.get("stamp")
    if not isinstance(stamp, dict) or stamp.get("run") != run:
        return "it was not written by this run (its stamp names other settings, or none)"
    if _written_files(folder) != stamp.get("files"):
        return "its files differ from the ones this run wrote"
    return None


def save_sharded_checkpoint(accelerator: Any, folder: Path, state: dict, run: str) -> None:
    """FSDP / DeepSpeed: every process writes its part of the model and optimizer through
    accelerate's `save_state` (with the RNG states and the objects registered for checkpointing);
    the main process adds state.json, stamped with `run` (a digest of the run's settings) and the
    hash of every file written, and renames the folder into place, as `write_checkpoint` does.
    accelerate pickles the RNG and scheduler states: only this run reads them back, after checking
    the stamp (`load_sharded_checkpoint`)."""
    staging = folder.with_name(folder.name + ".tmp")
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        stamp = {"run": run, "files": _written_files(staging)}
        (staging / "state.json").write_text(json.dumps({**state, "stamp": stamp}, indent=2))
        _swap_into_place(staging, folder)
    accelerator.wait_for_everyone()


def load_sharded_checkpoint(accelerator: Any, folder: Path, run: str) -> dict | None:
    """Restore what `save_sharded_checkpoint` wrote for this run; None when there is none. A folder
    this run did not write is refused before anything in it is unpickled."""
    saved = resume_state(folder, accelerator)
    if saved is None:
        return None
    problem = sharded_stamp_problem(folder, saved, run)
    if problem:
        raise RuntimeError(
            f"will not resume from {folder}: {problem}. Resuming a sharded run unpickles accelerate's "
            "files, so only a checkpoint this run wrote is read. Delete the folder to start over."
        )
    accelerator.load_state(str(folder))
    return {k: v for k, v in saved.items() if k != "stamp"}


# ----------------------------------------------------------------------------- the loop


@dataclass
class FitSettings:
    epochs: float
    lr: float
    batch_size: int
    micro_batch_size: int
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 0
    checkpoint_every: int = 10


@dataclass
class FitResult:
    steps: int
    tokens: int
    seconds: float
    final_loss: float
    losses: list[float] = field(default_factory=list)


class _StopRequest:
    """Ctrl-C sets a flag; the loop saves a checkpoint at the end of the step and exits."""

    def __init__(self) -> None:
        self.stop = False
        self._previous = None

    def __enter__(self) -> _StopRequest:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, *_: object) -> None:
        if self.stop:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *_: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class Interrupted(Exception):
    """Training stopped by Ctrl-C after saving a checkpoint; run the command again to resume."""


StepFn = Callable[[int], tuple[dict[str, float], int]]


@dataclass
class LoopState:
    """Where a run stands; checkpointed as JSON next to the weights."""

    step: int = 0
    tokens: int = 0
    losses: list[float] = field(default_factory=list)


def run_steps(
    model: torch.nn.Module,
    total: int,
    step_fn: StepFn,
    settings: FitSettings,
    checkpoint_dir: Path,
    label: str,
    on_step: Callable[[int, dict[str, float], float], str | None] | None = None,
    accelerator: Any = None,
    max_grad_norm: float = 1.0,
    extra_params: Sequence[torch.nn.Parameter] = (),
    extra_state: dict[str, Any] | None = None,
    prepare: Callable[[torch.optim.Optimizer], tuple[Any, list[torch.nn.Parameter]]] | None = None,
) -> FitResult:
    """The optimisation loop every trainer shares: AdamW + linear warm-up, resumable checkpoints,
    a NaN/inf guard that names the step and the loss term, Ctrl-C that saves, a progress bar.

    `step_fn(step)` runs the forward and backward passes of one optimizer step (all its
    micro-batches) and returns ({term: value}, answer tokens); the term "loss" is the one optimised.
    With an `accelerator` (distributed runs) only the main process writes checkpoints.
    `extra_params` join the optimizer (ATWU's joint control); `extra_state` objects are checkpointed
    with everything else (ATWU's scorer, its optimizer and scheduler), so resume is exact.
    `on_step(step, parts, lr)` sees every finished step (training logs); when it returns a reason
    (a stop condition of the in-training evaluation) training ends at that step.
    Under FSDP or DeepSpeed (`SHARDED`), `prepare(optimizer)` hands the optimizer to accelerate
    together with the model (both are sharded, or replaced, as one) and returns the prepared
    optimizer and the prepared model's parameters (the ones to clip); checkpoints then go through
    accelerate (`save_sharded_checkpoint`). DeepSpeed applies the update inside the last
    micro-batch's backward pass, before this loop sees the losses: there a NaN/inf stops the run
    without a new checkpoint (the last periodic one is kept).
    """
    from transformers import get_linear_schedule_with_warmup

    from tokenforget.progress import console, training_progress

    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
    optimizer = torch.optim.AdamW(
        params, lr=settings.lr, weight_decay=settings.weight_decay, fused=_fused_adamw(params, accelerator)
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, round(settings.warmup_ratio * total), total)
    kind = distributed_kind(accelerator)
    sharded = kind in SHARDED
    # what makes a sharded checkpoint this run's (how often it is written does not)
    shape = {k: v for k, v in vars(settings).items() if k != "checkpoint_every"}
    world = getattr(accelerator, "num_processes", 1)
    run_stamp = Stamp("checkpoint", {"label": label, "total": total, "world": world, **shape}).key
    if sharded:
        if prepare is None or extra_params or extra_state:
            raise ValueError(f"a {kind} run needs `prepare`, and cannot train extra parameters or state")
        optimizer, params = prepare(optimizer)
        accelerator.register_for_checkpointing(scheduler)
        saved = load_sharded_checkpoint(accelerator, checkpoint_dir, run_stamp)
    else:
        saved = load_checkpoint(checkpoint_dir, model, optimizer, scheduler, extra_state)
    if saved is not None and saved.get("total_steps", total) != total:
        raise RuntimeError(
            f"checkpoint in {checkpoint_dir} is for {saved['total_steps']} steps, this run has "
            f"{total}: the settings changed. Delete the folder to start over."
        )
    state = LoopState(**{k: saved[k] for k in ("step", "tokens", "losses")}) if saved else LoopState()
    main = accelerator is None or accelerator.is_main_process
    writer = CheckpointWriter()

    def checkpoint(landed: bool = False) -> None:
        """landed: return only once the files are on disk (the loop is about to stop)."""
        if sharded:
            save_sharded_checkpoint(
                accelerator, checkpoint_dir, {**vars(state), "total_steps": total}, run_stamp
            )
            return
        if main:
            writer.save(
                checkpoint_dir,
                model,
                optimizer,
                scheduler,
                {**vars(state), "total_steps": total},
                extra_state,
            )
            if landed:
                writer.wait()
        if accelerator is not None:
            accelerator.wait_for_everyone()

    if state.step and main:
        console.print(f"[yellow]{label}[/]: resuming from step {state.step}/{total} ({checkpoint_dir})")
    model.train()
    started = time.perf_counter()
    tokens_now = 0
    try:
        # frozen layers (a LoRA base model) on prepacked weights; a sharded model's are not whole
        packing = contextlib.nullcontext() if sharded else packed_linears(model, training=True, dtype=None)
        with _StopRequest() as stop, training_progress(label, total, state.step) as bar, packing:
            for step in range(state.step, total):
                parts, n_tokens = step_fn(step)
                bad = [name for name, value in parts.items() if not math.isfinite(value)]
                if bad:
                    if kind == "DEEPSPEED":  # the engine already stepped on these gradients
                        kept = f"the last periodic checkpoint (if any) is in {checkpoint_dir}"
                    else:
                        checkpoint(landed=True)  # the weights before this step: resume at a lower lr
                        kept = f"checkpoint (before this step) kept in {checkpoint_dir}"
                    raise FloatingPointError(
                        f"{label}: loss term {bad[0]!r} is {parts[bad[0]]} at step {step + 1}; {kept}. "
                        "Lower the learning rate and run again."
                    )
                if sharded:  # FSDP: the norm over every shard; DeepSpeed: clipped in its engine
                    accelerator.clip_grad_norm_(params, max_grad_norm)
                else:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                tokens_now += n_tokens
                state.step = step + 1
                state.tokens += n_tokens
                state.losses.append(round(parts["loss"], 5))
                lr = scheduler.get_last_lr()[0]
                bar.advance(parts, tokens_now / (time.perf_counter() - started), lr)
                if on_step is not None and on_step(step + 1, parts, lr):
                    break  # a stop condition met: this step's weights are the result
                if stop.stop:
                    checkpoint(landed=True)
                    raise Interrupted(
                        f"{label}: stopped at step {step + 1}/{total}; checkpoint saved. "
                        "Run the same command again to resume."
                    )
                if step + 1 < total and (step + 1) % settings.checkpoint_every == 0:
                    checkpoint()
    finally:
        writer.wait()  # a write still in flight lands whatever ended the loop
    return FitResult(
        steps=state.step,
        tokens=state.tokens,
        seconds=time.perf_counter() - started,
        final_loss=state.losses[-1] if state.losses else float("nan"),
        losses=state.losses,
    )


def fit_nll(
    model: torch.nn.Module,
    encoded: Sequence[Encoded],
    pad_id: int,
    precision: Precision,
    settings: FitSettings,
    checkpoint_dir: Path,
    label: str = "train",
    on_step: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Answer-only NLL fine-tuning (mean over the answer tokens of each optimizer step), resumable."""
    torch.manual_seed(settings.seed)
    lengths = [len(e.input_ids) for e in encoded]
    schedule = batch_schedule(lengths, settings.batch_size, settings.epochs, settings.seed)

    def step_fn(step: int) -> tuple[dict[str, float], int]:
        indices = schedule[step]
        n_tokens = sum(encoded[i].n_answer for i in indices)
        step_loss = 0.0
        for start in range(0, len(indices), settings.micro_batch_size):
            micro = [encoded[i] for i in indices[start : start + settings.micro_batch_size]]
            batch = {k: v.to(precision.device) for k, v in pad_batch(micro, pad_id).items()}
            with precision.autocast():
                fwd = answer_forward(model, batch)
            loss = token_nll(fwd).sum() / n_tokens
            loss.backward()
            step_loss += loss.item()
        return {"loss": step_loss}, n_tokens

    report = None if on_step is None else (lambda step, parts, lr: on_step(step, parts["loss"]))
    return run_steps(model, len(schedule), step_fn, settings, checkpoint_dir, label, report)


def iter_chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
