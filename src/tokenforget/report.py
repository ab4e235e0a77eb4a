"""`report.html`: one self-contained page per run (inline CSS and SVG, no script, no external URL).

Sections: the headline table (unlearned next to target and retain), the token view (each forget
answer with its unwanted words marked and every token coloured by its change in probability),
greedy answers before and after, training curves from train_log.jsonl, the attacks run on it
(`attack relearn`, `attack quantize`: their JSON files under attacks/), stage times.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenforget.runs import read_step_log

COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04")

METRICS: tuple[tuple[str, str, str], ...] = (
    # key, label, what a reader should look for
    (
        "forget_quality",
        "Forget quality",
        "KS-test p-value vs the retain model on forget truth ratios; higher = closer to never "
        "having seen the data",
    ),
    (
        "model_utility",
        "Model utility",
        "harmonic mean of 9 numbers on retain, real authors, world facts; higher is better",
    ),
    (
        "uw_leak_rate",
        "UW leak rate",
        "share of unwanted words still in the greedy answer to the forget question; lower is better",
    ),
    ("uw_leak_rate_paraphrased", "UW leak rate (paraphrased)", "the same for the paraphrased question"),
    (
        "uw_dlogp",
        "ΔlogP on UW tokens",
        "mean change of log p of unwanted-word tokens vs the target; far below 0 = forgotten",
    ),
    ("gw_dlogp", "ΔlogP on GW tokens", "mean change of log p of general tokens vs the target; near 0 = kept"),
    (
        "kl_on_retain",
        "KL on retain",
        "mean per-token KL(target ‖ model) on retain answers; lower = less collateral damage",
    ),
    ("forget_Q_A_ROUGE", "Forget ROUGE-L", "greedy answers to forget questions vs the true answers"),
    ("forget_truth_ratio", "Forget truth ratio", "mean min(R, 1/R) on forget questions"),
    ("retain_Q_A_ROUGE", "Retain ROUGE-L", "greedy answers to retain questions vs the true answers"),
    (
        "extraction_strength",
        "Extraction strength",
        "open-unlearning's ES on forget answers; lower = less extractable",
    ),
)

CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#111827;background:#f9fafb}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:19px;margin:32px 0 8px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
.sub{color:#4b5563;margin:0 0 16px}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:14px 16px;margin:10px 0}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:6px 10px;border-bottom:1px solid #e5e7eb;text-align:left;vertical-align:top}
th{background:#f3f4f6;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.hint{color:#6b7280;font-size:13px}
.tok{padding:1px 0;border-radius:3px} .uw{border-bottom:3px solid #111827;font-weight:600}
.legend span{display:inline-block;padding:2px 8px;margin-right:8px;border-radius:3px}
.q{color:#4b5563;font-size:13px;margin-bottom:4px} .answers td{width:33%;font-size:14px}
.leak{background:#fee2e2} .gone{background:#dcfce7}
svg text{font:12px system-ui,sans-serif;fill:#374151} details summary{cursor:pointer;color:#2563eb}
pre{white-space:pre-wrap;font-size:12px;background:#fff;border:1px solid #e5e7eb;padding:8px}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return "n/a"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.3f}" if isinstance(value, float) else str(value)
    return str(value)


def headline_table(headline: dict[str, dict[str, Any]]) -> str:
    models = list(headline)
    head = "".join(f"<th>{esc(m)}</th>" for m in models)
    rows = []
    for key, label, hint in METRICS:
        if all(headline[m].get(key) is None for m in models):
            continue
        cells = "".join(
            f'<td class="num" data-metric="{esc(key)}" data-model="{esc(m)}">{fmt(headline[m].get(key))}</td>'
            for m in models
        )
        rows.append(f'<tr><td>{esc(label)}<div class="hint">{esc(hint)}</div></td>{cells}</tr>')
    return f'<table id="headline"><tr><th>metric</th>{head}</tr>{"".join(rows)}</table>'


def verdict_list(sentences: Sequence[str]) -> str:
    """The headline in words, first thing under the title."""
    items = "".join(f"<li>{esc(s)}</li>" for s in sentences)
    return f'<ul id="verdict">{items}</ul>' if items else ""


def delta_color(delta_p: float) -> str:
    """Background for a change in probability: red when it fell, blue when it rose."""
    strength = min(1.0, abs(delta_p)) ** 0.6
    if delta_p < 0:
        return f"rgba(220,38,38,{0.08 + 0.7 * strength:.2f})"
    return f"rgba(37,99,235,{0.08 + 0.5 * strength:.2f})"


def token_view(
    answer: str,
    offsets: Sequence[Sequence[int]],
    logp_before: Sequence[float],
    logp_after: Sequence[float],
    spans: Sequence[tuple[int, int]],
) -> str:
    """The answer with each token coloured by p_after - p_before and unwanted words underlined."""
    parts, cursor = [], 0
    for (start, end), before, after in zip(offsets, logp_before, logp_after, strict=True):
        if start > cursor:
            parts.append(esc(answer[cursor:start]))
        start = max(start, cursor)
        if end <= start:
            continue
        p0, p1 = math.exp(before), math.exp(after)
        uw = any(s < end and start < e for s, e in spans)
        title = f"p {p0:.3f} → {p1:.3f} (Δlog p {after - before:+.2f}){' · unwanted' if uw else ''}"
        parts.append(
            f'<span class="tok{" uw" if uw else ""}" style="background:{delta_color(p1 - p0)}" '
            f'title="{esc(title)}">{esc(answer[start:end])}</span>'
        )
        cursor = end
    parts.append(esc(answer[cursor:]))
    return "".join(parts)


def line_chart(
    series: dict[str, list[tuple[float, float]]], title: str, width: int = 520, height: int = 220
) -> str:
    """An SVG line chart of named (x, y) series with axes, ticks and a legend."""
    points = [p for values in series.values() for p in values if math.isfinite(p[1])]
    if not points:
        return ""
    left, right, top, bottom = 56, 12, 24, 36
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    out.append(f'<text x="{left}" y="14" font-weight="600">{esc(title)}</text>')
    for k in range(5):
        y = y0 + (y1 - y0) * k / 4
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#e5e7eb"/>'
        )
        out.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{fmt(y)}</text>')
    for k in range(5):
        x = x0 + (x1 - x0) * k / 4
        out.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 16}" text-anchor="middle">{x:.0f}</text>')
    out.append(f'<text x="{(left + width) / 2:.0f}" y="{height - 4}" text-anchor="middle">step</text>')
    for k, (name, values) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in values if math.isfinite(y))
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        out.append(
            f'<text x="{width - right - 4}" y="{top + 14 * (k + 1)}" text-anchor="end" '
            f'fill="{color}">{esc(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def training_curves(log_path: Path) -> str:
    rows = read_step_log(log_path)
    if not rows:
        return '<p class="hint">No training log.</p>'
    skip = {"step", "lr", "seconds", "tokens"}
    names = sorted({k for r in rows for k, v in r.items() if k not in skip and isinstance(v, (int, float))})
    charts = []
    for name in names:
        values = [(r["step"], float(r[name])) for r in rows if isinstance(r.get(name), (int, float))]
        charts.append(line_chart({name: values}, name, 340, 180))
    charts.append(line_chart({"lr": [(r["step"], float(r["lr"])) for r in rows]}, "learning rate", 340, 180))
    return '<div style="display:flex;flex-wrap:wrap;gap:8px">' + "".join(charts) + "</div>"


def answers_table(rows: Sequence[dict[str, Any]], models: Sequence[str]) -> str:
    """Greedy answers side by side. rows: {question, truth, answers: {model: text}, leaked: {model:
    bool} (optional: red when the answer still holds an unwanted word, green when not)}."""
    if not rows:
        return '<p class="hint">Not available for this run.</p>'
    out = []
    for row in rows:
        cells = []
        for m in models:
            flag = row.get("leaked", {}).get(m)
            cls = "" if flag is None else (' class="leak"' if flag else ' class="gone"')
            cells.append(f"<td{cls}>{esc(row['answers'].get(m, ''))}</td>")
        out.append(
            f'<tr><td colspan="{len(models)}"><div class="q">Q: {esc(row["question"])}'
            f"<br>true answer: {esc(row['truth'])}</div></td></tr><tr>{''.join(cells)}</tr>"
        )
    head = "".join(f"<th>{esc(m)}</th>" for m in models)
    return f'<table class="answers"><tr>{head}</tr>{"".join(out)}</table>'


def forget_answer_rows(evals: dict[str, Any], models: Sequence[str]) -> list[dict[str, Any]]:
    """Greedy answers to the forget questions from the token-level scoring pass of every model."""
    rows = {m: evals["token_rows"][m] for m in models}
    samples = {m: evals["per_sample"][m] for m in models}
    first = rows[models[0]]
    return [
        {
            "question": first[k]["question"],
            "truth": first[k]["answer"],
            "answers": {m: rows[m][k]["generated"] for m in models},
            "leaked": {m: bool(samples[m][k]["leaked"]) for m in models},
        }
        for k in range(len(first))
    ]


def retain_answer_rows(evals: dict[str, Any], models: Sequence[str], limit: int) -> list[dict[str, Any]]:
    """Greedy answers to retain questions from the TOFU retain logs, where every model has one."""
    logs = {m: evals["retain_answers"].get(m) for m in models}
    if any(log is None for log in logs.values()):
        return []
    first = logs[models[0]]
    return [
        {
            "question": _question(first[k][0]),
            "truth": first[k][2],
            "answers": {m: logs[m].get(k, ["", ""])[1] for m in models},
        }
        for k in sorted(first, key=int)[:limit]
    ]


def _question(prompt: str) -> str:
    """The user's question out of a chat-formatted prompt (best effort; the prompt itself otherwise)."""
    for marker in ("<|im_start|>user\n", "Question: "):
        if marker in prompt:
            tail = prompt.split(marker, 1)[1]
            return tail.split("<|im_end|>", 1)[0].split("\nAnswer:", 1)[0].strip()
    return prompt


