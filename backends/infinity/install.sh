#!/usr/bin/env bash
# Install infinity (`infinity-emb` on PyPI, an OpenAI-compatible embeddings server) into its
# own virtual environment and cache it: torch pinned to the CPU build first, then
# infinity-emb[server,torch] with the transformers / sentence-transformers releases it was
# tested with.
#
# infinity-emb 0.0.78 needs sentence-transformers<4 and numpy<2, which pull transformers 4.x:
# none of that may go into the project's .venv (transformers 5). The `optimum` extra (ONNX) is
# left out: the torch engine serves sentence-transformers models on the CPU. Idempotent: a
# stamp file is written only after the import check passed; later calls take ~10 ms.
#
# Usage: backends/infinity/install.sh     install (or reuse) the venv; prints its python
# Env:   LMPROG_CACHE_DIR          cache root (default ~/.cache/lmprog)
#        PYTHON                    interpreter that creates the venv (default: repo .venv's
#                                  base python, else python3); CPython 3.11 for the local torch
#        LMPROG_INFINITY_VERSION   infinity-emb version (default 0.0.78)
# The last line of stdout is the venv's python path; progress goes to stderr.
# Start the server with: $VENV/bin/infinity_emb v2 --model-id DIR ... (see README.md).
set -euo pipefail

VERSION="${LMPROG_INFINITY_VERSION:-0.0.78}"
# What infinity-emb 0.0.78 resolved to, and was tested with, offline on the CPU (2026-12).
PINS=("transformers==4.57.6" "sentence-transformers==3.4.1" "numpy==1.26.4")
# shellcheck source=backends/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/../venv.sh"
venv_open infinity/install infinity-venv ".lmprog-infinity-$VERSION.ok"
venv_pip_torch

log "installing infinity-emb[server,torch]==$VERSION"
venv_pip install --quiet "infinity-emb[server,torch]==$VERSION" "${PINS[@]}" "torch==$TORCH_VERSION"

log "checking: import infinity_emb's server"
version="$("$VPY" -c 'import infinity_emb, sentence_transformers
from infinity_emb.infinity_server import create_server
print(infinity_emb.__version__)' | tail -n1)" \
    || { log "the infinity_emb imports failed in $VENV"; exit 1; }
venv_done "infinity-emb $version"
