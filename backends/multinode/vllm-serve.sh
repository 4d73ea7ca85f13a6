#!/usr/bin/env bash
# Serve MODEL with vLLM over the Ray cluster that ray-node.sh started, from the head node:
#   NNODES=2 backends/multinode/vllm-serve.sh MODEL [extra vllm serve flags]
# Waits until every node's GPUs have joined Ray, then runs `vllm serve` in the head's
# container with tensor parallelism inside a node and pipeline parallelism across nodes
# (TP = GPUS_PER_NODE, PP = NNODES, as vLLM recommends), on port PORT (default 8000) of the
# head. Settings: NNODES (default 2), GPUS_PER_NODE (default: the GPUs nvidia-smi lists here),
# NAME (the head's container), JOIN_TIMEOUT (s, default 600).
set -euo pipefail

model=${1:?usage: vllm-serve.sh MODEL [vllm serve flags...]}
shift
name=${NAME:-lmprog-ray}
nnodes=${NNODES:-2}
gpus_per_node=${GPUS_PER_NODE:-$(nvidia-smi -L | wc -l)}
want=$((nnodes * gpus_per_node))

deadline=$((SECONDS + ${JOIN_TIMEOUT:-600}))
count_gpus='import ray; ray.init(address="auto", logging_level="ERROR"); print(int(ray.cluster_resources().get("GPU", 0)))'
until have=$(docker exec "$name" python3 -c "$count_gpus" 2>/dev/null) && ((have >= want)); do
    if ((SECONDS >= deadline)); then
        echo "vllm-serve.sh: Ray has ${have:-no} GPUs after ${JOIN_TIMEOUT:-600}s, want $want" \
            "($nnodes nodes x $gpus_per_node); start ray-node.sh on every node" >&2
        exit 1
    fi
    sleep 5
done

exec docker exec "$name" vllm serve "$model" --host 0.0.0.0 --port "${PORT:-8000}" \
    --tensor-parallel-size "$gpus_per_node" --pipeline-parallel-size "$nnodes" \
    --distributed-executor-backend ray \
    --enable-prompt-tokens-details \
    --structured-outputs-config '{"backend": "guidance", "disable_any_whitespace": true}' \
    "$@"