def token_section(evals: dict[str, Any], limit: int = 40) -> str:
    after_rows = evals["token_rows"]["unlearned"]
    before = {r["key"]: r for r in evals["token_rows"]["target"]}
    spans = evals["label_spans"]
    per_sample = evals["per_sample"]["unlearned"]
    cards = []
    for row, stats in list(zip(after_rows, per_sample, strict=True))[:limit]:
        ref = before[row["key"]]
        view = token_view(row["answer"], row["offsets"], ref["logp"], row["logp"], spans.get(row["key"], []))
        numbers = f"ΔlogP UW {fmt(stats.get('uw_dlogp'))} · GW {fmt(stats.get('gw_dlogp'))}"
        cards.append(
            f'<div class="card"><div class="q">Q: {esc(row["question"])} '
            f'<span class="hint">({numbers})</span></div><div>{view}</div></div>'
        )
    legend = (
        '<p class="legend"><span class="uw">unwanted word (evaluation labels)</span>'
        f'<span style="background:{delta_color(-0.8)}">probability fell</span>'
        f'<span style="background:{delta_color(0.5)}">probability rose</span>'
        '<span class="hint">hover a token for p before → after</span></p>'
    )
    return legend + "".join(cards)


def trajectory_charts(path: Path) -> str:
    """The in-training evaluation (trajectory.jsonl), when the run had one."""
    rows = read_step_log(path)
    if not rows:
        return ""

    def series(key: str) -> list[tuple[float, float]]:
        return [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]

    charts = [
        line_chart(
            {"forget": series("forget_Q_A_Prob"), "retain": series("retain_Q_A_Prob")},
            "Q_A_Prob (forget should fall, retain stay)",
            420,
            200,
        ),
        line_chart(
            {"UW": series("uw_dlogp"), "GW": series("gw_dlogp")},
            "mean change of log p vs theta0",
            420,
            200,
        ),
    ]
    return (
        '<h3>Evaluation during training</h3><p class="hint">Every unlearn.eval_every steps, '
        "teacher-forced on the forget answers and a slice of retain answers (trajectory.jsonl).</p>"
        '<div style="display:flex;flex-wrap:wrap;gap:8px">' + "".join(charts) + "</div>"
    )


