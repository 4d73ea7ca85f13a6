#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: lint, types, unit and integration tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/ruff check lmprog tests examples
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
