"""The `tokenforget` command line: thin commands over the library (every one is a Python call too)."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, NamedTuple

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tokenforget.config import Config, config_keys, load_config
from tokenforget.errors import DataError, TokenforgetError
from tokenforget.inputs import check_files
from tokenforget.report import KEY_METRICS

out = Console()
err = Console(stderr=True)

HELP = """\
tokenforget: make a Hugging Face language model forget specific information (private facts,
copyrighted passages) while keeping everything else, token by token.

The workflow, each step a command and a Python call:

\b
  prepare   make the target and retain models of a benchmark (TOFU-mini ships inside the package)
  run       the main job: prepare -> identify -> unlearn -> evaluate -> report, in runs/<name>/
  data      validate your forget/retain files (JSONL or CSV) before anything reads them
  identify  label the unwanted words of each forget answer (7 identifiers), grade a labelling
  unlearn   make a model forget a forget set (TPO and every baseline), resumable, DDP-ready
  eval      TOFU logs + summary, MUSE, membership attacks, KL, token-level forgetting (UW vs GW),
            lm-evaluation-harness tasks
  config    list every setting, show the resolved config, print its JSON schema
  model     convert the embedded default model (SmolLM2-135M-Instruct) once, show where it is
  attack    does the forgetting hold? relearning and quantization attacks against the retain model's yardstick
  compare   put finished runs on the forget-quality / utility plane, each method's frontier
  sweep     the main job over a grid of settings (one resumable run folder per point)
  ask       ask one question to several models side by side (before / after unlearning)
  receipt   verify a run's receipt.json (hashes of the models, forget data and config)

\b
Settings: every command takes --config FILE.yaml and any number of --set section.key=value
(`tokenforget config keys` lists them all with defaults), e.g.
  tokenforget prepare tofu-mini --set prepare.lr=5e-4 --set prepare.lora=null
Models: 'smollm2-135m-instruct' (embedded, offline), a local save_pretrained folder, or a hub name.
"""

app = typer.Typer(help=HELP, no_args_is_help=True, rich_markup_mode=None, add_completion=False)
data_app = typer.Typer(help="Validate and inspect data files.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect settings.", no_args_is_help=True)
model_app = typer.Typer(help="The embedded default model.", no_args_is_help=True)
eval_app = typer.Typer(
    help="Evaluate models and summarise eval logs (TOFU; ours or published).", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")
app.add_typer(model_app, name="model")
app.add_typer(eval_app, name="eval")
attack_app = typer.Typer(
    help="Does the forgetting hold? Attacks on an unlearned model, each against the retain model as "
    "the yardstick (what a model that never saw the forget set does under the same attack).",
    no_args_is_help=True,
)
app.add_typer(attack_app, name="attack")
IDENTIFY_HELP = """Label which words of each forget answer are unwanted (UW); everything else is general (GW).

\b
  tokenforget identify --method NAME --forget DATA --out identified.jsonl [--model M]
  tokenforget identify score --pred A.jsonl --gold B.jsonl

\b
Identifiers (--method):
{identifiers}

\b
identified.jsonl: one line per sample with question, answer, spans [{start, end, text, score}]
(UW character ranges in the answer), identifier and settings. The paper's published layout
(target_words / common_words, JSONL or save_to_disk folder) is read everywhere too."""


def _identifiers_help() -> str:
    """One entry per registered identifier, for `identify --help`."""
    from tokenforget.identify.registry import IDENTIFIERS

    return _listing((kind.name, kind.summary) for kind in IDENTIFIERS.values())


def _listing(rows: Iterable[tuple[str, str]], width: int = 15) -> str:
    """`  name  text` rows, the text wrapped under itself (help blocks click leaves as they are)."""
    lines = []
    for name, text in rows:
        wrapped = textwrap.wrap(text, 96 - width - 3) or [""]
        lines.append(f"  {name:<{width}} {wrapped[0]}")
        lines.extend(" " * (width + 3) + more for more in wrapped[1:])
    return "\n".join(lines)


identify_app = typer.Typer(
    help=IDENTIFY_HELP.replace("{identifiers}", _identifiers_help()),
    invoke_without_command=True,
    no_args_is_help=True,
)
app.add_typer(identify_app, name="identify")

RUN_HEADLINE = (*KEY_METRICS, "forget_Q_A_ROUGE")
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file with settings (applied first).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override one setting: section.key=value (repeatable). See `config keys`."
    ),
]


def _config(config: Path | None, overrides: list[str] | None, extra: list[str] | None = None) -> Config:
    return load_config(config, [*(extra or []), *(overrides or [])])


def _print_prepared(prepared: object) -> None:
    from tokenforget.prepare import rouge_table

    report = prepared.report  # type: ignore[attr-defined]
    table = Table(title="Greedy ROUGE-L recall (answers vs ground truth)")
    table.add_column("model")
    for name in ("forget", "real_authors", "world_facts"):
        table.add_column(name, justify="right")
    for model, scores in rouge_table(report):
        table.add_row(
            model, *(f"{scores.get(k, float('nan')):.3f}" for k in ("forget", "real_authors", "world_facts"))
        )
    out.print(table)
    out.print(f"retain model: {prepared.retain}\ntarget model: {prepared.target}")  # type: ignore[attr-defined]
    out.print("seconds: " + json.dumps(report.get("seconds", {})))


@app.command()
def prepare(
    benchmark: Annotated[
        str, typer.Argument(help="tofu-mini (embedded, offline) or tofu (full; --set data.tofu=DIR|hub)")
    ] = "tofu-mini",
    model: Annotated[
        str | None, typer.Option(help="Base model (default: the embedded SmolLM2-135M-Instruct).")
    ] = None,
    recipe: Annotated[
        str | None, typer.Option(help="independent (default, TOFU's protocol) or nested; see `config keys`.")
    ] = None,
    vital_signs: Annotated[
        bool, typer.Option(help="Evaluate the world's target and retain models after preparing them.")
    ] = True,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Fine-tune the base model into the benchmark's target and retain models (cached, resumable).

    Kill it at any time and run it again: it continues from the last checkpoint. The models land in
    $TOKENFORGET_CACHE/prepared/ (default ~/.cache/tokenforget) with the recipe next to them, and a
    greedy ROUGE-L table shows that the target knows the forget set and the retain model does not.

    \b
    Then the world's vital signs: forget quality and model utility of both models (TOFU's
    evaluation, kept for every run in this world), and how far the retain model sits below the
    target on the forget answers' unwanted (UW) and general (GW) tokens, when gold labels are given
    (--set eval.token_labels=FILE). A world whose retain model sits far below the target on GW
    rewards methods that push every token down; say which world a verdict comes from.
    """
    import yaml

    from tokenforget.data.benchmarks import load_benchmark
    from tokenforget.disk import check_space, world_needs
    from tokenforget.pipeline import world_vital_signs
    from tokenforget.prepare import prepare as run_prepare
    from tokenforget.prepare import prepared_folder

    if benchmark not in {"tofu-mini", "tofu"}:
        raise TokenforgetError(f"unknown benchmark {benchmark!r}: use tofu-mini or tofu")
    extra = [f"run.benchmark={benchmark}"]
    if model:
        extra.append(f"model.name={model}")
    if recipe:
        extra.append(f"prepare.recipe={recipe}")
    cfg = _config(config, set_, extra)
    check_space(world_needs(cfg, prepared_folder(cfg)))
    prepared = run_prepare(cfg)
    _print_prepared(prepared)
    if not vital_signs:
        return
    signs = world_vital_signs(cfg, load_benchmark(cfg), prepared)
    prepared.report["vital_signs"] = signs
    (prepared.folder / "report.json").write_text(json.dumps(prepared.report, indent=2))
    out.print("[bold]world vital signs[/]")
    out.print(yaml.safe_dump(signs, sort_keys=False).rstrip(), highlight=False)


