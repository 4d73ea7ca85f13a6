#!/usr/bin/env bash
# Install `transformers serve` (transformers' own OpenAI-compatible server) into its own
# virtual environment and cache it: torch pinned to the CPU build first, then
# transformers[serving] (fastapi, uvicorn, openai, accelerate, kernels).
#
# It lives apart from the project's .venv so the server's extras and its transformers pin never
# move the library's own dependencies. Idempotent: a stamp file is written only after the
# import check passed; later calls print the path in ~10 ms.
#
# Usage: backends/transformers/install.sh     install (or reuse) the venv; prints its python
# Env:   LMPROG_CACHE_DIR             cache root (default ~/.cache/lmprog)
#        PYTHON                       interpreter that creates the venv (default: repo .venv's
#                                     base python, else python3); CPython 3.11 for the local torch
#        LMPROG_TRANSFORMERS_VERSION  transformers version (default 5.25.0)
# The last line of stdout is the venv's python path; progress goes to stderr.
# Start the server with: $PY -m transformers.cli.transformers serve ... (see README.md).
set -euo pipefail

VERSION="${LMPROG_TRANSFORMERS_VERSION:-5.25.0}"
TORCH_VERSION="2.13.0"
CACHE_ROOT="${LMPROG_CACHE_DIR:-$HOME/.cache/lmprog}"
VENV="$CACHE_ROOT/transformers-serve-venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.lmprog-transformers-serve-$VERSION.ok"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

log() { echo "[transformers/install] $*" >&2; }

# Fast path: the stamp is written only after the imports below succeeded.
if [[ -f "$STAMP" && -x "$VPY" ]]; then echo "$VPY"; exit 0; fi

mkdir -p "$CACHE_ROOT"
# One install at a time per cache (parallel test workers may all ask for it).
if command -v flock >/dev/null; then
    exec 9>"$CACHE_ROOT/.transformers-serve-venv.lock"
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

log "installing transformers[serving]==$VERSION"
pip install --quiet "transformers[serving]==$VERSION" "torch==$TORCH_VERSION"

log "checking: import transformers.cli.serve"
version="$("$VPY" -c 'import transformers, fastapi, uvicorn, openai
import transformers.cli.serve
print(transformers.__version__)' | tail -n1)" \
    || { log "the serving imports failed in $VENV"; exit 1; }
touch "$STAMP"
log "transformers $version (serve) ready in $((SECONDS - start)) s: $(du -sh "$VENV" 2>/dev/null | cut -f1) in $VENV"
echo "$VPY"
