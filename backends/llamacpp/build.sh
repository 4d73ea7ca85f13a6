#!/usr/bin/env bash
# Build llama.cpp's native `llama-server` from the sources vendored in the llama-cpp-python
# source archive on PyPI (the only llama.cpp source a package registry serves), and cache it.
#
# Usage: backends/llamacpp/build.sh            build (or reuse) the binary; prints its path
#        backends/llamacpp/build.sh --source   only fetch the vendored llama.cpp tree (for
#                                              convert_hf_to_gguf.py / gguf-py); prints its path
# Env:   LMPROG_CACHE_DIR  cache root (default ~/.cache/lmprog)
#        PYTHON            interpreter whose pip downloads the sources (default: repo .venv)
#        LMPROG_BUILD_JOBS parallel compile jobs (default 2)
# The last line of stdout is the path; progress goes to stderr.
set -euo pipefail

VERSION="0.3.36"
CACHE_ROOT="${LMPROG_CACHE_DIR:-$HOME/.cache/lmprog}"
DEST="$CACHE_ROOT/llama.cpp/$VERSION"
BIN="$DEST/bin/llama-server"
SRC="$DEST/src"
JOBS="${LMPROG_BUILD_JOBS:-2}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

MODE="binary"
case "${1:-}" in
    "") ;;
    --source) MODE="source" ;;
    *) echo "usage: $0 [--source]" >&2; exit 2 ;;
esac

log() { echo "[llamacpp/build] $*" >&2; }

binary_ok() { [[ -x "$BIN" ]] && "$BIN" --version >/dev/null 2>&1; }
source_ok() { [[ -f "$SRC/CMakeLists.txt" && -f "$SRC/convert_hf_to_gguf.py" ]]; }

# Fast paths: nothing to do.
if [[ "$MODE" == "binary" ]] && binary_ok; then echo "$BIN"; exit 0; fi
if [[ "$MODE" == "source" ]] && source_ok; then echo "$SRC"; exit 0; fi

mkdir -p "$DEST"
# One build at a time per cache (parallel test workers may all ask for the binary).
if command -v flock >/dev/null; then
    exec 9>"$DEST/.lock"
    flock 9
    if [[ "$MODE" == "binary" ]] && binary_ok; then echo "$BIN"; exit 0; fi
    if [[ "$MODE" == "source" ]] && source_ok; then echo "$SRC"; exit 0; fi
fi

if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
    PY="$REPO_ROOT/.venv/bin/python"
else
    PY="python3"
fi

WORK="$(mktemp -d "$DEST/.work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS

if ! source_ok; then
    log "downloading llama-cpp-python==$VERSION sources from PyPI"
    # --no-cache-dir: pip may hold a broken (native/AMX) build of this package in its cache.
    "$PY" -m pip download --quiet --no-deps --no-binary :all: --no-cache-dir \
        -d "$WORK/dl" "llama-cpp-python==$VERSION" >&2
    archive="$(find "$WORK/dl" -maxdepth 1 -name '*.tar.gz' | head -n1)"
    [[ -n "$archive" ]] || { log "pip download produced no source archive"; exit 1; }
    log "unpacking $(basename "$archive")"
    tar -xzf "$archive" -C "$WORK"
    vendored="$(find "$WORK" -maxdepth 4 -type d -path '*/vendor/llama.cpp' | head -n1)"
    [[ -n "$vendored" && -f "$vendored/CMakeLists.txt" ]] \
        || { log "vendor/llama.cpp not found in $(basename "$archive")"; exit 1; }
    # The tree's .git is a submodule pointer into the archive's .git, which stays behind:
    # bake its commit into the build info instead (else `--version` says "commit unknown").
    commit="$(git -C "$vendored" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    count="$(git -C "$vendored" rev-list --count HEAD 2>/dev/null || echo 0)"
    rm -f "$vendored/.git"
    sed -i -e "s/^set(BUILD_NUMBER 0)/set(BUILD_NUMBER $count)/" \
        -e "s/^set(BUILD_COMMIT \"unknown\")/set(BUILD_COMMIT \"$commit\")/" \
        "$vendored/cmake/build-info.cmake"
    rm -rf "$SRC"
    mv "$vendored" "$SRC"
fi

if [[ "$MODE" == "source" ]]; then echo "$SRC"; exit 0; fi

command -v cmake >/dev/null || { log "cmake not found (apt-get install cmake)"; exit 1; }
command -v c++ >/dev/null || command -v g++ >/dev/null \
    || { log "no C++ compiler (apt-get install build-essential)"; exit 1; }

# Ninja if present (system, or pip-installed into the venv), else Makefiles.
venv_bin="$(dirname "$PY")"
generator=("-G" "Unix Makefiles")
if command -v ninja >/dev/null; then
    generator=("-G" "Ninja")
elif [[ -x "$venv_bin/ninja" ]] || "$PY" -m pip install --quiet ninja >&2; then
    [[ -x "$venv_bin/ninja" ]] && generator=("-G" "Ninja" "-DCMAKE_MAKE_PROGRAM=$venv_bin/ninja")
fi
log "configuring (${generator[1]})"

# GGML_NATIVE=OFF is essential: the native build enables AMX and segfaults on first generation.
cmake -S "$SRC" -B "$WORK/build" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF \
    -DGGML_CCACHE=OFF \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF >&2

log "building llama-server with -j$JOBS (about 4-5 minutes on 2 cores)"
cmake --build "$WORK/build" --target llama-server -j "$JOBS" >&2

built="$WORK/build/bin/llama-server"
[[ -x "$built" ]] || built="$(find "$WORK/build" -type f -name llama-server -perm -u+x | head -n1)"
[[ -n "$built" && -x "$built" ]] || { log "build finished but no llama-server binary found"; exit 1; }
"$built" --version >&2 || { log "the built binary does not run"; exit 1; }

mkdir -p "$DEST/bin"
cp "$built" "$BIN.tmp"
mv -f "$BIN.tmp" "$BIN"
log "built in $((SECONDS - start)) s: $BIN"
echo "$BIN"
