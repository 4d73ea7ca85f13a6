"""Frontend overhead: lmprog vs a hand-written asyncio client vs a sequential loop, one run.

All three send the same requests to a local zero-latency OpenAI-compatible server running in
a process of its own (tests/support/fake_openai.py), so what is measured is the client: how
many programs per second one process can drive. Printed as a table with each tool's ratio to
the hand-written asyncio ceiling (AsyncOpenAI + a semaphore), median of several repetitions.

    .venv/bin/python bench/overhead.py [--programs 2000] [--repeat 3]

Not yet here (issue 7): SGLang's frontend, the real-engine targets, the other workloads.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import openai

import lmprog as lp

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = 64


@lp.function
def one_gen(s, i):
    s += f"Question {i}: what is {i} + {i}?\nAnswer:" + lp.gen("answer", max_tokens=8)


@lp.function
def fork_four(s, i):
    s += f"Topic {i}. Four ideas:\n"
    forks = s.fork(4)
    forks += lambda k: f"{k + 1}." + lp.gen("idea", max_tokens=8)
    forks.join()
    s += "Summary:" + lp.gen("summary", max_tokens=8)


def run_lmprog(url: str, n: int, workload: str) -> int:
    backend = lp.OpenAI("fake", base_url=url, max_retries=0)
    program = one_gen if workload == "one gen" else fork_four
    states = program.run_batch([(i,) for i in range(n)], backend=backend,
                               max_concurrency=CONCURRENCY)  # fmt: skip
    assert all(s.error() is None for s in states), next(s.error() for s in states if s.error())
    return n * (1 if workload == "one gen" else 5)


def run_asyncio(url: str, n: int, workload: str) -> int:
    async def main() -> int:
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
        limit = asyncio.Semaphore(CONCURRENCY)

        async def complete(prompt: str) -> str:
            reply = await client.completions.create(model="fake", prompt=prompt, max_tokens=8)
            return reply.choices[0].text

        async def program(i: int) -> None:
            async with limit:
                if workload == "one gen":
                    await complete(f"Question {i}: what is {i} + {i}?\nAnswer:")
                    return
                prefix = f"Topic {i}. Four ideas:\n"
                ideas = await asyncio.gather(*(complete(prefix + f"{k + 1}.") for k in range(4)))
                await complete(prefix + "Summary:" + "".join(ideas))

        await asyncio.gather(*(program(i) for i in range(n)))
        await client.close()
        return n * (1 if workload == "one gen" else 5)

    return asyncio.run(main())


def run_sequential(url: str, n: int, workload: str) -> int:
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
    requests = 0
    for i in range(n):
        prompts = (
            [f"Question {i}: what is {i} + {i}?\nAnswer:"]
            if workload == "one gen"
            else [f"Topic {i}. Four ideas:\n{k + 1}." for k in range(4)] + [f"Topic {i}."]
        )
        for prompt in prompts:
            client.completions.create(model="fake", prompt=prompt, max_tokens=8)
            requests += 1
    client.close()
    return requests


TOOLS: dict[str, Callable[[str, int, str], int]] = {
    "asyncio + AsyncOpenAI (ceiling)": run_asyncio,
    "lmprog run_batch": run_lmprog,
    "sequential OpenAI loop": run_sequential,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "support" / "fake_openai.py")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    try:
        rows = []
        for workload in ("one gen", "fork of 4 + final gen"):
            rates: dict[str, float] = {}
            for tool, run in TOOLS.items():
                n = args.programs if "sequential" not in tool else max(1, args.programs // 4)
                samples = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    run(url, n, workload)
                    samples.append(n / (time.perf_counter() - started))
                rates[tool] = statistics.median(samples)
            ceiling = rates["asyncio + AsyncOpenAI (ceiling)"]
            for tool, rate in rates.items():
                rows.append((workload, tool, rate, rate / ceiling))
        print(f"\n{'workload':<24}{'tool':<34}{'programs/s':>12}{'vs ceiling':>12}")
        for workload, tool, rate, ratio in rows:
            print(f"{workload:<24}{tool:<34}{rate:>12,.0f}{ratio:>11.2f}x")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
