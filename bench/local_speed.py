"""lp.Local (packed and float32 weights) next to llama-server on the same CPU, model and threads:
decode tokens/s at 1, 4 and 16 sequences, prefill tokens/s of a ~1,000-token prompt, a
constrained step's cost next to a free one (a regex, a JSON schema), and greedy agreement
with llama-server's tokens.

Every measurement is repeated `--repeat` times with the engines interleaved (one engine's turn,
then the next's), so a machine that other work slows affects every engine alike; the median
is reported, with the machine's load.

    .venv/bin/python bench/local_speed.py [--threads 1] [--repeat 3] [--tokens 64]
        [--transformers-layers]

`--transformers-layers` adds lp.Local packed running transformers' Gemma 3 modeling code
instead of lp.Local's lean pass (lmprog/backends/local/gemma3.py), to measure what it saves.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from unittest import mock

import torch

import lmprog as lp
from lmprog.models import gemma3_270m_gguf

PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "The three most important inventions of the last century are",
    "def fibonacci(n):",
    "Q: What is the capital of France?\nA:",
    "List number 1 of English words:\n",
    "The recipe for a good pancake starts with",
]
LONG = "A record of the weather, one line a day.\n" + "".join(
    f"Day {d}: morning fog, a dry afternoon and {d % 7 + 3} hours of sun.\n" for d in range(60)
)


@lp.function
def words(s, i, tokens, regex):
    s += f"List number {i} of English words:\n"
    s += lp.gen("w", max_tokens=tokens, temperature=0, ignore_eos=True, regex=regex)


NUMBERS = json.dumps(
    {"type": "array", "items": {"type": "integer"}, "minItems": 24, "maxItems": 24}
)


@lp.function
def numbers(s, i):
    s += f"List number {i}: twenty-four numbers as a JSON array.\n"
    s += lp.gen("w", max_tokens=200, temperature=0, json_schema=NUMBERS)


@lp.function
def prefill(s, salt):
    s += f"{salt} " + LONG + "Summary:"
    s += lp.gen("w", max_tokens=1, temperature=0)


@lp.function
def greedy(s, prompt, tokens):
    s += prompt + lp.gen("w", max_tokens=tokens, temperature=0, ignore_eos=True)


def decode_speed(backend: lp.Backend, batch: int, tokens: int, regex: str | None) -> float:
    """Generated tokens/s over `batch` concurrent requests (prompts cached by a warm-up)."""
    words.run_batch([(i, 2, regex) for i in range(batch)], backend=backend)
    start = time.perf_counter()
    states = words.run_batch(
        [(i, tokens, regex) for i in range(batch)], backend=backend, max_concurrency=batch
    )
    elapsed = time.perf_counter() - start
    for state in states:
        if state.error() is not None:
            raise state.error()  # type: ignore[misc]
    return sum(s.get_meta_info("w")["completion_tokens"] for s in states) / elapsed


def json_speed(backend: lp.Backend) -> float:
    """Generated tokens/s of one request under a JSON schema (24 integers: mostly digits,
    commas and spaces, so most steps allow few tokens)."""
    numbers.run(0, backend=backend)  # the prompt cached, the schema compiled
    start = time.perf_counter()
    state = numbers.run(1, backend=backend)
    elapsed = time.perf_counter() - start
    if state.error() is not None:
        raise state.error()  # type: ignore[misc]
    return state.get_meta_info("w")["completion_tokens"] / elapsed


def prefill_speed(backend: lp.Backend, salt: int) -> float:
    """Prompt tokens/s of a ~1,000-token prompt no cache holds (a fresh first line)."""
    start = time.perf_counter()
    state = prefill.run(f"Log {salt}.", backend=backend)
    elapsed = time.perf_counter() - start
    meta = state.get_meta_info("w")
    return (meta["prompt_tokens"] - (meta.get("cached_tokens") or 0)) / elapsed


def shared_start(a: str, b: str) -> int:
    """How many characters two texts share from the start."""
    pairs = enumerate(zip(a, b, strict=False))
    return next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--transformers-layers", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore", lp.PrefixOrderWarning)  # the prefill prompts differ on purpose
    torch.set_num_threads(args.threads)
    runtime = lp.Runtime(
        "llama.cpp", gemma3_270m_gguf(), slots=16, ctx_per_slot=2048, threads=args.threads
    )
    engines: dict[str, lp.Backend] = {
        "lp.Local packed": lp.Local(weights="packed"),
        "lp.Local float32": lp.Local(weights="float32"),
        "llama-server": lp.LlamaCpp(runtime.url),
    }
    for backend in engines.values():
        if isinstance(backend, lp.Local):
            backend.load()
    if args.transformers_layers:
        backend = engines["lp.Local packed, transformers' layers"] = lp.Local(weights="packed")
        with mock.patch("lmprog.backends.local.forward.lean_forward", lambda _model: None):
            backend.load()
    rows: dict[str, dict[str, list[float]]] = {name: {} for name in engines}

    def measure(label: str, run: Callable[[lp.Backend, int], float]) -> None:
        for repeat in range(args.repeat):
            for name, backend in engines.items():
                rows[name].setdefault(label, []).append(run(backend, repeat))

    batches = [int(b) for b in args.batches.split(",")]
    for batch in batches:
        measure(f"decode x{batch}", lambda b, _r, n=batch: decode_speed(b, n, args.tokens, None))
    measure("prefill", lambda b, r: prefill_speed(b, 1000 * r + 7))
    measure("digits x1", lambda b, _r: decode_speed(b, 1, args.tokens, "[0-9 ]+"))
    measure("json x1", lambda b, _r: json_speed(b))
    texts = {
        name: [s["w"] for s in greedy.run_batch([(p, 48) for p in PROMPTS], backend=backend)]
        for name, backend in engines.items()
    }
    runtime.shutdown()

    print(
        f"load average {os.getloadavg()[0]:.1f}, {args.threads} thread(s), median of "
        f"{args.repeat}, {args.tokens} tokens per request\n"
    )
    labels = list(next(iter(rows.values())))
    print("| engine | " + " | ".join(labels) + " |")
    print("| --- " * (len(labels) + 1) + "|")
    for name, row in rows.items():
        cells = [f"{statistics.median(row[label]):.1f}" for label in labels]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(
        "\n(tokens/s; 'digits': one request under the regex [0-9 ]+; 'json': one request "
        "under a JSON schema, an array of 24 integers)\n"
    )
    reference = texts["llama-server"]
    for name in engines:
        shared = [shared_start(a, b) for a, b in zip(texts[name], reference, strict=True)]
        same = sum(a == b for a, b in zip(texts[name], reference, strict=True))
        print(
            f"{name}: {same}/{len(PROMPTS)} greedy texts equal llama-server's; "
            f"characters shared from the start: {shared}"
        )
    packed, full = texts["lp.Local packed"], texts["lp.Local float32"]
    same = sum(a == b for a, b in zip(packed, full, strict=True))
    print(f"lp.Local packed vs float32: {same}/{len(PROMPTS)} equal")


if __name__ == "__main__":
    main()
