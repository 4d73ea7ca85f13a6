"""SGLang's router (`smg`) against lmprog's own lp.Replicas, side by side, on two workers.

The batches of bench/prefix_reuse.py (fork-heavy, few-shot, doc-chat: shared prefixes, forks
and multi-turn programs) run through four front ends over the same two llama-servers:

1. smg, `--policy round_robin` (a plain load balancer);
2. smg, `--policy cache_aware` (its radix tree of the text routed to each worker). lmprog sends
   its program key on every request (X-SMG-Routing-Key); this policy does not read it;
3. smg, `--policy manual`: routes by X-SMG-Routing-Key alone, so every request of a program
   goes to the worker its key was given (lmprog's program key);
4. lp.Replicas (client-side prefix affinity, lmprog's own router).

"sent" is the prompt tokens of the gens (lmprog's cache report); "computed" is the workers' own
counter of prompt tokens they evaluated (`llamacpp:prompt_tokens_total`, both workers, warm-ups
and select scoring included); programs/s is the batch's. Every configuration's prompts start
with their own tag, so none is served from another's cache. The median of `--repeat` runs.

    .venv/bin/python bench/router.py [--model tiny|gemma] [--programs 16] [--repeat 3]

The tiny model's prefill is nearly free, so with it only the token counts mean much; Gemma 3
270M shows the time too.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from prefix_reuse import HEADER, WORKLOADS, Engine, _line, engines, run_once

import lmprog as lp

CONFIGURATIONS = (
    "smg round_robin",
    "smg cache_aware",
    "smg manual (program key)",
    "lp.Replicas affinity",
)


@contextmanager
def front(config: str, urls: list[str], engine: Engine) -> Iterator[lp.Backend]:
    """The front end `config` over the workers at `urls` (a router is stopped after)."""
    if config == "lp.Replicas affinity":
        yield lp.Replicas(urls, kind=engine.client)
        return
    policy = config.split()[1]
    with lp.Runtime("sglang-router", workers=urls, policy=policy) as router:
        yield router


def measure(engine: Engine, urls: list[str], programs: int, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for workload, program in WORKLOADS.items():
        for config in CONFIGURATIONS:
            with front(config, urls, engine) as backend:
                runs = [
                    run_once(engine, urls, program, backend,
                             f"[router {workload}, {config}, run {k}]\n", programs)
                    for k in range(repeat)
                ]  # fmt: skip
            row: dict[str, Any] = {"engine": engine.name, "workload": workload}
            row["configuration"] = config
            row.update({key: statistics.median(r[key] for r in runs) for key in runs[0]})
            rows.append(row)
            print(f"{_line(row)} {programs / row['seconds']:>10.1f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "gemma"], default="tiny")
    parser.add_argument("--programs", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=lp.PrefixOrderWarning)  # see prefix_reuse.py
    engine = engines(args.model)["llama.cpp"]
    with ExitStack() as stack:
        workers = [stack.enter_context(engine.start()) for _ in range(2)]
        print(
            f"{engine.name} x2, model {args.model}, {args.programs} programs per batch, "
            f"median of {args.repeat} runs"
        )
        print(f"{HEADER.replace('24}', '26}')} {'programs/s':>10}")
        measure(engine, [w.url for w in workers], args.programs, args.repeat)


if __name__ == "__main__":
    main()
