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
# shellcheck source=backends/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/../venv.sh"
venv_open transformers/install transformers-serve-venv ".lmprog-transformers-serve-$VERSION.ok"
venv_pip_torch

log "installing transformers[serving]==$VERSION"
venv_pip install --quiet "transformers[serving]==$VERSION" "torch==$TORCH_VERSION"

log "checking: import transformers.cli.serve"
version="$("$VPY" -c 'import transformers, fastapi, uvicorn, openai
import transformers.cli.serve
print(transformers.__version__)' | tail -n1)" \
    || { log "the serving imports failed in $VENV"; exit 1; }
venv_done "transformers $version (serve)"
