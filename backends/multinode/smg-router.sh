#!/usr/bin/env bash
# SGLang's router (smg) in front of engine servers on other nodes (SGLang or vLLM), on this one:
#   backends/multinode/smg-router.sh http://node1:30000 http://node2:30000 [extra smg flags]
# Start the workers first (sglang-node.sh, vllm-serve.sh, or one server per node); then from
# lmprog: lp.SGLangRouter("http://THIS_HOST:30000") (it asks the router for its workers and
# their kind). The flags are the ones lp.Runtime("sglang-router", ...) uses: POLICY (default
# cache_aware; manual routes by lmprog's program key, X-SMG-Routing-Key), workers checked every
# second. Settings: PORT (default 30000), PROMETHEUS_PORT (default 29000), SMG (the binary,
# default `smg` on PATH: pip install sglang-router).
set -euo pipefail

if (($# < 1)); then
    echo "usage: smg-router.sh WORKER_URL [WORKER_URL ...] [-- extra smg flags]" >&2
    exit 2
fi
workers=()
while (($#)) && [[ $1 != -- ]]; do
    workers+=("$1")
    shift
done
if (($#)); then shift; fi

exec "${SMG:-smg}" launch --host 0.0.0.0 --port "${PORT:-30000}" \
    --policy "${POLICY:-cache_aware}" \
    --worker-startup-check-interval 1 --health-check-interval-secs 1 \
    --prometheus-port "${PROMETHEUS_PORT:-29000}" \
    --worker-urls "${workers[@]}" \
    "$@"