REPORT_INPUTS = "report_inputs.json"  # what the report shows beyond summary.json, in the run folder


def report_inputs(evals: dict[str, Any]) -> dict[str, Any]:
    """The part of the evaluation the report draws that summary.json does not hold: each model's
    scored forget answers, the per-sample token numbers, the labels' spans and the greedy retain
    answers (read from the eval logs now, so the report needs no folder but the run's)."""
    from tokenforget.evaluate.tofu import generated_texts

    kept = ("token_rows", "label_spans", "labels_are_the_runs_own")
    return {
        **{k: evals[k] for k in kept},
        "per_sample": {m: t["per_sample"] for m, t in evals["tokens"].items()},
        "retain_answers": {m: generated_texts(Path(d), "retain") for m, d in evals["dirs"].items()},
    }


ATTACK_NUMBERS = ("forget_quality", "model_utility", "forget_Q_A_Prob", "forget_truth_ratio", "uw_leak_rate")


ATTACK_DATA = {
    "forget-half": "forget answers (half of each forget author's; the other half is scored)",
    "retain": "retain answers (a benign fine-tune)",
}
ROBUSTNESS_LABELS = {  # the showdown's attack columns (`robustness`)
    "relearn_uw_leak": "UW leak after relearning",
    "relearn_uw_gap": "… above the attacked retain",
    "int4_fq": "FQ after int4",
    "int4_uw_leak": "UW leak after int4",
    "int8_fq": "FQ after int8",
    "int8_uw_leak": "UW leak after int8",
}
ROBUSTNESS = tuple(ROBUSTNESS_LABELS)


def latest_attack(folder: Path, kind: str, keep: Any = None) -> dict[str, Any] | None:
    """The newest `attacks/<kind>-<recipe>/<kind>.json` of a run folder (`keep(numbers)`: which count)."""
    found = []
    for path in folder.glob(f"attacks/{kind}*/{kind}.json"):  # attacks/relearn/: before recipes had keys
        numbers = json.loads(path.read_text())
        if keep is None or keep(numbers):
            found.append((path.stat().st_mtime, numbers))
    return max(found, key=lambda item: item[0])[1] if found else None


def robustness(folder: Path) -> dict[str, Any]:
    """The numbers the showdown shows for a run's attacks: after the largest relearning budget, the
    UW leak rate and how far it sits above the attacked retain model's; after 4-bit and after 8-bit
    quantization, forget quality and UW leak rate (None where the attack was not run)."""
    out: dict[str, Any] = dict.fromkeys(ROBUSTNESS)
    relearn = latest_attack(folder, "relearn")
    if relearn:
        k = str(max(relearn["steps"]))
        out["relearn_uw_leak"] = relearn["models"]["unlearned"][k]["uw_leak_rate"]
        out["relearn_uw_gap"] = relearn["recovery"]["unlearned"][k]["uw_leak_rate"]
    for bits in (4, 8):
        quantized = latest_attack(folder, "quantize", lambda numbers, bits=bits: numbers["bits"] == bits)
        if quantized:
            after = quantized["models"]["unlearned"]["after"]
            out[f"int{bits}_fq"], out[f"int{bits}_uw_leak"] = after["forget_quality"], after["uw_leak_rate"]
    return out


