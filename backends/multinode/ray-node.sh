#!/usr/bin/env bash
# One node of a Ray cluster in vLLM's container, for tensor/pipeline parallelism across nodes
# (vLLM's documented multi-node set-up):
#   head:         backends/multinode/ray-node.sh head   HEAD_IP
#   each worker:  backends/multinode/ray-node.sh worker HEAD_IP
#   then, head:   NNODES=2 backends/multinode/vllm-serve.sh MODEL
# The container runs in the background with host networking; stop it with
# `docker rm -f lmprog-ray`. Settings: NODE_IP (this node's address on the cluster network;
# default HEAD_IP on the head, else the first of `hostname -I`), TAG (vllm/vllm-openai tag),
# HF_CACHE (host folder of the Hugging Face cache, the same path on every node; default
# ~/.cache/huggingface), NAME (container name). HF_TOKEN, NCCL_SOCKET_IFNAME and
# GLOO_SOCKET_IFNAME are passed through from the environment when set.
set -euo pipefail

usage="usage: ray-node.sh head|worker HEAD_IP"
role=${1:?$usage}
head_ip=${2:?$usage}
name=${NAME:-lmprog-ray}
hf_cache=${HF_CACHE:-$HOME/.cache/huggingface}
mkdir -p "$hf_cache"

case "$role" in
    head)
        node_ip=${NODE_IP:-$head_ip}
        ray_start="ray start --block --head --port=6379 --node-ip-address=$node_ip"
        ;;
    worker)
        node_ip=${NODE_IP:-$(hostname -I | awk '{print $1}')}
        ray_start="ray start --block --address=$head_ip:6379 --node-ip-address=$node_ip"
        ;;
    *)
        echo "ray-node.sh: unknown role '$role' ($usage)" >&2
        exit 2
        ;;
esac

docker run -d --name "$name" --network host --ipc host --shm-size 16g --gpus all \
    -v "$hf_cache:/root/.cache/huggingface" \
    -e HF_TOKEN -e NCCL_SOCKET_IFNAME -e GLOO_SOCKET_IFNAME \
    -e "VLLM_HOST_IP=$node_ip" \
    --entrypoint /bin/bash "vllm/vllm-openai:${TAG:-latest}" -c "$ray_start" >/dev/null
echo "ray-node.sh: $role node $node_ip started in container $name (docker logs -f $name)" >&2