@app.command()
def run(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """The main job on TOFU-mini and the embedded default model, in runs/<run.name>/.

    \b
    prepare   target + retain models of the benchmark (cached in $TOKENFORGET_CACHE): TOFU's
              protocol, both trained from the base model (LoRA, 3 epochs each)
    identify  label the unwanted words of the forget set (identify.method, default predictability)
    unlearn   unlearn.method (default npo_kl_uw: NPO on the unwanted-word tokens only, 10 x
              KL to the target on the retain answers) on the target model, lr 3e-5 for 10
              epochs (50 steps, at least 25), 10 % warm-up
    eval      TOFU summary, token-level forgetting and KL on retain for unlearned, target, retain
    report    report.html (open it in a browser), summary.json, receipt.json

    The defaults meet issue 21's goal on this world in every seed (README, "Does token-level
    unlearning win?"): forget quality 0.766 / 0.99 / 0.766 over three seeds at 0.98-1.00x the
    target's utility, KL on retain 0.016-0.019, below the sample-level NPO+RT's (0.919 / 0.99 /
    0.919, KL 0.04-0.09). On your own forget set with spans marked by hand
    (identify.method=spans, a deletion request) they unlearn until no span comes out of the
    greedy answers (unlearn.stop_when=auto), each token pushed on its own (unlearn.ratio=auto):
    a four-answer request ended clean in each of three seeds at 0.965-1.03x the memorised
    model's utility (README, "Unlearning"). Which is which: --set unlearn.method=npo_rt_uw is
    the default before (retain NLL; 0.766 / 0.919 / 0.99 at KL 0.09-0.11), --set
    unlearn.method=tpo the paper's TPO alone (no retain set needed, lr about 1e-4), --set
    unlearn.method=tpo_gd the paper's TPO+GD, --set unlearn.method=tpo_kl --set
    unlearn.lr=1.25e-4 our TPO variant (hinge PL, 3 x KL to the target on the retain answers;
    0.097 / 0.165 / 0.165), --set unlearn.method=npo_rt the sample-level NPO+RT.

    Each stage skips work already done (the run folder is the cache; a killed run resumes).
    Swap any stage by config: --set unlearn.method=tpo_kl, --set identify.method=ner,
    --set unlearn.tokens=all, --set eval.token_labels=gold.jsonl, --set
    prepare.recipe=nested, --set run.name=exp2 (a new folder for a new config).
    """
    from tokenforget.pipeline import run as run_pipeline

    result = run_pipeline(_config(config, set_))
    summary = result.summary
    subject = summary["benchmark"] or summary["forget_data"]  # a benchmark, or the user's forget file
    table = Table(title=f"{summary['method']} on {subject} (identifier {summary['identifier']})")
    table.add_column("metric")
    models = list(summary["headline"])
    for name in models:
        table.add_column(name, justify="right")
    for key in RUN_HEADLINE:
        table.add_row(key, *(_fmt(summary["headline"][m].get(key)) for m in models))
    out.print(table)
    for sentence in summary.get("verdict", []):
        out.print(sentence, highlight=False)
    out.print(
        "stage times (s): "
        + ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in summary["stage_seconds"].items())
    )
    out.print(f"run folder: {result.folder.resolve()}")
    out.print(f"report: {result.report.resolve()}")


@app.command()
def compare(
    runs: Annotated[
        list[Path], typer.Argument(help="Run folders (with summary.json), or a folder of run folders.")
    ],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the page.")] = Path("compare.html"),
) -> None:
    """Put finished runs on one forget-quality vs model-utility plane, with the Pareto frontier.

    compare.html (self-contained) shows every run as a point, the frontier (no other run better in
    both), the target and retain models as references, each method's frontier (the highest forget
    quality it reaches at model utility >= 0.8, 0.9 and 0.95x the target's, and its best run by
    that rule at 0.9x, ties to the lower KL on retain), and the table sorted frontier first. A
    method's group is its name with the settings it changed (`tpo lpl_space=centered`). Runs that
    differ only in `unlearn.seed` are one point, read at its lowest seed (the grid's), with the best
    point's other seeds beside it; runs with the same settings made by different code (each
    receipt's source fingerprint) are separate points, and compare says so. Runs that unlearned
    different models (another world, or the same prepare settings made on another CPU) are refused:
    compare each set on its own.
    """
    from tokenforget.report import (
        ROBUSTNESS,
        by_starting_model,
        same_settings_other_code,
        seeds_text,
        starting_models_text,
        utility_frontier,
        write_compare,
    )

    found = _finished_runs(runs)
    if not found:
        raise TokenforgetError(f"no finished run (summary.json) in {', '.join(map(str, runs))}")
    starts = by_starting_model(found)
    if len(starts) > 1:
        raise TokenforgetError(
            "these runs did not unlearn the same model, so their forget quality and utility are not on "
            f"one scale:\n{starting_models_text(starts)}\ncompare each group on its own (tokenforget "
            "compare RUN... --out PAGE). The same prepare settings made on another CPU give another "
            "target; each receipt.json's input_model.sha256 names the model a run started from."
        )
    for line in same_settings_other_code(found):
        out.print(
            Text(
                f"note: same settings, different code: {line}. They are separate points here (the "
                "frontier takes the better), not seeds of one; compare them on their own to see what "
                "the change did."
            ),
            style="yellow",
        )
    rows = write_compare(out_file, found)
    table = Table(title=f"{len(rows)} runs, Pareto frontier first")
    columns = [
        "run",
        "pareto_rank",
        "forget_quality",
        "model_utility",
        "retain_Q_A_ROUGE",
        "uw_leak_rate",
        "kl_on_retain",
    ]
    for column in columns:
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in rows:
        table.add_row(*(_fmt(row.get(c)) for c in columns))
    out.print(table)
    target_utility = found[0][1]["headline"].get("target", {}).get("model_utility")
    if target_utility:
        frontier = Table(
            title="Each method's frontier: highest forget quality at utility >= share x target's"
        )
        entries = utility_frontier(rows, target_utility)
        attacked = [k for k in ROBUSTNESS if any((e["best"] or {}).get(k) is not None for e in entries)]
        seeded = any(len(e["seeds"]) > 1 for e in entries)
        columns = ("method", "runs", "at 0.8x", "at 0.9x", "at 0.95x", "best run (0.9x rule)")
        for column in (*columns, *(["its seeds: FQ (MU / target)"] if seeded else []), *attacked):
            left = column in ("method", "best run (0.9x rule)", "its seeds: FQ (MU / target)")
            frontier.add_column(column, justify="left" if left else "right")
        for entry in entries:
            shares = (_fmt(entry[f"fq_at_{share:g}x"]) for share in (0.8, 0.9, 0.95))
            seeds = [seeds_text(entry["seeds"], target_utility) if len(entry["seeds"]) > 1 else ""]
            after = (_fmt((entry["best"] or {}).get(k)) for k in attacked)
            # Text, not markup: a group's "[ner]" names its identifier
            frontier.add_row(
                Text(entry["group"]),
                str(entry["runs"]),
                *shares,
                entry["best_run"] or "none",
                *(seeds if seeded else []),
                *after,
            )
        out.print(frontier)
    out.print(f"written: {out_file.resolve()}")