def attack_table(rows: Sequence[tuple[str, str, dict[str, Any]]], second: str) -> str:
    """(model, budget or weights, numbers) rows as an HTML table of the numbers the attack measured."""
    keys = [k for k in ATTACK_NUMBERS if any(k in numbers for _, _, numbers in rows)]
    head = "".join(f"<th>{esc(c)}</th>" for c in ("model", second, *keys))
    body = "".join(
        f"<tr><td>{esc(name)}</td><td>{esc(column)}</td>"
        + "".join(f'<td class="num">{esc(fmt(numbers.get(k)))}</td>' for k in keys)
        + "</tr>"
        for name, column, numbers in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def attack_sections(folder: Path) -> str:
    """'After a relearning attack' and 'After 4-bit quantization', where those attacks were run."""
    parts = []
    relearn = latest_attack(folder, "relearn")
    if relearn:
        models, data = relearn["models"], relearn.get("attack_data", "forget-half")
        rows = [(name, k, point) for name, by_steps in models.items() for k, point in by_steps.items()]
        what = ATTACK_DATA.get(data, f"answers of {data}")
        parts.append(
            "<h2>After a relearning attack</h2>"
            f'<p class="hint">Fine-tuned at lr {relearn["lr"]:g} on {relearn["attack_answers"]} '
            f"{esc(what)}, scored on {relearn['scored_answers']} forget answers. The retain model under "
            "the same attack is the yardstick: what the attack data alone teaches.</p>"
            + attack_table(rows, "steps")
        )
    for bits in (4, 8):
        quantized = latest_attack(folder, "quantize", lambda numbers, bits=bits: numbers["bits"] == bits)
        if quantized is None:
            continue
        rows = [
            (name, "original" if when == "before" else f"int{bits}", point)
            for name, row in quantized["models"].items()
            for when, point in row.items()
        ]
        parts.append(
            f"<h2>After {bits}-bit quantization</h2>"
            f'<p class="hint">Weights rounded to int{bits} ({esc(quantized["backend"])}); forget quality of '
            "the quantized models against the retain model quantized the same way.</p>"
            + attack_table(rows, "weights")
        )
    return "".join(parts)


def harness_section(folder: Path) -> str:
    """'General capability (lm-evaluation-harness)', where `eval harness` was run on the run."""
    path = folder / "eval" / "harness" / "harness.json"
    if not path.is_file():
        return ""
    record = json.loads(path.read_text())
    body = "".join(
        f"<tr><td>{esc(task)}</td><td>{esc(metric.split(',')[0])}</td>"
        f'<td class="num">{esc(fmt(value))}</td></tr>'
        for task, metrics in record.get("results", {}).items()
        for metric, value in metrics.items()
        if isinstance(value, float) and "stderr" not in metric
    )
    return (
        "<h2>General capability (lm-evaluation-harness)</h2>"
        f'<p class="hint">lm-eval {esc(record.get("lm_eval"))} on the unlearned model at '
        f"{esc(record.get('precision'))}; limit {esc(record.get('limit'))} items per task.</p>"
        f"<table><tr><th>task</th><th>metric</th><th>value</th></tr>{body}</table>"
    )


def write_report(folder: Path) -> Path:
    """Write `folder/report.html` (self-contained) from the run folder's files alone: summary.json,
    report_inputs.json, unlearn/train_log.jsonl and trajectory.jsonl. `tokenforget report RUN`
    and the main job both call this."""
    summary = json.loads((folder / "summary.json").read_text())
    evals = json.loads((folder / REPORT_INPUTS).read_text())
    path, unlearn_dir, stage_seconds = folder / "report.html", folder / "unlearn", summary["stage_seconds"]
    models = list(summary["headline"])
    shown = [m for m in ("target", "unlearned", "retain") if m in models]
    unavailable = summary.get("unavailable", {})
    missing = "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in unavailable.items())
    labels_note = (
        "the run's own identifier labels"
        if evals.get("labels_are_the_runs_own")
        else "a fixed evaluation labelling"
    )
    times = "".join(
        f'<tr><td>{esc(k)}</td><td class="num">{v:.1f}</td></tr>'
        for k, v in stage_seconds.items()
        if k != "report"  # the stages before this page
    )
    unlearn = summary.get("unlearn", {})
    subject = summary.get("benchmark") or summary.get("forget_data")
    body = f"""
<h1>tokenforget report: {esc(summary.get("method"))} on {esc(subject)}</h1>
<p class="sub">identifier <b>{esc(summary.get("identifier"))}</b> · unlearned model
<code>{esc(summary["models"]["unlearned"])}</code> · token metrics use {esc(labels_note)}
(<code>{esc(summary.get("token_labels"))}</code>)</p>
<h2>Headline</h2>
<p class="hint">The unlearned model next to the target (before unlearning) and the retain model (never saw the
forget set: the goal). A targeted method moves unwanted words (UW) a lot and general words (GW) little.</p>
{verdict_list(summary.get("verdict", []))}
{headline_table(summary["headline"])}
{f'<p class="hint">Not available for this run:</p><ul class="hint">{missing}</ul>' if missing else ""}
<h2>Token view: what was forgotten</h2>
{token_section(evals)}
<h2>Greedy answers to forget questions, before and after</h2>
<p class="hint">Red: the answer still contains an unwanted word; green: none of them.</p>
{answers_table(forget_answer_rows(evals, shown), shown)}
<h2>Greedy answers to retain questions, before and after</h2>
{answers_table(retain_answer_rows(evals, shown, 15), shown)}
<h2>Training</h2>
<p class="hint">{esc(unlearn.get("steps", "?"))} steps; every loss term per optimizer step, and the
learning rate.</p>
{training_curves(unlearn_dir / "train_log.jsonl")}
{trajectory_charts(unlearn_dir / "trajectory.jsonl")}
{attack_sections(folder)}
{harness_section(folder)}
<h2>Stage times (seconds, this invocation)</h2>
<table style="width:auto">{times}</table>
<h2>Everything</h2>
<details><summary>summary.json</summary><pre>{esc(json.dumps(summary, indent=2, default=str))}</pre></details>
"""
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>tokenforget report</title><style>{CSS}</style></head><body><main>{body}</main></body></html>"
    )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- compare


