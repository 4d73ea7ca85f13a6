#!/usr/bin/env bash
# Start one engine in its official container image, with a persistent model cache volume:
#   backends/docker/serve.sh sglang   MODEL [extra sglang.launch_server flags]   # :30000
#   backends/docker/serve.sh vllm     MODEL [extra vllm serve flags]             # :8000
#   backends/docker/serve.sh llamacpp GGUF_REPO[:QUANT] [extra llama-server flags] # :8080
# Foreground by default (Ctrl-C stops and removes the container). DETACH=1 starts it in the
# background, waits until /health answers and prints the URL; if the engine dies or times out
# first, it prints the container's log tail and exits 1.
# Settings: PORT (host port), GPUS (docker --gpus value, default all), TAG (image tag),
# NAME (container name), CACHE_VOLUME (volume or host path for the cache), HEALTH_TIMEOUT (s).
# HF_TOKEN is passed through from the environment when set, never on the command line.
set -euo pipefail

usage="usage: serve.sh sglang|vllm|llamacpp MODEL [engine flags...]"
engine=${1:?$usage}
model=${2:?$usage}
shift 2

case "$engine" in
    sglang)
        image="lmsysorg/sglang:${TAG:-latest}"
        inner_port=30000
        cache="/root/.cache/huggingface"
        volume=${CACHE_VOLUME:-lmprog-hf-cache}
        cmd=(--entrypoint python3 "$image" -m sglang.launch_server --model-path "$model"
            --host 0.0.0.0 --port "$inner_port" "$@")
        ;;
    vllm)
        image="vllm/vllm-openai:${TAG:-latest}"
        inner_port=8000
        cache="/root/.cache/huggingface"
        volume=${CACHE_VOLUME:-lmprog-hf-cache}
        cmd=("$image" --model "$model" --host 0.0.0.0 --port "$inner_port"
            --enable-prompt-tokens-details
            --structured-outputs-config '{"backend": "guidance", "disable_any_whitespace": true}'
            "$@")
        ;;
    llamacpp)
        image="ghcr.io/ggml-org/llama.cpp:${TAG:-server-cuda}"
        inner_port=8080
        cache="/models"
        volume=${CACHE_VOLUME:-lmprog-gguf-cache}
        cmd=(-e LLAMA_CACHE=/models "$image" --hf-repo "$model" --host 0.0.0.0
            --port "$inner_port" --n-gpu-layers 99 --parallel 4 --ctx-size 32768 --swa-full "$@")
        ;;
    *)
        echo "serve.sh: unknown engine '$engine' ($usage)" >&2
        exit 2
        ;;
esac

port=${PORT:-$inner_port}
name=${NAME:-lmprog-$engine}
run=(docker run --name "$name" --gpus "${GPUS:-all}" --ipc host
    -p "$port:$inner_port" -v "$volume:$cache" -e HF_TOKEN)

if [[ "${DETACH:-0}" != 1 ]]; then
    exec "${run[@]}" --rm "${cmd[@]}"
fi

# Detached: kept after it exits (no --rm), so that a failed start leaves its log to read.
"${run[@]}" -d "${cmd[@]}" >/dev/null
deadline=$((SECONDS + ${HEALTH_TIMEOUT:-1800}))
until curl -fsS -o /dev/null --max-time 5 "http://127.0.0.1:$port/health"; do
    if [[ "$(docker inspect -f '{{.State.Running}}' "$name")" != true ]] || ((SECONDS >= deadline)); then
        echo "serve.sh: $engine did not become healthy on port $port; its log:" >&2
        docker logs --tail 50 "$name" >&2 || true
        docker rm -f "$name" >/dev/null 2>&1 || true
        exit 1
    fi
    sleep 5
done
echo "serve.sh: $engine is up; stop it with: docker rm -f $name" >&2
echo "http://127.0.0.1:$port"