def _finished_runs(paths: list[Path]) -> list[tuple[str, dict]]:
    """(name, summary.json with its attack numbers and starting model: `report.run_entry`) of every
    finished run."""
    from tokenforget.report import run_entry

    found = []
    for path in paths:
        candidates = [path] if (path / "summary.json").is_file() else sorted(path.glob("*/summary.json"))
        for candidate in candidates:
            folder = candidate if candidate.is_dir() else candidate.parent
            summary = json.loads((folder / "summary.json").read_text())
            if "headline" in summary:
                found.append(run_entry(folder, summary))
    return found


@app.command()
def sweep(
    grid: Annotated[
        list[str],
        typer.Option(help="section.key=v1,v2,... (repeatable): the grid is every combination."),
    ],
    name: Annotated[str, typer.Option(help="Run name prefix; each point runs in runs/<name>-<point>/.")],
    keep: Annotated[
        str,
        typer.Option(
            help="Whose unlearned weights stay on disk: all, or best (each method's best point by the "
            "stated rule; the others' weights are deleted as the sweep goes, and `tokenforget run "
            "--config runs/NAME/config.yaml` remakes any of them)."
        ),
    ] = "all",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run the main job at every point of a grid (one run folder each, resumable), then compare.

    \b
      tokenforget sweep --name npo --set unlearn.method=npo \\
          --grid unlearn.lr=1e-5,3e-5,1e-4 --grid unlearn.beta=0.1,0.3
    Kill it and run it again: finished points are skipped, an interrupted one resumes.
    Writes runs/<name>-compare.html with every point of the sweep.
    Each run keeps its unlearned model (SmolLM2-135M: 0.5 GB; a 7B model: 14 GB or more). With
    --keep best only each method's best point keeps it: the highest forget quality at >= 0.9x the
    target's model utility, ties to the lower KL on retain (a method with no run there keeps none),
    at every seed run there. With --keep all the whole sweep's room on disk is checked before its
    first point (every unfinished point's unlearned model, each world still to make).
    """
    from tokenforget.disk import check_space
    from tokenforget.pipeline import finished_summary, keep_best_weights, sweep_needs, sweep_points
    from tokenforget.pipeline import run as run_pipeline
    from tokenforget.report import by_starting_model, run_entry, write_compare

    if keep not in ("all", "best"):
        raise TokenforgetError(
            f"--keep {keep!r}: give all (every run's weights) or best (each method's best point)"
        )
    points = sweep_points(grid)
    runs_dir = Path(_config(config, set_).run.runs_dir)
    cfgs = [
        _config(config, [*(set_ or []), *overrides, f"run.name={name}-{label}"])
        for label, overrides in points
    ]
    # a finished point is read, not run (its weights may be gone); a changed config is refused here
    finished = [finished_summary(cfg) for cfg in cfgs]
    unfinished = [cfg for cfg, summary in zip(cfgs, finished, strict=True) if summary is None]
    if keep == "all":  # with --keep best each point checks its own room as it starts
        check_space(sweep_needs(unfinished))
    results = []
    for number, ((label, _), cfg, summary) in enumerate(zip(points, cfgs, finished, strict=True), 1):
        done = " (finished: read, not run)" if summary else ""
        out.print(f"[bold]sweep point {number}/{len(points)}[/]: {label}{done}")
        if summary is None:
            summary = run_pipeline(cfg).summary
        results.append(run_entry(runs_dir / cfg.run.name, summary))
        if keep == "best":
            kept = keep_best_weights(runs_dir, results)
            if kept is None:
                out.print("--keep best: these runs have no target utility to pick a best point by; kept all")
            elif kept[0]:
                gone, freed = kept
                out.print(f"--keep best: deleted the weights of {', '.join(gone)} ({freed / 1e9:.2f} GB)")
    starts = by_starting_model(results)  # a grid over prepare.* makes several worlds: a page each
    for key, members in starts.items():
        page = runs_dir / (f"{name}-compare.html" if len(starts) == 1 else f"{name}-compare-{key[:12]}.html")
        write_compare(page, members)
        out.print(f"compare: {page.resolve()}")


@app.command()
def ask(
    args: Annotated[
        list[str],
        typer.Argument(
            help="One or more models, then the question: a model folder, a run folder "
            "(runs/NAME: its unlearned model), a hub name or smollm2-135m-instruct."
        ),
    ],
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer (tokens).")] = 64,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Ask one question to one or more models side by side (greedy, the training prompt format).

    \b
      tokenforget ask runs/tofu-mini "Where was Basil Mahfouz Al-Kuwaiti born?"
      tokenforget ask ORIGINAL_DIR runs/tofu-mini "Who wrote 'The Bridges of Kuwait'?"
    """
    from tokenforget.data.records import Sample
    from tokenforget.forward.generation import answer_questions
    from tokenforget.models import load_model

    if len(args) < 2:
        raise TokenforgetError('give at least one model and a question: tokenforget ask MODEL "question"')
    *models, question = args
    cfg = _config(config, set_)
    table = Table(title=question, show_lines=True)
    table.add_column("model", style="bold")
    table.add_column("answer")
    for name in models:
        source = _run_model(name)
        model, tokenizer, precision = load_model(cfg.model, source)
        (answer,) = answer_questions(
            model, tokenizer, [Sample(answer=".", question=question)], cfg.prompt, precision, max_new_tokens
        )
        table.add_row(name, answer)
        del model
    out.print(table)


def _run_model(name: str) -> str:
    """A run folder stands for its unlearned model; anything else is passed through."""
    unlearned = _unlearned_model(Path(name))
    if unlearned is not None:
        return str(unlearned)
    for inner in ("unlearn/model", "model"):
        candidate = Path(name) / inner
        if (candidate / "config.json").is_file():
            return str(candidate)
    return name


@app.command("report")
def report_cmd(
    run: Annotated[Path, typer.Argument(help="A run folder of `tokenforget run` (runs/NAME).")],
) -> None:
    """Rebuild RUN/report.html from the run folder's own files (summary.json, report_inputs.json, the
    training and evaluation logs): after a change to the report, or for a folder copied elsewhere."""
    from tokenforget.report import REPORT_INPUTS, write_report

    missing = [name for name in ("summary.json", REPORT_INPUTS) if not (run / name).is_file()]
    if missing:
        raise TokenforgetError(
            f"{run} is not a finished run folder ({', '.join(missing)} missing): give runs/NAME of a "
            "`tokenforget run` that completed, or run it again to finish it"
        )
    out.print(f"report: {write_report(run).resolve()}", soft_wrap=True)


@app.command("receipt")
def receipt_check(
    path: Annotated[Path, typer.Argument(help="A run's receipt.json.")],
    forget: Annotated[
        Path | None,
        typer.Option(help="Your own copy of the forget data: is it the file this run unlearned?"),
    ] = None,
) -> None:
    """Recompute every hash of a run's receipt.json (input model, forget data as given and as
    labelled, config, output model); with --forget FILE, say whether FILE is the forget data the run
    was given (SHA-256 of its bytes).

    Exit 0 when everything still matches; 1 with the list of what changed or did not match.
    """
    from tokenforget.receipt import check_receipt, match_forget

    if forget is not None:
        if not forget.is_file():
            raise TokenforgetError(f"--forget {forget} does not exist: give the file you asked to delete")
        same, said = match_forget(path, forget)
        if not same:  # soft wrap: the paths and hashes stay whole, to copy
            err.print(f"[red]mismatch[/]: {said}", highlight=False, soft_wrap=True)
            raise typer.Exit(1)
        out.print(f"[green]match[/]: {said}", highlight=False, soft_wrap=True)
        return
    problems = check_receipt(path)
    if problems:
        for problem in problems:
            err.print(f"[red]mismatch[/]: {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    out.print(f"[green]receipt verified[/]: {path}")


@identify_app.callback()
def identify(
    ctx: typer.Context,
    method: Annotated[str | None, typer.Option(help="The identifier (see above).")] = None,
    forget: Annotated[Path | None, typer.Option(help="Forget set (JSONL/CSV, QA or text).")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Where to write identified.jsonl.")] = None,
    model: Annotated[str | None, typer.Option(help="The identifier's model (see above).")] = None,
    reference: Annotated[str | None, typer.Option(help="contrast: the reference model.")] = None,
    oracle: Annotated[bool, typer.Option(help="contrast: the reference is the retain model.")] = False,
    retain: Annotated[str | None, typer.Option(help="frequency: retain set, or tofu-mini.")] = None,
    first: Annotated[Path | None, typer.Option(help="union/intersection: first identified file.")] = None,
    second: Annotated[Path | None, typer.Option(help="union/intersection: second identified file.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from tokenforget.data.sets import load_retain
    from tokenforget.identify.run import identify_file
    from tokenforget.inputs import check_inputs

    if forget is None or out_file is None:
        raise TokenforgetError(
            "identify needs --forget DATA and --out FILE (see tokenforget identify --help)"
        )
    extra = [f"identify.method={method or 'predictability'}"]
    if oracle:
        extra.append("identify.oracle=true")
    if model:
        extra.append(f"identify.model={model}")
    if reference:
        extra.append(f"identify.reference={reference}")
    if retain:
        extra.append(f"data.retain={retain}")
    cfg = _config(config, set_, extra)
    check_inputs(cfg, {"--forget": forget, "--first": first, "--second": second})
    inputs = (first, second) if first and second else None
    report = identify_file(cfg, forget, out_file, load_retain(cfg), inputs)
    out.print_json(json.dumps(report))


@identify_app.command("score")
def identify_score(
    pred: Annotated[Path, typer.Option(help="The labelling to grade (ours or the published layout).")],
    gold: Annotated[Path, typer.Option(help="Gold labels (ours or the published layout).")],
    expand_gold: Annotated[
        bool, typer.Option(help="Also label later occurrences of each gold word (gold marks the first only).")
    ] = False,
    per_sample: Annotated[bool, typer.Option(help="Include the per-sample breakdown.")] = False,
    tokenizer: Annotated[
        str | None, typer.Option(help="Tokenizer for token-level F1 (default: the embedded SmolLM2).")
    ] = None,
) -> None:
    """Word-level precision/recall/F1 of UW (micro over all answer words), token-level F1, and
    AUROC / average precision when the prediction has scores. Prints JSON."""
    from tokenforget.data.identified import read_identified
    from tokenforget.identify.score import score_labels
    from tokenforget.models import load_tokenizer

    tok = load_tokenizer(tokenizer or "smollm2-135m-instruct")
    result = score_labels(read_identified(pred), read_identified(gold), expand_gold, tok)
    if not per_sample:
        result.pop("per_sample")
    out.print_json(json.dumps(result))


def _methods_help() -> str:
    """One entry per registered method, for `unlearn --help`."""
    from tokenforget.losses import METHODS

    rows = []
    for m in METHODS.values():
        numbers = ", ".join(f"{k}={v}" for k, v in m.defaults.items())
        rows.append((m.name, f"{m.summary} [retain: {m.retain}{'; ' + numbers if numbers else ''}]"))
    return _listing(rows, width=9)


UNLEARN_HELP = """Make a model forget a forget set; writes OUT/model (save_pretrained, safetensors).

\b
Methods (--method), with their default retain term and numbers:
{methods}

\b
The forget set is an identified set (`tokenforget identify`, or the paper's published layout with
target_words/common_words) or any JSONL/CSV with `spans` marking the unwanted words. TPO and
--tokens uw|weighted need those spans; --tokens all (the default for baselines) does not.
Numbers: --set unlearn.beta=0.1, unlearn.lam, unlearn.alpha (retain weight), unlearn.gamma
(forget weight), unlearn.lr, unlearn.epochs, unlearn.lora.r=16 (LoRA), ... (`config keys` lists
which method takes which). Add a method: docs/extending.md.
MUSE recipe of the TPO paper: --method tpo_gd --set unlearn.gamma=0.1 --set unlearn.lam=0.

\b
Resumable: kill it and run the same command again. OUT/train_log.jsonl has every loss term per
step. Multi-process: `accelerate launch -m tokenforget.cli unlearn ...` (DDP)."""


@app.command(help=UNLEARN_HELP.replace("{methods}", _methods_help()))
def unlearn(
    forget: Annotated[Path, typer.Option(help="Forget set: identified.jsonl or JSONL/CSV (with spans).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder for the model, log and checkpoints.")],
    method: Annotated[
        str | None,
        typer.Option(
            help="Unlearning method (see above; default: unlearn.method, npo_kl_uw, which needs --retain)."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model to unlearn (default: the embedded SmolLM2-135M-Instruct).")
    ] = None,
    retain: Annotated[
        str | None, typer.Option(help="Retain set (JSONL/CSV), or tofu-mini for the bundled one.")
    ] = None,
    tokens: Annotated[str | None, typer.Option(help="all, uw or weighted (not TPO).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    from tokenforget.unlearn import unlearn as run_unlearn

    extra = [f"data.forget={forget}", *([f"unlearn.method={method}"] if method else [])]
    if model:
        extra.append(f"model.name={model}")
    if retain:
        extra.append(f"data.retain={retain}")
    if tokens:
        extra.append(f"unlearn.tokens={tokens}")
    result = run_unlearn(_config(config, set_, extra), out_dir)
    out.print_json(json.dumps({**result.summary, "model": str(result.model_dir)}))


@eval_app.command("tofu")
def eval_tofu(
    model: Annotated[
        str, typer.Option(help="Model to evaluate: a folder, a hub name or smollm2-135m-instruct.")
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for the four published eval-log files and summary.json.")
    ],
    retain_logs: Annotated[
        Path | None, typer.Option(help="The retain model's eval folder (forget quality).")
    ] = None,
    benchmark: Annotated[
        str, typer.Option(help="tofu-mini (bundled) or tofu (--set data.tofu=DIR|hub).")
    ] = "tofu-mini",
    split: Annotated[str, typer.Option(help="Full TOFU only: forget01, forget05 or forget10.")] = "forget01",
    profile: Annotated[str | None, typer.Option(help="tofu-mini, openunlearning or tofu-legacy.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Evaluate a model on TOFU: per-question logs under the published file names, then the summary.

    Resumable per pass (a small eval scores all splits in one pass); a folder evaluated with the
    same settings is not evaluated again.
    """
    from tokenforget.data.benchmarks import load_benchmark
    from tokenforget.evaluate.tofu_run import evaluate_tofu

    extra = [f"run.benchmark={benchmark}", f"run.tofu_split={split}"]
    if profile:
        extra.append(f"eval.profile={profile}")
    cfg = _config(config, set_, extra)
    check_files(models={"--model": model})
    summary = evaluate_tofu(cfg, model, load_benchmark(cfg), out_dir, retain_logs)
    out.print_json(json.dumps(summary))


@eval_app.command("harness")
def eval_harness(
    model_or_run: Annotated[
        str,
        typer.Argument(
            help="A model (folder, hub name, smollm2-135m-instruct) or a run folder (its unlearned model)."
        ),
    ],
    tasks: Annotated[
        str, typer.Option(help="Comma-separated lm-evaluation-harness tasks, e.g. mmlu,arc_easy,hellaswag.")
    ] = "tofu_world_facts_mc",
    limit: Annotated[
        int | None, typer.Option(help="At most this many items per task (a quick look).")
    ] = None,
    num_fewshot: Annotated[
        int | None, typer.Option(help="Few-shot examples (default: each task's own).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Requests per forward.")] = 16,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder for harness.json (default RUN/eval/harness/).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """General capability with lm-evaluation-harness, on the model as tokenforget loads it.

    \b
    The harness's own Hugging Face wrapper runs over our loaded model at our precision
    (`model.precision`: bf16 autocast where the CPU or GPU has it), so MMLU, ARC, HellaSwag or any
    task the harness knows runs with one command (online: `datasets` downloads them once). Offline,
    `tofu_world_facts_mc` is TOFU's 117 world facts as 4-way multiple choice (bundled, MIT).
    Given a run folder, results go to RUN/eval/harness/harness.json and into its report.
    Needs pip install 'tokenforget[harness]'.
    """
    from tokenforget.evaluate.harness import run_harness

    run_folder = Path(model_or_run)
    unlearned = _unlearned_model(run_folder)
    is_run = unlearned is not None
    model = str(unlearned) if unlearned else model_or_run
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    if not names:
        raise TokenforgetError("--tasks is empty: name at least one task, e.g. --tasks tofu_world_facts_mc")
    if out_dir is None and not is_run:
        raise TokenforgetError(f"{model_or_run} is not a run folder: give --out for harness.json")
    cfg = (
        load_config(run_folder / "config.yaml", set_) if is_run and config is None else _config(config, set_)
    )
    check_files(models={"MODEL_OR_RUN": model})
    record = run_harness(
        cfg.model, model, names, out_dir or run_folder / "eval" / "harness", limit, num_fewshot, batch_size
    )
    table = Table(title=f"lm-evaluation-harness {record.get('lm_eval', '')}: {model}")
    for column in ("task", "metric", "value", "items"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for task, metrics in record.get("results", {}).items():
        for metric, value in metrics.items():
            if isinstance(value, float) and "stderr" not in metric:
                items = record.get("n_samples", {}).get(task, {}).get("effective", "")
                table.add_row(task, metric.split(",")[0], f"{value:.4f}", str(items))
    out.print(table)
    if is_run:
        _refresh_report(run_folder)


@eval_app.command("mia")
def eval_mia(
    model: Annotated[
        str, typer.Option(help="Model to attack: a folder, a hub name or smollm2-135m-instruct.")
    ],
    members: Annotated[Path, typer.Option(help="Texts or QA pairs the model was trained on (JSONL/CSV).")],
    nonmembers: Annotated[Path, typer.Option(help="Texts or QA pairs it never saw (a holdout set).")],
    k: Annotated[float, typer.Option(help="Fraction of tokens for Min-K% and Min-K%++.")] = 0.4,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the JSON (with per-sample scores) here.")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Membership attacks (LOSS, ZLib, Min-K%, Min-K%++): AUC of members vs non-members.

    AUC near 0.5: the model does not tell them apart (what unlearning aims for on the forget set
    vs a holdout); near 1: it still recognises its training data.
    """
    from tokenforget.data.records import read_samples
    from tokenforget.evaluate.attacks import membership_attack
    from tokenforget.models import load_model

    cfg = _config(config, set_)
    check_files(samples={"--members": members, "--nonmembers": nonmembers}, models={"--model": model})
    inside, outside = read_samples(members), read_samples(nonmembers)
    lm, tokenizer, precision = load_model(cfg.model, model)
    result = membership_attack(lm, tokenizer, inside, outside, cfg.prompt, precision, k, cfg.eval.batch_size)
    _emit(result, out_file, {"auc": result["auc"], "k": k})


@eval_app.command("kl")
def eval_kl(
    model: Annotated[str, typer.Option(help="The unlearned model.")],
    reference: Annotated[str, typer.Option(help="The original model (theta0).")],
    data: Annotated[Path, typer.Option(help="Texts or QA pairs to compare on, usually the retain set.")],
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the JSON (with per-sample KL) here.")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Over-forgetting: mean per-token KL(original || unlearned) on answer tokens. Loads both models."""
    from tokenforget.data.records import read_samples
    from tokenforget.evaluate.attacks import kl_to_reference
    from tokenforget.models import load_model

    cfg = _config(config, set_)
    check_files(samples={"--data": data}, models={"--model": model, "--reference": reference})
    samples = read_samples(data)
    lm, tokenizer, precision = load_model(cfg.model, model)
    ref, _, _ = load_model(cfg.model, reference)
    result = kl_to_reference(lm, ref, tokenizer, samples, cfg.prompt, precision, cfg.eval.batch_size)
    _emit(result, out_file, {"mean_token_kl": result["mean_token_kl"]})


@eval_app.command("tokens")
def eval_tokens(
    model: Annotated[str, typer.Option(help="The unlearned model.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for tokens.json (scores) and summary.")],
    reference: Annotated[
        str | None, typer.Option(help="The original model (theta0) for the log-prob changes; none: skipped.")
    ] = None,
    forget: Annotated[
        str, typer.Option(help="Forget set: tofu-mini (bundled, with paraphrased questions) or a data file.")
    ] = "tofu-mini",
    labels: Annotated[
        Path | None,
        typer.Option(
            help="The evaluation labelling (identified.jsonl or the published layout); "
            "default: the forget file's own spans. Use one labelling for every run you compare."
        ),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Token-level forgetting on the forget set: did the unwanted words go, did the rest stay?

    \b
    uw_dlogp / gw_dlogp   mean change of log p(token), model vs reference, on UW / GW tokens
                          (a targeted method: UW far below 0, GW near 0)
    uw_leak_rate          fraction of unwanted words (spans) still in the greedy answer, whole
                          word, case-insensitive; _paraphrased: for the paraphrased question
    exact_memorization, extraction_strength   as open-unlearning defines them
    Each model's scores are cached in OUT/<model|reference>/tokens.json.
    """
    from tokenforget.evaluate.tokens import forget_samples, token_summary_for

    cfg = _config(config, set_)
    check_files(
        labels={"--forget": forget, "--labels": labels},  # the bundled tofu-mini is skipped
        models={"--model": model, "--reference": reference},
    )
    samples = forget_samples(forget)
    summary = token_summary_for(cfg, model, samples, out_dir, reference, labels)
    _emit(summary, out_dir / "tokens_summary.json", {k: v for k, v in summary.items() if k != "per_sample"})


@eval_app.command("muse")
def eval_muse(
    model: Annotated[
        str, typer.Option(help="Model to evaluate: a folder, a hub name or smollm2-135m-instruct.")
    ],
    data: Annotated[
        Path, typer.Option(help="MUSE-News folder (knowmem/, verbmem/, privleak/; the release layout).")
    ],
    retrain_auc: Annotated[
        float | None, typer.Option(help="The retrained model's Min-K% AUC (default: MUSE News's 0.4772).")
    ] = None,
    retrain_logs: Annotated[
        Path | None, typer.Option(help="Or: the retrained model's `eval muse --out` JSON (its AUC is read).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="First N rows of every set (a quick look).")] = None,
    max_length: Annotated[int, typer.Option(help="Longest text in tokens (longer ones are cut).")] = 2048,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the JSON (with per-sample logs).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """MUSE (News): verbmem_f, knowmem_f, knowmem_r (ROUGE-L F1 x 100) and privleak.

    privleak = (AUC - AUC_retrain) / AUC_retrain x 100 of the Min-K% (k=40%) attack on forget vs
    holdout texts, in MUSE's convention: about -100 = still memorised, 0 = like the retrained model,
    positive = over-unlearned. MUSE ships no target or retrained model for this layout here: give
    your retrained model's AUC (--retrain-logs) or MUSE's published one (the default).
    """
    from tokenforget.data.benchmarks import muse_news
    from tokenforget.evaluate.muse import NEWS_RETRAIN_AUC, evaluate_muse
    from tokenforget.models import load_model

    if retrain_auc is not None and retrain_logs is not None:
        raise TokenforgetError("give --retrain-auc or --retrain-logs, not both")
    if retrain_logs is not None:
        retrain_auc = json.loads(retrain_logs.read_text())["privleak_auc"]
    cfg = _config(config, set_)
    bench = muse_news(data)
    lm, tokenizer, precision = load_model(cfg.model, model)
    result = evaluate_muse(
        lm,
        tokenizer,
        bench,
        precision,
        retrain_auc or NEWS_RETRAIN_AUC,
        limit,
        max_length,
        cfg.eval.batch_size,
    )
    _emit(result, out_file, {k: v for k, v in result.items() if k != "per_sample"})


def _emit(result: dict, out_file: Path | None, headline: dict) -> None:
    """Print the headline numbers; the whole result (per-sample values) goes to --out or stdout."""
    if out_file is None:
        out.print_json(json.dumps(result))
        return
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=2))
    out.print_json(json.dumps({**headline, "written": str(out_file)}))


@eval_app.command("summary")
def eval_summary(
    logs: Annotated[
        Path,
        typer.Option(
            help="Eval logs: a folder with the four TOFU files, an "
            "eval_log_aggregated.json, or open-unlearning's TOFU_EVAL.json."
        ),
    ],
    retain_logs: Annotated[
        Path | None, typer.Option(help="The retain model's logs (for forget quality).")
    ] = None,
    truth_ratio: Annotated[
        str, typer.Option(help="geometric (published aggregation) or legacy-arithmetic.")
    ] = "geometric",
    csv_file: Annotated[
        Path | None, typer.Option("--csv", help="Also write the published aggregate CSV (one row) here.")
    ] = None,
    method: Annotated[str, typer.Option(help="CSV 'Method' column.")] = "",
    submitted_by: Annotated[str, typer.Option(help="CSV 'Submitted By' column.")] = "",
) -> None:
    """Forget quality, model utility and the 12 component numbers as one JSON object.

    Numbers follow the published TOFU aggregation script; keys follow open-unlearning's names. A
    number that cannot be computed is null, with the reason under "unavailable".
    """
    from tokenforget.evaluate.tofu import summarize_paths

    if truth_ratio not in ("geometric", "legacy-arithmetic"):
        raise TokenforgetError(f"--truth-ratio {truth_ratio!r}: use geometric or legacy-arithmetic")
    summary = summarize_paths(logs, retain_logs, truth_ratio)  # type: ignore[arg-type]
    if csv_file is not None:
        from tokenforget.evaluate.tofu import write_aggregate_csv

        write_aggregate_csv(csv_file, summary, method, submitted_by)
    out.print_json(json.dumps(summary))


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 1e-3 else f"{value:.4f}"
    return str(value)


MODEL_OR_RUN_HELP = (
    "A finished `tokenforget run` folder on TOFU-mini, or a saved model folder (then --out, and the "
    "world and labels from --config/--set: eval.token_labels)."
)


@attack_app.command("relearn")
def attack_relearn(
    model_or_run: Annotated[Path, typer.Argument(help=MODEL_OR_RUN_HELP)],
    steps: Annotated[str, typer.Option(help="Step budgets of the attack, comma-separated.")] = "0,5,10,20",
    lr: Annotated[float, typer.Option(help="The attacker's learning rate (AdamW, no warm-up).")] = 1e-4,
    batch_size: Annotated[int, typer.Option(help="Attack answers per optimizer step.")] = 4,
    with_target: Annotated[bool, typer.Option(help="Attack the target model too (a ceiling).")] = False,
    data: Annotated[
        str,
        typer.Option(
            help="Attack data: forget-half (half of each forget author's answers; the other half is "
            "scored), retain (retain answers only: a benign fine-tune) or a JSONL/CSV file of yours "
            "(e.g. public text about the subject); with the last two the whole forget set is scored."
        ),
    ] = "forget-half",
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where the attacked copies and numbers go.")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Fine-tune copies of the unlearned and retain models on related text (by default half of each
    forget author's answers) and score the forget answers after each budget.

    \b
    A model that only hid what it was asked to forget gets the scored answers back in a few steps;
    one that forgot answers them like the retain model, which learns from the attack data alone.
    Recovery = the unlearned model's forget Q_A_Prob, truth ratio and UW leak rate minus the attacked
    retain model's; forget quality compares with the retain model under the same attack. The given
    models are never changed: each budget is a copy under OUT (default RUN/attacks/relearn-<recipe>;
    the retain model's in its world's folder, shared by every run there), resumable, evaluated like
    `tokenforget eval tofu` would on it. relearn.json has every number.
    """
    from tokenforget.data.benchmarks import load_benchmark
    from tokenforget.disk import check_space, copy_needs, weight_bytes, world_needs
    from tokenforget.prepare import prepare, prepared_folder
    from tokenforget.relearn import SCORED, attack_folder, relearn_attack, relearn_copies

    try:
        budgets = tuple(sorted({int(x) for x in steps.split(",")}))
    except ValueError as exc:
        raise TokenforgetError(
            f"--steps {steps!r}: expected comma-separated integers, e.g. 0,5,10,20"
        ) from exc
    target = _attack_target(model_or_run, "relearn", out_dir, config, set_)
    cfg = target.cfg
    if data not in ("forget-half", "retain"):
        check_files(samples={"--data": data})  # a bad file, named with its line, before any work
    world = prepared_folder(cfg)
    out_path = out_dir or attack_folder(cfg, model_or_run, lr, batch_size, data)
    yardstick = attack_folder(cfg, world, lr, batch_size, data) / "retain"
    names = ["unlearned", "retain", *(["target"] if with_target else [])]
    copies = relearn_copies(names, out_path, yardstick, budgets)
    check_space([*world_needs(cfg, world), *copy_needs(copies, weight_bytes(target.model), trained=True)])
    prepared = prepare(cfg, rouge_check=False)
    models = {"unlearned": str(target.model), "retain": str(prepared.retain)}
    if with_target:
        models["target"] = str(prepared.target)
    labels = target.labels
    result = relearn_attack(
        cfg, models, load_benchmark(cfg), out_path, labels, budgets, lr, batch_size, yardstick, data
    )
    table = Table(
        title=f"Relearning attack: {result['attack_answers']} answers attacked, "
        f"{result['scored_answers']} scored"
    )
    for column in ("model", "steps", *SCORED):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, by_steps in result["models"].items():
        for k, point in by_steps.items():
            table.add_row(name, str(k), *(_fmt(point[key]) for key in SCORED))
    out.print(table)
    out.print(f"written: {(out_path / 'relearn.json').resolve()}")
    if target.run:
        _refresh_report(target.run)


def _refresh_report(run_folder: Path) -> None:
    """Rebuild the run's report.html, which shows the attacks found under RUN/attacks/."""
    from tokenforget.report import REPORT_INPUTS, write_report

    if (run_folder / REPORT_INPUTS).is_file():
        out.print(f"report: {write_report(run_folder).resolve()}", soft_wrap=True)


def _unlearned_model(folder: Path) -> Path | None:
    """The unlearned model of a finished run folder (config.yaml and unlearn/model/), else None; an
    error naming the command that remakes it where its weights were deleted."""
    from tokenforget.models import has_weights

    model = folder / "unlearn" / "model"
    if not (folder / "config.yaml").is_file() or not model.is_dir():
        return None
    if not has_weights(model):
        raise TokenforgetError(
            f"{model} holds no weights (no *.safetensors): this run's unlearned model was deleted "
            f"(`tokenforget sweep --keep best` deletes all but each method's best point) or never written. "
            f"Run `tokenforget run --config {folder / 'config.yaml'}` again to make it (the run redoes "
            "its unlearn stage in the same folder, to the same weights on the same machine)"
        )
    return model


class AttackTarget(NamedTuple):
    """What an attack command attacks: a run's unlearned model, or a model folder in a world."""

    cfg: Config
    model: Path
    run: Path | None  # the run folder, when one was given
    labels: list  # the forget answers' UW labels (empty: UW leak rates are not measured)


def _attack_target(
    model_or_run: Path, attack: str, out_dir: Path | None, config: Path | None, set_: list[str] | None
) -> AttackTarget:
    """A finished benchmark run (its config, unlearned model and labels), or a model folder in the
    world that `--config`/`--set` describe; an error saying what to give otherwise."""
    from tokenforget.data.identified import read_identified

    model_dir = _unlearned_model(model_or_run)
    if model_dir is not None:
        cfg = load_config(model_or_run / "config.yaml", set_)
        labels_file = cfg.eval.token_labels or model_or_run / "identified.jsonl"
        run: Path | None = model_or_run
    elif (model_or_run / "config.json").is_file():
        if out_dir is None:
            raise TokenforgetError(f"{model_or_run} is a model folder, not a run: give --out for the results")
        cfg, model_dir, run = _config(config, set_), model_or_run, None
        labels_file = cfg.eval.token_labels or cfg.identify.labels
    else:
        raise TokenforgetError(
            f"{model_or_run} is neither a finished run folder (config.yaml and unlearn/model/) nor a model "
            "folder (config.json): give the folder `tokenforget run` made, or a saved model with --out"
        )
    if cfg.data.forget is not None:
        raise TokenforgetError(
            f"attack {attack} needs a benchmark (TOFU-mini): its world has a retain model to compare with"
        )
    labels = read_identified(labels_file) if labels_file else []
    return AttackTarget(cfg, model_dir, run, labels)


@attack_app.command("quantize")
def attack_quantize(
    model_or_run: Annotated[Path, typer.Argument(help=MODEL_OR_RUN_HELP)],
    bits: Annotated[int, typer.Option(help="Weight bits: 4 (groups) or 8 (per channel).")] = 4,
    group_size: Annotated[
        int, typer.Option(help="4-bit group size; lowered to a power of two every layer's width divides.")
    ] = 128,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where the quantized copy and numbers go.")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Round the unlearned, target and retain models' weights to 4 or 8 bits and evaluate each again.

    \b
    Unlearning moves weights a little; 4-bit rounding can move them back (Zhang et al., ICLR 2025:
    from 21 % to 83 % of the forgotten knowledge back for GA and NPO). Weight-only round-to-nearest
    with torchao through transformers (pip install 'tokenforget[quantize]'). The quantized unlearned
    model's forget quality compares with the retain model quantized the same way; the target's and
    retain's copies live in the world's folder, shared by every run. Each copy is saved (safetensors)
    and evaluated like `tokenforget eval tofu` would on it; the given models are never changed.
    quantize.json has every number before and after.
    """
    from tokenforget.data.benchmarks import load_benchmark
    from tokenforget.disk import check_space, copy_needs, float32_bytes, world_needs
    from tokenforget.pipeline import world_models
    from tokenforget.prepare import prepare, prepared_folder
    from tokenforget.quantize import (
        SCORED,
        attack_folder,
        group_size_for,
        linear_widths,
        quantization_config,
        quantize_attack,
        quantized_copies,
    )

    target = _attack_target(model_or_run, "quantize", out_dir, config, set_)
    cfg = target.cfg
    quantization_config(bits, group_size)  # a wrong --bits or a missing torchao, before any work
    group = group_size_for(linear_widths(str(target.model)), group_size)
    world = prepared_folder(cfg)
    out_path = out_dir or attack_folder(cfg, model_or_run, bits, group)
    yardstick = attack_folder(cfg, world, bits, group)
    copies = quantized_copies(out_path, yardstick, bits)
    check_space([*world_needs(cfg, world), *copy_needs(copies, float32_bytes(target.model), trained=False)])
    prepared = prepare(cfg, rouge_check=False)
    paths, dirs = world_models(cfg, prepared)
    models = {"unlearned": str(target.model), **paths}
    # a run's own evaluation of the model; a model folder's is made next to the attack's numbers
    unquantized = target.run / "eval" / "unlearned" if target.run else out_path / "original" / "eval"
    before = {"unlearned": unquantized, **dirs}
    labels = target.labels
    result = quantize_attack(
        cfg, models, before, load_benchmark(cfg), out_path, labels, bits, group, yardstick
    )
    grouping = f"groups of {group}" if bits == 4 else "per channel"
    table = Table(title=f"Quantization attack: int{bits} weights (torchao, {grouping})")
    for column in ("model", "weights", *SCORED):
        table.add_column(column, justify="left" if column in ("model", "weights") else "right")
    for name, row in result["models"].items():
        for when, point in row.items():
            label = "original" if when == "before" else f"int{bits}"
            table.add_row(name, label, *(_fmt(point[key]) for key in SCORED))
    out.print(table)
    out.print(f"written: {(out_path / 'quantize.json').resolve()}")
    if target.run:
        _refresh_report(target.run)


@data_app.command("check")
def data_check(
    path: Annotated[Path, typer.Argument(help="A JSONL, JSON or CSV file of question+answer or text rows.")],
) -> None:
    """Validate a data file and print what it holds, or its problems (exit code 2).

    Rows: {"question": ..., "answer": ...} (QA) or {"text": ...} (raw text), optionally
    "spans": [{"start": s, "end": e}, ...] = character offsets into the answer/text marking the
    unwanted words. In CSV, spans is a JSON string in its column.
    """
    from tokenforget.data.records import describe, read_samples

    samples = read_samples(path)
    out.print_json(json.dumps({"file": str(path), "valid": True, **describe(samples)}))


@config_app.command("keys")
def config_keys_cmd() -> None:
    """Every setting with its default and meaning (use as --set key=value)."""
    table = Table(show_lines=False)
    table.add_column("key", style="bold")
    table.add_column("default")
    table.add_column("meaning")
    for key, default, description in config_keys():
        # Text, not markup: "[tpo, tpo_gd] ..." names the methods that take a key
        table.add_row(key, Text(default), Text(description))
    out.print(table)


@config_app.command("show")
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """The fully resolved config (YAML), as a run folder's config.yaml would hold it."""
    out.print(_config(config, set_).to_yaml(), end="", highlight=False)


@config_app.command("schema")
def config_schema() -> None:
    """The JSON schema of the config file."""
    from tokenforget.config import config_schema as schema

    out.print_json(json.dumps(schema()))


@model_app.command("convert")
def model_convert(
    force: Annotated[bool, typer.Option(help="Convert again even if a valid copy exists.")] = False,
) -> None:
    """Convert the embedded GGUF into a safetensors folder in the cache (done automatically on first use)."""
    from tokenforget.models import ensure_embedded_model

    out.print(str(ensure_embedded_model(force=force)))


@model_app.command("path")
def model_path() -> None:
    """Where the converted embedded model lives (converting it if needed)."""
    from tokenforget.models import ensure_embedded_model

    out.print(str(ensure_embedded_model(log=False)))


def main() -> None:
    """Console entry point: user errors print a message and exit 2, without a traceback."""
    from tokenforget.plugins import load_plugins
    from tokenforget.train import Interrupted

    try:
        if load_plugins():  # registered after the help texts were built: build them again
            identify_app.info.help = IDENTIFY_HELP.replace("{identifiers}", _identifiers_help())
            for command in app.registered_commands:
                if command.callback is unlearn:
                    command.help = UNLEARN_HELP.replace("{methods}", _methods_help())
        app(standalone_mode=False)
    except DataError as exc:
        err.print(f"[red]invalid data[/]: {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except TokenforgetError as exc:
        err.print(f"[red]error[/]: {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Interrupted as exc:
        err.print(f"[yellow]{exc}[/]")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors come through standalone_mode=False
        # typer ships its own copy of click, so click.ClickException would not match here
        if not hasattr(exc, "show"):
            raise
        exc.show()
        sys.exit(getattr(exc, "exit_code", 2))
    except Exception as exc:
        from tokenforget.disk import disk_full_message, is_disk_full
        from tokenforget.models import cache_dir

        if not is_disk_full(exc):
            raise
        err.print(f"[red]error[/]: {disk_full_message(exc, [Path.cwd(), cache_dir()])}", soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