def pareto_ranks(points: Sequence[tuple[float, float]]) -> list[int]:
    """Non-dominated sorting, both coordinates maximised: rank 0 = the Pareto frontier, rank 1 =
    the frontier once rank 0 is removed, and so on. p dominates q when p >= q in both coordinates
    and p > q in one."""

    def dominates(p: tuple[float, float], q: tuple[float, float]) -> bool:
        return p[0] >= q[0] and p[1] >= q[1] and (p[0] > q[0] or p[1] > q[1])

    ranks = [-1] * len(points)
    left, rank = set(range(len(points))), 0
    while left:
        front = {i for i in left if not any(dominates(points[j], points[i]) for j in left if j != i)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


@dataclass(frozen=True)
class ChartPoint:
    name: str
    utility: float
    forget_quality: float
    on_frontier: bool  # of every point
    group: str | None = None
    on_group_frontier: bool = False


def scatter_chart(points: Sequence[ChartPoint], references: Sequence[tuple[str, float, float]]) -> str:
    """Model utility (x) against forget quality (y, log scale) for every run, coloured by group;
    each group's frontier joined by a dashed line of its colour, the overall frontier ringed;
    references (target, retain) drawn as hollow squares."""
    width, height, left, right, top, bottom = 720, 440, 70, 20, 20, 50
    every = [(p.utility, p.forget_quality) for p in points] + [(x, y) for _, x, y in references]
    xs = [x for x, _ in every]
    ys = [math.log10(max(y, 1e-30)) for _, y in every]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad_x, pad_y = (x1 - x0) * 0.08 or 0.05, (y1 - y0) * 0.08 or 0.5
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (math.log10(max(y, 1e-30)) - y0) / (y1 - y0) * (height - top - bottom)

    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    for k in range(math.floor(y0), math.ceil(y1) + 1):
        if y0 <= k <= y1:
            y = sy(10.0**k)
            out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
            out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">1e{k}</text>')
    for k in range(6):
        x = x0 + (x1 - x0) * k / 5
        out.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 18}" text-anchor="middle">{x:.3f}</text>')
    out.append(
        f'<text x="{(left + width) / 2:.0f}" y="{height - 8}" text-anchor="middle">model utility →</text>'
    )
    out.append(f'<text x="14" y="{top + 10}" font-weight="600">forget quality ↑ (log)</text>')
    groups = list(dict.fromkeys(p.group for p in points))
    color = {g: COLORS[k % len(COLORS)] for k, g in enumerate(groups)}
    for k, group in enumerate(groups):
        frontier = sorted(
            (p.utility, p.forget_quality) for p in points if p.group == group and p.on_group_frontier
        )
        if len(frontier) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in frontier)
            out.append(
                f'<polyline fill="none" stroke="{color[group]}" stroke-width="1.5" stroke-dasharray="4 3" '
                f'points="{path}"/>'
            )
        if len(groups) > 1:
            out.append(
                f'<text x="{width - right - 4}" y="{top + 14 * (k + 1)}" text-anchor="end" '
                f'fill="{color[group]}">{esc(group)}</text>'
            )
    for name, x, y in references:
        out.append(
            f'<rect x="{sx(x) - 5:.1f}" y="{sy(y) - 5:.1f}" width="10" height="10" fill="none" '
            'stroke="#4b5563"/>'
            f'<text x="{sx(x) + 8:.1f}" y="{sy(y) + 4:.1f}" fill="#4b5563">{esc(name)}</text>'
        )
    for p in points:
        x, y = sx(p.utility), sy(p.forget_quality)
        ring = ' stroke="#111827" stroke-width="2"' if p.on_frontier else ""
        out.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{color[p.group]}"{ring}>'
            f"<title>{esc(p.name)}</title></circle>"
        )
        if p.on_frontier or len(points) <= 12:  # many runs: name only the frontier, the rest on hover
            out.append(f'<text x="{x + 8:.1f}" y="{y - 6:.1f}">{esc(p.name)}</text>')
    out.append("</svg>")
    return "".join(out)


