#!/usr/bin/env bash
# One node of a multi-node SGLang server (SGLang's --nnodes/--node-rank/--dist-init-addr), in
# SGLang's container. Run it on every node, the same MODEL and NNODES, rank 0 on the head:
#   head:    backends/multinode/sglang-node.sh MODEL 0 2 HEAD_IP
#   worker:  backends/multinode/sglang-node.sh MODEL 1 2 HEAD_IP
# The head serves HTTP on PORT (default 30000): lp.SGLang("http://HEAD_IP:30000").
# Tensor parallelism spans all GPUs by default (TP = GPUS_PER_NODE x NNODES); set PP to split
# layers across nodes instead (TP then defaults to GPUS_PER_NODE x NNODES / PP).
# Extra arguments go to sglang.launch_server. Settings: GPUS_PER_NODE (default: the GPUs
# nvidia-smi lists), TP, PP, DIST_PORT (default 5000), TAG, HF_CACHE, NAME. HF_TOKEN,
# NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME are passed through when set.
set -euo pipefail

usage="usage: sglang-node.sh MODEL NODE_RANK NNODES HEAD_IP [launch_server flags...]"
model=${1:?$usage}
rank=${2:?$usage}
nnodes=${3:?$usage}
head_ip=${4:?$usage}
shift 4
gpus_per_node=${GPUS_PER_NODE:-$(nvidia-smi -L | wc -l)}
pp=${PP:-1}
tp=${TP:-$((gpus_per_node * nnodes / pp))}
hf_cache=${HF_CACHE:-$HOME/.cache/huggingface}
mkdir -p "$hf_cache"

exec docker run --rm --name "${NAME:-lmprog-sglang-node}" --network host --ipc host \
    --shm-size 16g --gpus all \
    -v "$hf_cache:/root/.cache/huggingface" \
    -e HF_TOKEN -e NCCL_SOCKET_IFNAME -e GLOO_SOCKET_IFNAME \
    --entrypoint python3 "lmsysorg/sglang:${TAG:-latest}" -m sglang.launch_server \
    --model-path "$model" --tp-size "$tp" --pp-size "$pp" \
    --nnodes "$nnodes" --node-rank "$rank" --dist-init-addr "$head_ip:${DIST_PORT:-5000}" \
    --host 0.0.0.0 --port "${PORT:-30000}" "$@"
