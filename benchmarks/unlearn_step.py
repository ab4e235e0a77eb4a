"""Step time and peak memory of the unlearning methods vs a plain fine-tuning step and vs the
published TPO recipe's cost shape, on SmolLM2-135M-Instruct, as ratios measured in one run.

    .venv/bin/python benchmarks/unlearn_step.py [--repeats 5] [--out benchmarks/results/unlearn_step.json]

Every variant runs in a fresh process on the same batch: the first 8 TOFU-mini forget answers (with
the paper's GPT-4o UW labels, `forget01_gpt.jsonl` in the folder given with `--labels`: see
`published.py`) and, for terms that need it, the first 8 retain answers. One warm-up step, then the
median of `--repeats` steps (forward + backward + AdamW). Variants:

- plain: what a user writes with transformers: `model(input_ids, labels=...).loss` (full logits) on
  the forget batch, AdamW step;
- ours (tpo, npo, simnpo, ga, graddiff, weighted_ga): tokenforget's own training step
  (`unlearn.Session.micro_loss`: one policy forward for forget + retain rows, LM head at answer
  positions, theta0 from the reference cache, not in memory);
- atwu vs atwu_fixed: ATWU's step with a scorer update after every model step (the worst case; the
  authors update every 5th step) vs the same weighted loss with fixed weights (the span labels);
- published_tpo: the cost shape of the published TPO code: two full policy forwards (one for LPL,
  one for PL) and one full forward of a frozen theta0 copy held in memory, every step.

Peak memory on the CPU: the process's resident-set high-water mark (VmHWM, reset through
/proc/self/clear_refs before each step's forward, read after its backward: the optimizer update is
the same for every variant), minus the resident size after the imports and before the model is
loaded; glibc is told to return every freed block of 64 KiB or more (MALLOC_MMAP_THRESHOLD_), so
the resident size follows the live tensors. "static" = weights + gradients + AdamW state of the
trainable parameters (from their sizes); "above_static" = peak - static (activations, logits,
theta0 copies).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from published import add_labels_argument, gpt_labels

REPO = Path(__file__).resolve().parents[1]
OURS = {
    "tpo": ("tpo", "all"),
    "npo": ("npo", "all"),
    "simnpo": ("simnpo", "all"),
    "ga": ("ga", "all"),
    "graddiff": ("graddiff", "all"),
    "weighted_ga": ("ga", "weighted"),
    "atwu": ("atwu", "all"),
    "atwu_fixed": ("atwu", "all"),
}
FULL = ["plain", *OURS, "published_tpo"]
LORA = ["plain", "tpo", "npo", "published_tpo"]


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def forget_file(folder: Path, labels: Path) -> Path:
    path = folder / "forget8.jsonl"
    path.write_text("".join(gpt_labels(labels).read_text(encoding="utf-8").splitlines(keepends=True)[:8]))
    return path


def one(variant: str, lora: bool, repeats: int, labels: Path) -> dict:
    """Measure one variant in this process."""
    import accelerate  # noqa: F401  (imported before the baseline so library code is not counted)
    import peft  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    from tokenforget.atwu import scorer_optimizer
    from tokenforget.config import load_config
    from tokenforget.data import pad_batch
    from tokenforget.distributed import make_accelerator
    from tokenforget.losses import at_reference
    from tokenforget.models import load_model
    from tokenforget.session import start_session

    baseline = rss_kib("VmRSS")
    work = Path(tempfile.mkdtemp())
    method, tokens = OURS.get(variant, ("tpo", "all"))
    overrides = [
        f"data.forget={forget_file(work, labels)}",
        "data.retain=tofu-mini",
        f"unlearn.method={method}",
        f"unlearn.tokens={tokens}",
    ]
    if lora:
        overrides.append("unlearn.lora.r=32")
    if variant == "atwu":
        overrides.append("atwu.update_every=1")  # the worst case: a scorer step after every model step
    cfg = load_config(overrides=overrides)
    session = start_session(cfg, work, make_accelerator(cfg))  # reference pass happens here, untimed
    model, precision = session.model, session.precision
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    forget_rows = list(range(8))
    retain_rows = list(range(8)) if session.retain else []
    batch = pad_batch([session.forget[i] for i in forget_rows], session.tokenizer.pad_token_id)
    theta0 = None
    if variant == "published_tpo":
        theta0, _, _ = load_model(cfg.model)
        theta0.requires_grad_(False).eval()  # the policy is already LoRA-wrapped when lora is set

    def published_step() -> torch.Tensor:
        """Two policy forwards and one theta0 forward, full (B, T, V) logits each (published shape)."""
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        shifted = labels[:, 1:]
        uw = batch["uw_mask"][:, 1:] & (shifted != -100)
        gw = ~batch["uw_mask"][:, 1:] & (shifted != -100)
        gather = shifted.clamp_min(0)[..., None]
        with precision.autocast():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            with torch.no_grad():
                ref = theta0(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            z = logits.gather(-1, gather).squeeze(-1)
            z0 = ref.gather(-1, gather).squeeze(-1)
            count = uw.sum(1).clamp_min(1)
            delta = ((z0 * uw).sum(1) / count).mean() - ((z * uw).sum(1) / count).mean()
            lpl = -(2 / 0.3) * torch.nn.functional.logsigmoid(0.3 * delta)
            logits2 = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            nll = -logits2.log_softmax(-1).gather(-1, gather).squeeze(-1)
            pl = (nll * gw).sum(1).mean()
        return lpl + pl

    def plain_step() -> torch.Tensor:
        with precision.autocast():
            return model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).loss

    scorer_opt = None
    if variant == "atwu_fixed":
        session.scorer = None  # the same loss with the span labels as fixed weights, no scorer
    elif session.scorer is not None:
        scorer_opt, _ = scorer_optimizer(session.scorer, 0.05, 100)

    def ours_step() -> torch.Tensor:
        result = session.micro_loss(forget_rows, retain_rows, scorer_grad=scorer_opt is not None)
        if result.scorer_total is not None:
            result.scorer_total.backward()
            scorer_opt.step()
            scorer_opt.zero_grad(set_to_none=True)
        return result.terms.total

    step = {"plain": plain_step, "published_tpo": published_step}.get(variant, ours_step)
    if variant in ("tpo", "npo"):
        with torch.no_grad():  # no graph kept alive into the measured steps
            first = session.micro_loss(forget_rows, retain_rows).terms
        key = "lpl" if variant == "tpo" else "forget"
        identity = abs(float(first.parts[key]) - at_reference(session.settings.beta))
        del first
        # the cache is aligned; fp32 sums over ~30 tokens padded differently differ by ~1e-5 a token
        assert identity < 2e-3, f"step-0 identity broken: {identity}"
    times, peaks = [], []
    for _ in range(repeats + 1):
        reset_peak()
        started = time.perf_counter()
        loss = step()
        loss.backward()
        peaks.append(rss_kib("VmHWM"))  # forward + backward: where the methods differ
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    peak_mib = (max(peaks[1:]) - baseline) / 1024
    trainable = sum(p.numel() * p.element_size() for p in params)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    static_mib = (weights + trainable + 2 * trainable) / 2**20  # weights + grads + Adam moments
    return {
        "variant": variant,
        "lora": lora,
        "median_s": round(statistics.median(times[1:]), 3),
        "step_seconds": [round(t, 3) for t in times],
        "peak_mib": round(peak_mib, 1),
        "static_mib": round(static_mib, 1),
        "above_static_mib": round(peak_mib - static_mib, 1),
        "theta0_in_memory": theta0 is not None or session.ref_model is not None,
        "answer_tokens": int((batch["labels"] != -100).sum()),
        "precision": precision.label,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    add_labels_argument(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/unlearn_step.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--lora", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.lora, args.repeats, args.labels)))
        return
    # glibc returns freed blocks of 64 KiB or more to the OS at once, so the resident size tracks
    # the live tensors and the high-water mark is the real peak, not allocator leftovers
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    rows = []
    for lora, variants in ((False, FULL), (True, LORA)):
        for variant in variants:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                variant,
                "--repeats",
                str(args.repeats),
                "--labels",
                str(args.labels),
            ]
            done = subprocess.run(cmd + (["--lora"] if lora else []), capture_output=True, text=True, env=env)
            if done.returncode:
                raise SystemExit(f"{variant} (lora={lora}) failed:\n{done.stderr[-3000:]}")
            row = json.loads(next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))[7:])
            rows.append(row)
            print(json.dumps(row), flush=True)

    def get(variant: str, lora: bool) -> dict:
        return next(r for r in rows if r["variant"] == variant and r["lora"] == lora)

    ratios = {}
    for lora, variants in ((False, FULL), (True, LORA)):
        tag = "lora" if lora else "full"
        plain, published = get("plain", lora), get("published_tpo", lora)
        for variant in variants:
            row = get(variant, lora)
            ratios[f"{tag}/{variant}_over_plain_time"] = round(row["median_s"] / plain["median_s"], 3)
        tpo = get("tpo", lora)
        if not lora:
            ratios["full/atwu_over_fixed_weights_time"] = round(
                get("atwu", lora)["median_s"] / get("atwu_fixed", lora)["median_s"], 3
            )
        ratios[f"{tag}/tpo_speedup_over_published"] = round(published["median_s"] / tpo["median_s"], 3)
        ratios[f"{tag}/tpo_over_published_peak_memory"] = round(tpo["peak_mib"] / published["peak_mib"], 3)
        ratios[f"{tag}/tpo_over_published_above_static"] = round(
            tpo["above_static_mib"] / published["above_static_mib"], 3
        )
    result = {
        "command": f"python benchmarks/unlearn_step.py --repeats {args.repeats}",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__,
        },
        "batch": "8 TOFU-mini forget answers (+ 8 retain answers for graddiff), SmolLM2-135M-Instruct",
        "ratios": ratios,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