KEY_METRICS = (  # the numbers every run is compared on
    "forget_quality",
    "model_utility",
    "uw_leak_rate",
    "uw_dlogp",
    "gw_dlogp",
    "kl_on_retain",
    "retain_Q_A_ROUGE",  # TOFU's model utility can hide its fall (a target weak on real authors)
)


UTILITY_SHARES = (0.8, 0.9, 0.95)  # of the target's model utility: the frontier's columns
RULE_SHARE = 0.9  # the stated rule: highest forget quality at >= 0.9x the target's utility


def method_label(summary: dict[str, Any]) -> str:
    """The run's method, with those of its own settings that differ from the published defaults, a
    retain term other than the method's own and, for a method that reads UW labels, what labelled
    them (`tpo_gd pl_form=hinge retain=kl [predictability]`): the group a run's point belongs to."""
    from tokenforget.losses import METHODS

    unlearn = summary.get("unlearn", {})
    name = str(unlearn.get("method") or summary.get("method"))
    method = METHODS.get(name.split("+")[-1])
    if method is None:
        return name
    defaults = method.settings().model_dump(mode="json")
    if method.needs_scorer or not method.uses_tokens:
        defaults.pop("tokens", None)  # forced by the method, not chosen
    settings = unlearn.get("settings") or {}
    changed = [
        f"{key}={value}" for key, value in settings.items() if key in defaults and value != defaults[key]
    ]
    own = METHODS.get(name.split("+")[0])  # ATWU on another loss keeps ATWU's retain term
    retain_term = unlearn.get("retain_term")
    if own is not None and retain_term and retain_term != own.retain:  # `unlearn.retain_loss` swapped it
        changed.append(f"retain={retain_term}")
    # a token-level run's labels are part of what it is: TPO on GPT-4o labels is not TPO on an identifier's
    reads_labels = not method.needs_scorer and (
        not method.uses_tokens or settings.get("tokens", "all") != "all"
    )
    identifier = summary.get("identifier")
    return " ".join([name, *changed, *([f"[{identifier}]"] if reads_labels and identifier else [])])


def point_of(run: dict[str, Any]) -> str:
    """A compare row's point (its config but seed); a run without its config is a point of its own."""
    return run.get("point") or run["run"]


def utility_frontier(
    rows: Sequence[dict[str, Any]],
    target_utility: float,
    shares: Sequence[float] = UTILITY_SHARES,
    by: str = "model_utility",
) -> list[dict[str, Any]]:
    """Per group, the highest forget quality among its points with model utility >= share x the
    target's, for each share, and its best point by the stated rule (the highest forget quality at
    >= RULE_SHARE x, ties to the lower KL on retain). Runs without both numbers are left out. `by`
    names another yardstick of what is kept (`retain_Q_A_ROUGE`, with the target's as
    `target_utility`): TOFU's utility can rise while the retain answers fall.

    A point is a configuration; runs that differ only in their seed (`point`, `seed`) are one point,
    read at its lowest seed, so a seed run at a best point never becomes a better point of its own
    (picking the luckiest seed). The best point's runs at every seed are listed under `seeds`."""

    def best(members: list[dict[str, Any]], share: float) -> dict[str, Any] | None:
        kept = [r for r in members if r[by] >= share * target_utility]
        return max(kept, key=lambda r: (r["forget_quality"], -(r.get("kl_on_retain") or 0.0)), default=None)

    scored = [r for r in rows if r.get("forget_quality") is not None and r.get(by) is not None]
    table = []
    for group in sorted({r["group"] for r in scored}):
        members = [r for r in scored if r["group"] == group]
        by_point: dict[str, list[dict[str, Any]]] = {}
        for r in members:
            by_point.setdefault(point_of(r), []).append(r)
        for runs in by_point.values():
            runs.sort(key=lambda r: r.get("seed") or 0)
        points = [runs[0] for runs in by_point.values()]
        entry: dict[str, Any] = {"group": group, "runs": len(members), "points": len(points)}
        for share in shares:
            point = best(points, share)
            entry[f"fq_at_{share:g}x"] = point["forget_quality"] if point else None
        point = best(points, RULE_SHARE)
        entry["best_run"] = point["run"] if point else None
        entry["best"] = {k: point.get(k) for k in (*KEY_METRICS, *ROBUSTNESS)} if point else None
        entry["seeds"] = (
            [{k: r.get(k) for k in ("run", "seed", *KEY_METRICS)} for r in by_point[point_of(point)]]
            if point
            else []
        )
        table.append(entry)
    return table


def seeds_text(seeds: Sequence[dict[str, Any]], target_utility: float) -> str:
    """The best point at each seed run: FQ (MU over the target's)."""
    return "; ".join(
        f"seed {r.get('seed') if r.get('seed') is not None else '?'}: {fmt(r['forget_quality'])} "
        f"({r['model_utility'] / target_utility:.2f}x)"
        for r in seeds
    )


