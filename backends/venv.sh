# shellcheck shell=bash
# Sourced by the engines' install scripts (vllm, transformers, infinity): one cached virtual
# environment per engine, apart from the project's .venv so that an engine's pins never move
# lmprog's own dependencies.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/../venv.sh"
#   venv_open TAG NAME STAMP   # ready already: print its python and exit; else take the lock,
#                              # create $CACHE_ROOT/NAME and set VPY
#   venv_pip install ...       # pip inside it: quiet, minus this machine's mirror warnings
#   venv_pip_torch             # torch first, pinned to the CPU build (an unpinned torch
#                              # resolves to the CUDA build: GBs of nvidia-* packages)
#   venv_done WHAT             # stamp it, log time and size, print its python (the last line
#                              # of stdout is always the venv's python; progress goes to stderr)
#
# Env: LMPROG_CACHE_DIR (default ~/.cache/lmprog); PYTHON, the interpreter that creates the venv
# (default: the base interpreter of the repository's .venv, else python3; CPython 3.11 takes
# the local torch wheel).

TORCH_VERSION="2.13.0"
CACHE_ROOT="${LMPROG_CACHE_DIR:-$HOME/.cache/lmprog}"
_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { echo "[$_TAG] $*" >&2; }

venv_open() {
    _TAG="$1"
    VENV="$CACHE_ROOT/$2"
    VPY="$VENV/bin/python"
    _STAMP="$VENV/$3"
    # Fast path: the stamp is written only after the install's import check passed.
    if [[ -f "$_STAMP" && -x "$VPY" ]]; then echo "$VPY"; exit 0; fi
    mkdir -p "$CACHE_ROOT"
    # One install at a time per cache (parallel test workers may all ask for it).
    if command -v flock >/dev/null; then
        exec 9>"$CACHE_ROOT/.$2.lock"
        flock 9
        if [[ -f "$_STAMP" && -x "$VPY" ]]; then echo "$VPY"; exit 0; fi
    fi
    local base_py="python3"
    if [[ -n "${PYTHON:-}" ]]; then
        base_py="$PYTHON"
    elif [[ -x "$_REPO_ROOT/.venv/bin/python" ]]; then
        # the interpreter behind the project's venv, not the venv itself
        base_py="$("$_REPO_ROOT/.venv/bin/python" -c 'import sys; print(sys._base_executable)')"
    fi
    _START=$SECONDS
    if [[ ! -x "$VPY" ]]; then
        log "creating $VENV with $base_py"
        "$base_py" -m venv "$VENV" >&2
    fi
}

venv_pip() {
    # pipefail (set by the caller) keeps pip's exit status through the filter
    "$VPY" -m pip --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
}

venv_pip_torch() {
    log "installing torch==$TORCH_VERSION (CPU)"
    venv_pip install --quiet "torch==$TORCH_VERSION"
}

venv_done() {
    touch "$_STAMP"
    log "$1 ready in $((SECONDS - _START)) s: $(du -sh "$VENV" 2>/dev/null | cut -f1) in $VENV"
    echo "$VPY"
}
