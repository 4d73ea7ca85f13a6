#!/usr/bin/env bash
# Wait until an engine answers 200 on /health: backends/wait-health.sh URL [TIMEOUT_S]
# Exits 0 when healthy, 1 after TIMEOUT_S seconds (default 1800: a first start downloads the
# weights). Works for SGLang, vLLM, llama.cpp and SGLang's router alike.
set -euo pipefail

url=${1:?usage: wait-health.sh URL [TIMEOUT_S]}
timeout=${2:-1800}
deadline=$((SECONDS + timeout))
until curl -fsS -o /dev/null --max-time 5 "${url%/}/health"; do
    if ((SECONDS >= deadline)); then
        echo "wait-health: ${url%/}/health not healthy after ${timeout}s" >&2
        exit 1
    fi
    sleep 5
done
echo "wait-health: ${url%/} is healthy" >&2
