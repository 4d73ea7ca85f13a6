"""Prefix reuse on real engines: prompt tokens sent vs prompt tokens the engine computed.

Three batches: fork-heavy (each program reads its own long document, then forks 4 questions
and a summary), few-shot (a long shared few-shot prefix, then two turns per program), and
doc-chat (each program's own long document, then three turns). Each runs in four
configurations (median of `--repeat` runs):

1. one server, prefix warming off (a wrapper whose `warm` does nothing: neither the fork's
   nor the batch's shared prefix is sent ahead);
2. one server, warming on (lmprog's default);
3. two replicas, `lp.Replicas(..., routing="round_robin")` (a plain load balancer);
4. two replicas, `lp.Replicas(...)` (prefix affinity, lmprog's default).

"sent" and "computed (report)" are lmprog's cache report of the gens (`lp.cache_report`);
"computed (engine)" is the servers' own counter of prompt tokens they computed, summed over
both servers, so it also counts warm-ups and select scoring (llama-server:
`llamacpp:prompt_tokens_total`; vLLM: `vllm:prompt_tokens_by_source_total{local_compute}`).
Every configuration's prompts start with their own tag, so none reuses another's cache.

    .venv/bin/python bench/prefix_reuse.py [--engine llama.cpp|vllm] [--model tiny|gemma]
                                           [--programs 16] [--repeat 3]

The tiny model (tests/support/models.py) is a random 2-layer model: its output is noise and
its prefill is nearly free, so only the token counts mean anything with it. Gemma 3 270M
(`--model gemma`, llama.cpp only) shows the time too.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import lmprog as lp
from lmprog.backends.base import WrappedBackend
from lmprog.models import gemma3_270m_gguf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.models import tiny_model_dir, tiny_model_gguf

TOPICS = ["rivers", "bridges", "volcanoes", "libraries", "glaciers", "harbours", "orchards"]
SHOTS = "".join(
    f"Q: Name a fact about {t} number {i}.\nA: Fact {i} about {t} is that they are studied "
    f"by people who care about {t} and write long reports about them.\n"
    for i in range(2)
    for t in TOPICS
)  # ~2,000 characters


def document(i: int) -> str:
    """A program's own long document (~1,500 characters)."""
    return "".join(
        f"Section {k} of report {i}: the {TOPICS[(i + k) % len(TOPICS)]} of region {i} were "
        f"surveyed in year {1900 + 7 * k + i}, and the survey found {k + i} notable sites.\n"
        for k in range(12)
    )


@lp.function(temperature=0)
def fork_heavy(s, tag, i):
    s += tag + document(i) + "Questions about this report:\n"
    forks = s.fork(4)
    forks += lambda k: (
        f"Question {k + 1}: what does section {k} say?\nAnswer:" + lp.gen("answer", max_tokens=16)
    )
    forks.join()
    s += "\nSummary:" + lp.gen("summary", max_tokens=16)


@lp.function(temperature=0)
def few_shot(s, tag, i):
    topic = TOPICS[i % len(TOPICS)]
    s += tag + SHOTS + f"Q: Name a fact about {topic} number {100 + i}.\nA:"
    s += lp.gen("first", max_tokens=16, stop="\n")
    s += f"\nQ: Name another fact about {topic} number {200 + i}.\nA:"
    s += lp.gen("second", max_tokens=16, stop="\n")


@lp.function(temperature=0)
def document_chat(s, tag, i):
    s += tag + document(i)
    for turn in range(3):
        s += f"Question {turn + 1}: what does section {turn} say?\nAnswer:"
        s += lp.gen(None, max_tokens=16, stop="\n") + "\n"


WORKLOADS: dict[str, lp.Program] = {
    "fork-heavy": fork_heavy,
    "few-shot": few_shot,
    "doc-chat": document_chat,
}


class NoWarm(WrappedBackend):
    """`inner` with prefix warm-ups switched off (the "without" side of the comparison)."""

    async def warm(self, prompt: str) -> None:
        return None


@dataclass(frozen=True)
class Engine:
    name: str
    counter: re.Pattern[str]  # the /metrics line of prompt tokens the engine computed
    start: Callable[[], lp.Runtime]
    client: Callable[[str], lp.Backend]


VLLM_COMPUTED = r'^vllm:prompt_tokens_by_source_total\{.*source="local_compute".*\} (\S+)$'