def point_text(point: dict[str, Any], target: dict[str, Any]) -> str:
    """A best point in words, utility and retain ROUGE as shares of the target's."""

    def share(key: str) -> str:
        mine, theirs = point.get(key), target.get(key)
        return f"{mine / theirs:.2f}x" if mine is not None and theirs else "n/a"

    return (
        f"FQ {fmt(point['forget_quality'])}, MU {share('model_utility')}, retain ROUGE "
        f"{share('retain_Q_A_ROUGE')}, KL {fmt(point.get('kl_on_retain'))}"
    )


def frontier_table(frontier: Sequence[dict[str, Any]], target: dict[str, Any]) -> str:
    """The frontier as an HTML table (`target`: the target's headline numbers), with the best point's
    other seeds where they were run and its attack numbers where it was attacked."""
    shares = [k for k in (frontier[0] if frontier else {}) if k.startswith("fq_at_")]
    attacked = [k for k in ROBUSTNESS if any((e["best"] or {}).get(k) is not None for e in frontier)]
    seeded = any(len(e["seeds"]) > 1 for e in frontier)
    head = "".join(
        f"<th>{esc(c)}</th>"
        for c in [
            "method",
            *(f"FQ at MU {k[6:]}" for k in shares),
            "best run",
            *(["seeds at the best point: FQ (MU / target)"] if seeded else []),
            *(ROBUSTNESS_LABELS[k] for k in attacked),
        ]
    )
    body = ""
    for entry in frontier:
        best = entry["best"]
        point = f"{entry['best_run']}: {point_text(best, target)}" if best else "none"
        seeds = [seeds_text(entry["seeds"], target["model_utility"]) if len(entry["seeds"]) > 1 else ""]
        after = [fmt((best or {}).get(k)) for k in attacked]
        cells = [
            *(fmt(entry[k]) if entry[k] is not None else "none" for k in shares),
            point,
            *(seeds if seeded else []),
            *after,
        ]
        numbers = "".join(f'<td class="num">{esc(c)}</td>' for c in cells)
        body += f"<tr><td>{esc(entry['group'])}</td>{numbers}</tr>"
    return f'<table id="frontier"><tr>{head}</tr>{body}</table>'


