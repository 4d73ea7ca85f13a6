"""lp.Local on this machine: what the radix cache, token masks and batching buy, in one run.

Four measurements on the default model (Gemma 3 270M) unless `--model` names another, each a
side-by-side ratio so a noisy machine affects both sides alike (median of `--repeat` runs):

1. an 8-turn program (a long few-shot prefix, then 8 questions answered in turn) with the radix
   KV cache vs with it switched off (`cache_bytes=0`): target >= 3x;
2. constrained (regex) vs unconstrained decode speed, tokens/s: target >= 0.9;
3. the first constrained generation in a fresh process whose index caches are warm (model
   already loaded; outlines took ~17 s here): target <= 2 s;
4. 8 fork branches decoded together vs one after another (`max_batch_size=1`).

    .venv/bin/python bench/local.py [--model PATH] [--repeat 3] [--json report.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import lmprog as lp

SHOTS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Greece", "Athens"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Ireland", "Dublin"),
]  # fmt: skip
PREFIX = "A quiz about the capital cities of the countries of the world.\n" + "".join(
    f"Q: What is the capital city of the country called {c}? Think of its largest city "
    f"and seat of government.\nA: The capital of {c} is {a}.\n"
    for c, a in SHOTS * 3
)
TURNS = ["Japan", "Egypt", "Canada", "Peru", "Kenya", "Chile", "India", "Cuba"]


@lp.function(temperature=0)
def quiz(s):
    s += PREFIX
    for country in TURNS:
        s += f"Q: What is the capital city of the country called {country}?\nA:"
        s += lp.gen(None, max_tokens=8, stop="\n") + "\n"


@lp.function(temperature=0)
def free_text(s):
    s += "Write a long list of English words:\n"
    s += lp.gen("words", max_tokens=64, ignore_eos=True)


@lp.function(temperature=0)
def constrained_text(s):
    s += "Write a long list of English words:\n"
    s += lp.gen("words", max_tokens=64, regex="[a-z, ]+", ignore_eos=True)  # any cut is a match


@lp.function
def eight_forks(s):
    s += "Eight different short stories, one per line.\n"
    forks = s.fork(8)
    forks += lambda i: f"Story {i + 1}:" + lp.gen("story", max_tokens=32, ignore_eos=True)
    forks.join()


def timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def median_of(repeat: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(repeat))


def bench_radix(model: str | None, repeat: int) -> dict[str, Any]:
    cached, uncached = lp.Local(model), lp.Local(model, cache_bytes=0)
    cached.load()
    uncached.load()

    def once(backend: lp.Local) -> float:
        lp.flush_cache(backend)
        return timed(lambda: _ok(quiz.run(backend=backend)))

    with_cache = median_of(repeat, lambda: once(cached))
    without = median_of(repeat, lambda: once(uncached))
    stats = cached.stats()
    cached.shutdown()
    uncached.shutdown()
    return {
        "name": "8-turn program, radix cache on vs off",
        "a": with_cache,
        "b": without,
        "ratio": without / with_cache,
        "target": ">= 3x faster",
        "met": without / with_cache >= 3,
        "detail": f"prompt tokens reused {stats['hit_tokens']}, "
        f"computed {stats['computed_tokens']}",
    }


def bench_masks(model: str | None, repeat: int) -> dict[str, Any]:
    backend = lp.Local(model)
    backend.load()
    _ok(constrained_text.run(backend=backend))  # compile the regex once

    def speed(program: lp.Program) -> float:
        state = _ok(program.run(backend=backend))
        tokens = state.get_meta_info("words")["completion_tokens"]
        start = time.perf_counter()
        state = _ok(program.run(backend=backend))
        return float(tokens) / (time.perf_counter() - start)

    free = median_of(repeat, lambda: speed(free_text))
    constrained = median_of(repeat, lambda: speed(constrained_text))
    backend.shutdown()
    return {
        "name": "decode tokens/s, regex-constrained vs free",
        "a": constrained,
        "b": free,
        "ratio": constrained / free,
        "target": ">= 0.9",
        "met": constrained / free >= 0.9,
        "detail": "tokens/s",
    }


FRESH = """
import sys, time, lmprog as lp
model = sys.argv[1] or None
backend = lp.Local(model)
backend.load()
@lp.function
def p(s):
    s += "Year: " + lp.gen("y", regex="(19|20)[0-9]{2}", max_tokens=8)
start = time.perf_counter()
assert p.run(backend=backend).error() is None
first = time.perf_counter() - start
start = time.perf_counter()
assert p.run(backend=backend).error() is None
print(first, time.perf_counter() - start)
"""


def bench_fresh_process(model: str | None, repeat: int) -> dict[str, Any]:
    def once() -> tuple[float, float]:
        out = subprocess.run(
            [sys.executable, "-c", FRESH, model or ""], check=True, capture_output=True, text=True
        ).stdout.split()
        return float(out[-2]), float(out[-1])

    once()  # fills the disk caches
    runs = [once() for _ in range(repeat)]
    first = statistics.median(r[0] for r in runs)
    later = statistics.median(r[1] for r in runs)
    return {
        "name": "first constrained gen in a fresh process (warm disk cache), s",
        "a": first,
        "b": later,
        "ratio": first / later,
        "target": "<= 2 s",
        "met": first <= 2.0,
        "detail": "b: the same gen again in that process",
    }


def bench_batching(model: str | None, repeat: int) -> dict[str, Any]:
    batched, sequential = lp.Local(model), lp.Local(model, max_batch_size=1)
    batched.load()
    sequential.load()
    together = median_of(repeat, lambda: timed(lambda: _ok(eight_forks.run(backend=batched))))
    apart = median_of(repeat, lambda: timed(lambda: _ok(eight_forks.run(backend=sequential))))
    batched.shutdown()
    sequential.shutdown()
    return {
        "name": "8 forks x 32 tokens, batched vs sequential decode, s",
        "a": together,
        "b": apart,
        "ratio": apart / together,
        "target": "faster batched",
        "met": apart > together,
        "detail": "",
    }


def _ok(state: lp.ProgramState) -> lp.ProgramState:
    if state.error() is not None:
        raise state.error()  # type: ignore[misc]
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: Gemma)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    rows = []
    for bench in (bench_radix, bench_masks, bench_fresh_process, bench_batching):
        print(f"running {bench.__name__} ...", file=sys.stderr, flush=True)
        rows.append(bench(args.model, args.repeat))
    print(f"\n| measurement | a | b | ratio | target | met |\n|{' --- |' * 6}")
    for row in rows:
        print(
            f"| {row['name']} | {row['a']:.2f} | {row['b']:.2f} | {row['ratio']:.2f} "
            f"| {row['target']} | {'yes' if row['met'] else 'NO'} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
