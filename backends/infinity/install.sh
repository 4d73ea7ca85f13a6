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
TORCH_VERSION="2.13.0"
# What infinity-emb 0.0.78 resolved to, and was tested with, offline on the CPU (2026-12).
PINS=("transformers==4.57.6" "sentence-transformers==3.4.1" "numpy==1.26.4")
CACHE_ROOT="${LMPROG_CACHE_DIR:-$HOME/.cache/lmprog}"
VENV="$CACHE_ROOT/infinity-venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.lmprog-infinity-$VERSION.ok"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

log() { echo "[infinity/install] $*" >&2; }

# Fast path: the stamp is written only after the imports below succeeded.
if [[ -f "$STAMP" && -x "$VPY" ]]; then echo "$VPY"; exit 0; fi

mkdir -p "$CACHE_ROOT"
# One install at a time per cache (parallel test workers may all ask for it).
if command -v flock >/dev/null; then
    exec 9>"$CACHE_ROOT/.infinity-venv.lock"
    flock 9
    if [[ -f "$STAMP" && -x "$VPY" ]]; then echo "$VPY"; exit 0; fi
fi

if [[ -n "${PYTHON:-}" ]]; then
    BASE_PY="$PYTHON"
elif [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
    # Create the venv from the interpreter behind the project's venv, not from the venv.
    BASE_PY="$("$REPO_ROOT/.venv/bin/python" -c 'import sys; print(sys._base_executable)')"
else
    BASE_PY="python3"
fi

start=$SECONDS
if [[ ! -x "$VPY" ]]; then
    log "creating $VENV with $BASE_PY"
    "$BASE_PY" -m venv "$VENV" >&2
fi
# pip's output goes to stderr, minus the per-package warnings about this machine's
# unreachable local index mirrors. pipefail keeps pip's exit status.
pip() {
    "$VPY" -m pip --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
}

# torch first and pinned: an unpinned/ranged torch resolves to the CUDA build (GBs of nvidia-*).
log "installing torch==$TORCH_VERSION (CPU)"
pip install --quiet "torch==$TORCH_VERSION"

log "installing infinity-emb[server,torch]==$VERSION"
pip install --quiet "infinity-emb[server,torch]==$VERSION" "${PINS[@]}" "torch==$TORCH_VERSION"

log "checking: import infinity_emb's server"
version="$("$VPY" -c 'import infinity_emb, sentence_transformers
from infinity_emb.infinity_server import create_server
print(infinity_emb.__version__)' | tail -n1)" \
    || { log "the infinity_emb imports failed in $VENV"; exit 1; }
touch "$STAMP"
log "infinity-emb $version ready in $((SECONDS - start)) s: $(du -sh "$VENV" 2>/dev/null | cut -f1) in $VENV"
echo "$VPY"
