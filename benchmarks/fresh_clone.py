"""The README's first command on a fresh clone, timed: what a new user waits for.

    python benchmarks/fresh_clone.py                 # clones this repository's HEAD
    python benchmarks/fresh_clone.py --repo URL_OR_PATH --keep

Clones the repository into a temporary folder, gives it an empty model cache (`TOKENFORGET_CACHE`,
so the embedded model is converted and the world is trained as on a new machine; pip's and uv's own
download caches are left alone, as a user's would be), and runs the README's first command there:
its set-up half and its main-job half are timed apart. Appends to
benchmarks/results/fresh_clone.json the commit, the machine (CPU, instruction sets), the two times,
the main job's stage times and the seconds each world stage trained, and its headline verdict.

Run it on an idle machine: anything beside it shares the cores and the times say so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tokenforget.cpu import machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fresh_clone.json"


def readme_main_job_command(readme: str) -> list[str]:
    """The README's first command, split at `&&` into its set-up and main-job halves."""
    block = re.search(r"```bash\n(.*?)```", readme, re.S)
    if block is None:
        raise SystemExit("README.md has no ```bash block: its first line must be the main job's command")
    first_line = block.group(1).splitlines()[0]
    command = first_line.split("#", 1)[0].strip()
    halves = [half.strip() for half in command.split("&&")]
    if len(halves) != 2:
        raise SystemExit(f"README.md's first command is not 'SET-UP && MAIN JOB': {command!r}")
    return halves


def timed(command: str, cwd: Path, env: dict[str, str], log: Path) -> tuple[float, int]:
    start = time.perf_counter()
    with log.open("w") as out:
        rc = subprocess.run(
            ["bash", "-c", command], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        ).returncode
    return round(time.perf_counter() - start, 1), rc


def world_training_seconds(cache: Path) -> dict[str, float]:
    """Seconds each prepared stage trained, from its `train_log.json`."""
    seconds = {}
    for log in sorted(cache.glob("prepared/*/*/train_log.json")):
        seconds[log.parent.name] = json.loads(log.read_text()).get("seconds_this_session")
    return seconds


def main_job_record(clone: Path) -> dict:
    summaries = sorted(clone.glob("runs/*/summary.json"))
    if not summaries:
        return {"summary": None}
    summary = json.loads(summaries[0].read_text())
    return {
        "run": str(summaries[0].parent.relative_to(clone)),
        "method": summary.get("method"),
        "identifier": summary.get("identifier"),
        "stage_seconds": summary.get("stage_seconds"),
        "verdict": summary.get("verdict"),
        "headline": summary.get("headline"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", default=str(ROOT), help="what to clone (default: this repository)")
    parser.add_argument("--keep", action="store_true", help="keep the clone and its cache, and say where")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tokenforget-fresh-"))
    clone, cache = work / "clone", work / "cache"
    subprocess.run(["git", "clone", "-q", args.repo, str(clone)], check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True
    ).stdout.strip()
    setup, main_job = readme_main_job_command((clone / "README.md").read_text())
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["TOKENFORGET_CACHE"] = str(cache)

    print(f"fresh clone of {commit[:7]} in {clone}; timing: {setup!r} then {main_job!r}", file=sys.stderr)
    setup_s, setup_rc = timed(setup, clone, env, work / "setup.log")
    main_s, main_rc = (None, None)
    if setup_rc == 0:
        main_s, main_rc = timed(main_job, clone, env, work / "main_job.log")
    record = {
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "commands": [setup, main_job],
        "setup_seconds": setup_s,
        "setup_rc": setup_rc,
        "main_job_seconds": main_s,
        "main_job_rc": main_rc,
        "total_minutes": round((setup_s + (main_s or 0)) / 60, 1),
        "world_training_seconds": world_training_seconds(cache),
        **main_job_record(clone),
    }
    history = (
        json.loads(args.out.read_text())
        if args.out.exists()
        else {"command": "python benchmarks/fresh_clone.py", "runs": []}
    )
    history["runs"].append(record)
    args.out.write_text(json.dumps(history, indent=2) + "\n")
    print(
        json.dumps(
            {k: record[k] for k in ("setup_seconds", "main_job_seconds", "total_minutes", "main_job_rc")}
        )
    )
    if args.keep:
        print(f"kept: {work} (logs: setup.log, main_job.log)", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    if setup_rc != 0 or main_rc != 0:
        raise SystemExit(
            f"the fresh clone failed: set-up exit {setup_rc}, main job exit {main_rc}; "
            "rerun with --keep for the logs"
        )


if __name__ == "__main__":
    main()