def engines(model: str) -> dict[str, Engine]:
    gguf = gemma3_270m_gguf() if model == "gemma" else tiny_model_gguf()
    return {
        "llama.cpp": Engine(
            "llama-server",
            re.compile(r"^llamacpp:prompt_tokens_total (\S+)$", re.M),
            lambda: lp.Runtime("llama.cpp", gguf, slots=4, ctx_per_slot=4096, metrics=True),
            lp.LlamaCpp,
        ),
        "vllm": Engine(
            "vLLM-CPU",
            re.compile(VLLM_COMPUTED, re.M),
            lambda: lp.Runtime(
                "vllm",
                tiny_model_dir(),
                slots=16,
                ctx_per_slot=2048,  # the tiny model's limit
                served_model_name="tiny",
                optimization_level=0,
                enforce_eager=True,
            ),
            lp.VLLM,
        ),
    }


def computed_by_engines(engine: Engine, urls: list[str]) -> int:
    total = 0.0
    for url in urls:
        found = engine.counter.search(httpx.get(f"{url}/metrics", timeout=30).text)
        if found is None:
            raise RuntimeError(f"{engine.name} at {url} reports no prompt-token counter")
        total += float(found.group(1))
    return int(total)


def configurations(engine: Engine, urls: list[str]) -> Iterator[tuple[str, lp.Backend]]:
    yield "1 server, no warming", NoWarm(engine.client(urls[0]))
    yield "1 server, warming", engine.client(urls[0])
    yield "2 replicas, round robin", lp.Replicas(urls, kind=engine.client, routing="round_robin")
    yield "2 replicas, affinity", lp.Replicas(urls, kind=engine.client)


def run_once(
    engine: Engine, urls: list[str], program: lp.Program, backend: lp.Backend, tag: str, n: int
) -> dict[str, float]:
    before = computed_by_engines(engine, urls)
    started = time.perf_counter()
    states = program.run_batch([(tag, i) for i in range(n)], backend=backend)
    seconds = time.perf_counter() - started
    errors = [s.error() for s in states if s.error() is not None]
    if errors:
        raise RuntimeError(f"{tag.strip()}: {errors[0]}")
    report = lp.cache_report(states)
    assert report.prompt_tokens is not None and report.computed_tokens is not None
    return {
        "requests": report.requests,
        "sent": report.prompt_tokens,
        "computed_report": report.computed_tokens,
        "computed_engine": computed_by_engines(engine, urls) - before,
        "seconds": seconds,
    }


def measure(engine: Engine, urls: list[str], programs: int, repeat: int) -> list[dict[str, Any]]:
    """Each workload in each configuration, `repeat` times: the median of each column."""
    rows = []
    for workload, program in WORKLOADS.items():
        for config, backend in configurations(engine, urls):
            runs = [
                run_once(engine, urls, program, backend, f"[{workload}, {config}, run {k}]\n",
                         programs)
                for k in range(repeat)
            ]  # fmt: skip
            row: dict[str, Any] = {"engine": engine.name, "workload": workload}
            row["configuration"] = config
            row.update({key: statistics.median(r[key] for r in runs) for key in runs[0]})
            rows.append(row)
            print(_line(row), flush=True)
    return rows


HEADER = (
    f"{'engine':13} {'workload':11} {'configuration':24} {'requests':>8} {'sent':>8} "
    f"{'computed (report)':>18} {'computed (engine)':>18} {'of sent':>8} {'time s':>7}"
)


def _line(row: dict[str, Any]) -> str:
    share = row["computed_engine"] / row["sent"] if row["sent"] else float("nan")
    return (
        f"{row['engine']:13} {row['workload']:11} {row['configuration']:24} "
        f"{row['requests']:>8.0f} {row['sent']:>8,.0f} {row['computed_report']:>18,.0f} "
        f"{row['computed_engine']:>18,.0f} {share:>8.0%} {row['seconds']:>7.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=["llama.cpp", "vllm"], default="llama.cpp")
    parser.add_argument("--model", choices=["tiny", "gemma"], default="tiny")
    parser.add_argument("--programs", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    # each fork-heavy program has its own document, which the prefix-order lint points out
    warnings.filterwarnings("ignore", category=lp.PrefixOrderWarning)
    if args.engine == "vllm" and args.model != "tiny":
        parser.error("vLLM runs the tiny model here (Gemma on vLLM-CPU takes minutes to start)")
    engine = engines(args.model)[args.engine]
    with ExitStack() as stack:
        servers = [stack.enter_context(engine.start()) for _ in range(2)]
        print(
            f"{engine.name}, model {args.model}, {args.programs} programs per batch, "
            f"median of {args.repeat} runs"
        )
        print(HEADER)
        measure(engine, [s.url for s in servers], args.programs, args.repeat)


if __name__ == "__main__":
    main()
