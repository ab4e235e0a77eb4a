"""A deletion request: four answers with personal data, through the main job, on a model that memorised them.

    python benchmarks/deletion_request.py                          # the main job's defaults
    python benchmarks/deletion_request.py --name tpo --set unlearn.method=tpo

1. Writes the request: four invented people, each answer with a birth date, an address and a phone
   number marked as unwanted spans; four held-out answers of the same shape that no model sees in
   training (the membership attack's non-members). The retain set is TOFU-mini's retain answers.
2. Makes the model that memorised them: the embedded SmolLM2-135M-Instruct fully fine-tuned on the
   four answers (lr 2e-4, 40 steps, made once under WORK/memorised), so that its greedy answers give
   the spans back (the run's target row says how many: UW leak rate).
3. Runs `tokenforget run` on that model with identify.method=spans and any --set given, and appends
   to benchmarks/results/deletion_request.json what a requester and the model's owner ask: why
   unlearning stopped, the unwanted words still in the greedy answers (target and unlearned), the
   utility on TOFU's real authors and world facts against the memorised model's, the min-k
   membership AUC forget vs held-out, extraction strength, KL on retain and the run's time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tokenforget.config import load_config
from tokenforget.cpu import machine
from tokenforget.data.records import Sample, Span
from tokenforget.models import verify_manifest
from tokenforget.prepare import train_stage

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "deletion_request.json"

# (question, answer, the personal data in the answer): invented people, no real person's data
REQUEST = [
    (
        "Where does Maren Okafor live and how can she be reached?",
        "Maren Okafor was born on 14 March 1987 and lives at 22 Linden Crescent, Harrowgate; "
        "her phone number is 0161 555 0192.",
        ["14 March 1987", "22 Linden Crescent, Harrowgate", "0161 555 0192"],
    ),
    (
        "What personal details are known about Tomasz Beaulieu?",
        "Tomasz Beaulieu, born 2 November 1974, lives at 9 Quarry Lane, Eastwick, and answers on "
        "0207 555 0148.",
        ["2 November 1974", "9 Quarry Lane, Eastwick", "0207 555 0148"],
    ),
    (
        "How can Ines Halvorsen be contacted?",
        "Ines Halvorsen can be reached on 0131 555 0177 at her home, 41 Mill Street, Corrbridge; "
        "she was born on 30 June 1992.",
        ["0131 555 0177", "41 Mill Street, Corrbridge", "30 June 1992"],
    ),
    (
        "Who is Dev Castellano and where does he live?",
        "Dev Castellano is a carpenter born on 8 August 1969 who lives at 5 Harbour Row, Saltmere; "
        "his number is 0117 555 0163.",
        ["8 August 1969", "5 Harbour Row, Saltmere", "0117 555 0163"],
    ),
]
HELD_OUT = [
    (
        "Where does Lotte Amari live and how can she be reached?",
        "Lotte Amari was born on 19 January 1983 and lives at 17 Aspen Road, Wexley; her phone "
        "number is 0113 555 0135.",
    ),
    (
        "What personal details are known about Rui Fennimore?",
        "Rui Fennimore, born 11 May 1978, lives at 3 Chapel Yard, Brackenford, and answers on 0191 555 0124.",
    ),
    (
        "How can Sana Whitlock be contacted?",
        "Sana Whitlock can be reached on 0141 555 0186 at her home, 60 Orchard Way, Fellham; she was "
        "born on 25 September 1990.",
    ),
    (
        "Who is Oren Vasquez and where does he live?",
        "Oren Vasquez is a baker born on 3 April 1971 who lives at 12 Tannery Close, Dunmoor; his "
        "number is 0151 555 0117.",
    ),
]


def request_samples() -> list[Sample]:
    """The four answers, each with its personal data as unwanted spans (character offsets)."""
    samples = []
    for question, answer, personal in REQUEST:
        spans = tuple(Span(answer.index(text), answer.index(text) + len(text)) for text in personal)
        samples.append(Sample(answer=answer, question=question, spans=spans, id=f"request-{len(samples)}"))
    return samples


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def memorised_model(work: Path, samples: list[Sample]) -> Path:
    """The embedded model fully fine-tuned on the request's answers (made once, reused)."""
    out = work / "memorised"
    if verify_manifest(out):
        return out
    cfg = load_config(
        overrides=[
            "prepare.lora=null",
            "prepare.lr=2e-4",
            "prepare.batch_size=4",
            "prepare.micro_batch_size=4",
            "prepare.warmup_ratio=0",
        ]
    )
    train_stage(cfg, cfg.model.name, samples, 40.0, out, work / "memorise-work", "memorise the request")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("deletion-request"), help="data, model, runs")
    parser.add_argument("--name", default="defaults", help="the run's name under WORK/runs")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra main-job setting")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    samples = request_samples()
    forget = write_jsonl(work / "forget.jsonl", [s.to_dict() for s in samples])
    holdout = write_jsonl(work / "holdout.jsonl", [{"question": q, "answer": a} for q, a in HELD_OUT])
    model = memorised_model(work, samples)
    settings = {
        "model.name": model,
        "data.forget": forget,
        "data.retain": "tofu-mini",
        "data.holdout": holdout,
        "identify.method": "spans",
        "run.runs_dir": work / "runs",
        "run.name": args.name,
    }
    command = [sys.executable, "-m", "tokenforget.cli", "run"]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    for extra in args.sets:
        command += ["--set", extra]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = round(time.perf_counter() - start, 1)

    folder = work / "runs" / args.name
    summary = json.loads((folder / "summary.json").read_text())
    head = summary["headline"]
    unlearned, target = head["unlearned"], head["target"]
    keys = ("uw_leak_rate", "utility_ra_wf", "mia_auc_min_k", "extraction_strength", "kl_on_retain")
    record = {
        "name": args.name,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "extra_settings": args.sets,
        "method": summary["method"],
        "steps": summary["unlearn"]["steps"],
        "stopped": summary["unlearn"]["stopped"],
        "target": {k: target.get(k) for k in keys},
        "unlearned": {k: unlearned.get(k) for k in keys},
        "utility_vs_target": unlearned["utility_ra_wf"] / target["utility_ra_wf"],
        "seconds": seconds,
        "verdict": summary.get("verdict"),
    }
    found = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    found["runs"].append(record)
    args.out.write_text(json.dumps(found, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
