"""General capability through lm-evaluation-harness: its tasks on our loaded model, at our precision.

`tokenforget eval harness` hands the model tokenforget loaded (`models.load_model`, so a run's
unlearned model, a quantized copy or a LoRA-merged folder all load the same way) to the harness's
own Hugging Face wrapper (`HFLM(pretrained=model)`), with bf16 autocast where `model.precision`
resolves to it. Any task the harness knows (MMLU, ARC, HellaSwag, ...; downloaded by `datasets` on
first use) runs by name, and the project's own local tasks run offline:

- `tofu_world_facts_mc`: TOFU's 117 world-facts questions (MIT licence, bundled) as multiple choice
  between the true answer and TOFU's three perturbed answers, scored by log-likelihood.

Results land in `harness.json` (the harness's results and versions, per task), which the run report
shows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tokenforget.config import ModelSettings
from tokenforget.data.benchmarks import bundled_file
from tokenforget.errors import TokenforgetError
from tokenforget.models import load_model
from tokenforget.progress import console

HARNESS_FILE = "harness.json"
LOCAL_TASKS: dict[str, dict[str, Any]] = {
    "tofu_world_facts_mc": {
        "task": "tofu_world_facts_mc",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(bundled_file("world_facts_perturbed"))}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{[answer] + perturbed_answer}}",
        "doc_to_target": 0,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
}


def task_specs(names: list[str]) -> list[str | dict[str, Any]]:
    """The harness's task arguments: a local task as its config, any other name as it is."""
    return [LOCAL_TASKS.get(name, name) for name in names]


def run_harness(
    settings: ModelSettings,
    model_name: str,
    tasks: list[str],
    out: Path,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Run the harness's `tasks` on the model and write `out/harness.json`; returns its content."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as exc:
        raise TokenforgetError(
            f"eval harness needs lm-evaluation-harness ({exc}): pip install 'tokenforget[harness]'"
        ) from exc
    model, tokenizer, precision = load_model(settings, model_name)
    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        device=str(precision.device),
        batch_size=batch_size,
        mixed_precision_dtype=precision.autocast_dtype,
    )
    console.print(f"[bold]harness[/] {', '.join(tasks)} on {model_name} ({precision.label})")
    started = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=task_specs(tasks),
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=False,
        bootstrap_iters=0,
    )
    if results is None:  # only on a non-zero rank of a multi-process run
        return {}
    record = {
        "model": model_name,
        "precision": precision.label,
        "tasks": tasks,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "lm_eval": lm_eval.__version__,
        "seconds": round(time.perf_counter() - started, 1),
        "results": results["results"],
        "n_samples": results.get("n-samples", {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{HARNESS_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(out / HARNESS_FILE)
    return record