def compare_rows(
    runs: Sequence[tuple[str, dict[str, Any]]], groups: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """One row per finished run (name, summary.json): its group (`groups[name]`, else its method),
    headline numbers, attack numbers and unlearning time."""
    rows = []
    for name, summary in runs:
        head = summary["headline"]["unlearned"]
        group = (groups or {}).get(name) or method_label(summary)
        rows.append({"run": name, "group": group, **{k: head.get(k) for k in KEY_METRICS}})
        rows[-1].update(point=summary.get("point"), seed=summary.get("seed"))
        rows[-1].update(summary.get("robustness") or {})
        rows[-1]["unlearn_seconds"] = summary.get("unlearn", {}).get("seconds")
    return rows


def run_entry(folder: Path, summary: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, summary) of a finished run folder as `compare` reads it: with its attack numbers
    (`robustness`), the hash of the model it unlearned (`unlearned_from`: its receipt's input model)
    and its point (`run_point`, with the receipt's code fingerprint)."""
    path = folder / "receipt.json"
    receipt = json.loads(path.read_text()) if path.is_file() else {}
    return folder.name, {
        **summary,
        "robustness": robustness(folder),
        "unlearned_from": receipt.get("input_model", {}).get("sha256"),
        **run_point(folder, receipt.get("code", {}).get("source_sha256")),
    }


def run_point(folder: Path, code: str | None = None) -> dict[str, Any]:
    """The run's configuration without its name and seed (`settings`), the fingerprint of the code
    that ran it (`code`, from its receipt; None before receipts held it) and its seed, from its
    config.yaml; empty without one. `point` is settings and code: runs that differ only in their
    seed share it, and runs with the same settings made by different code (a fix between them) do
    not."""
    import yaml

    path = folder / "config.yaml"
    if not path.is_file():
        return {}
    config = yaml.safe_load(path.read_text()) or {}
    config.pop("run", None)
    seed = (config.get("unlearn") or {}).pop("seed", None)
    settings = json.dumps(config, sort_keys=True, default=str)
    point = settings + (f" code {code}" if code else "")
    return {"point": point, "settings": settings, "code": code, "seed": seed}


def same_settings_other_code(runs: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """One line per set of runs with the same settings made by different code (receipt's source
    fingerprint): compare keeps them as separate points, where the frontier takes the better."""
    by_settings: dict[str, dict[str, list[str]]] = {}
    for name, summary in runs:
        if summary.get("settings") and summary.get("code"):
            by_settings.setdefault(summary["settings"], {}).setdefault(summary["code"], []).append(name)
    return [
        " vs ".join(f"{', '.join(names)} (code {code[:12]})" for code, names in codes.items())
        for codes in by_settings.values()
        if len(codes) > 1
    ]


def by_starting_model(
    runs: Sequence[tuple[str, dict[str, Any]]],
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Runs grouped by the model they unlearned: `summary["unlearned_from"]` (the receipt's hash), else
    the target's headline numbers. Forget quality and utility of runs from two targets are not on one
    scale, and the same prepare settings on two CPUs can give two targets (bf16 kernels differ)."""
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, summary in runs:
        target = summary.get("headline", {}).get("target", {})
        key = summary.get("unlearned_from") or (
            f"target MU {fmt(target.get('model_utility'))}, FQ {fmt(target.get('forget_quality'))}"
        )
        groups.setdefault(key, []).append((name, summary))
    return groups


def starting_models_text(groups: dict[str, list[tuple[str, dict[str, Any]]]]) -> str:
    """One line per starting model: its short id, the target's utility and its runs."""
    lines = []
    for key, members in groups.items():
        utility = members[0][1].get("headline", {}).get("target", {}).get("model_utility")
        names = ", ".join(n for n, _ in members[:4]) + (
            f" and {len(members) - 4} more" if len(members) > 4 else ""
        )
        lines.append(f"  model {key[:12]} (target utility {fmt(utility)}): {names}")
    return "\n".join(lines)


def best_point_runs(runs: Sequence[tuple[str, dict[str, Any]]]) -> set[str] | None:
    """The runs that are their method's best point by the stated rule (compare.html's best runs), at
    every seed run there, per starting model; None where the runs carry no target utility to state
    the rule against (a user's own data)."""
    best: set[str] = set()
    for members in by_starting_model(runs).values():
        target_utility = members[0][1]["headline"].get("target", {}).get("model_utility")
        if target_utility is None:
            return None
        best |= {
            r["run"] for e in utility_frontier(compare_rows(members), target_utility) for r in e["seeds"]
        }
    return best


def write_compare(
    path: Path, runs: Sequence[tuple[str, dict[str, Any]]], groups: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """compare.html over finished runs (name, summary.json): the plane, the frontier, the sorted
    table. Returns the table rows (rank 0 = on the Pareto frontier of forget quality and utility;
    `group_rank` the same within the run's group: `groups[name]`, else its method)."""
    rows = compare_rows(runs, groups)
    scored = [r for r in rows if r["forget_quality"] is not None and r["model_utility"] is not None]
    ranks = pareto_ranks([(r["model_utility"], r["forget_quality"]) for r in scored])
    for row, rank in zip(scored, ranks, strict=True):
        row["pareto_rank"] = rank
    for group in {r["group"] for r in scored}:
        members = [r for r in scored if r["group"] == group]
        for row, rank in zip(
            members, pareto_ranks([(r["model_utility"], r["forget_quality"]) for r in members]), strict=True
        ):
            row["group_rank"] = rank
    rows.sort(key=lambda r: (r.get("pareto_rank", 10**6), -(r["forget_quality"] or 0)))
    references = []
    if runs:
        first = runs[0][1]["headline"]
        references = [
            (model, first[model]["model_utility"], first[model]["forget_quality"])
            for model in ("target", "retain")
            if first.get(model, {}).get("model_utility") is not None
        ]
    points = [
        ChartPoint(
            r["run"],
            r["model_utility"],
            r["forget_quality"],
            r["pareto_rank"] == 0,
            r["group"],
            r["group_rank"] == 0,
        )
        for r in scored
    ]
    attacked = [k for k in ROBUSTNESS if any(r.get(k) is not None for r in rows)]
    columns = ["run", "group", "pareto_rank", "group_rank", *KEY_METRICS, *attacked, "unlearn_seconds"]
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{esc(fmt(r.get(c)))}</td>' for c in columns) + "</tr>"
        for r in rows
    )
    chart = scatter_chart(points, references) if points else '<p class="hint">No run has both numbers.</p>'
    target_utility = dict((name, mu) for name, mu, _ in references).get("target")
    frontier = ""
    if target_utility:
        frontier = (
            '<h2>Each method\'s frontier</h2><p class="sub">The highest forget quality a method reaches '
            "while keeping model utility at or above a share of the target's; best run: the highest "
            f"forget quality at {RULE_SHARE:g}x or more, ties to the lower KL on retain. Its retain "
            "ROUGE (the retain answers' ROUGE-L over the target's) shows what TOFU's utility can hide: "
            "a harmonic mean, it follows its lowest number, often the real-author answers.</p>"
            + frontier_table(utility_frontier(rows, target_utility), runs[0][1]["headline"]["target"])
        )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>tokenforget compare</title>'
        f"<style>{CSS}</style></head><body><main><h1>tokenforget: {len(rows)} runs compared</h1>"
        '<p class="sub">Forget quality against model utility, both higher = better. Ringed: the '
        "Pareto frontier of all runs (no other run is better in both); dashed in a group's colour: "
        "that group's own frontier. Squares: the target (before unlearning) and the retain model "
        "(the goal).</p>"
        f'<div class="card">{chart}</div>{frontier}<h2>Runs, frontier first</h2>'
        f'<table id="runs"><tr>{head}</tr>{body}</table></main></body></html>'
    )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return rows
