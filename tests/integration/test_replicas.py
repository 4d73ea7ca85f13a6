"""lp.Replicas over real local llama-server replicas (the tiny model, started by lp.Runtime):
prefix affinity, the same greedy output as one server, and no program lost when a replica
dies mid-batch."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from support.models import tiny_model_gguf

import lmprog as lp

pytestmark = pytest.mark.engine


def start_replica() -> lp.Runtime:
    return lp.Runtime("llama.cpp", tiny_model_gguf(), slots=2, ctx_per_slot=1024, threads=1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def servers() -> Iterator[list[lp.Runtime]]:
    started: list[lp.Runtime] = []
    try:
        for _ in range(3):
            started.append(start_replica())
        yield started
    finally:
        pids = [s._process.pid for s in started if s._process is not None]
        for server in started:
            server.shutdown()
        assert not any(alive(pid) for pid in pids)


def prefix(i: int) -> str:
    return f"# module {i}\n" + "".join(f"def helper_{i}_{j}(x):\n    return x\n" for j in range(8))


@lp.function
def complete(s, context, name):
    s += context + f"def {name}(x):\n   " + lp.gen("body", max_tokens=16, temperature=0)


@lp.function
def two_turns(s, i):
    s += prefix(i % 5) + f"def task_{i}(x):\n   " + lp.gen("a", max_tokens=24, temperature=0)
    s += "\n# and then\n" + lp.gen("b", max_tokens=24, temperature=0)


def test_the_same_prefix_goes_to_the_same_replica_and_reuses_its_cache(
    servers: list[lp.Runtime],
) -> None:
    replicas = lp.Replicas(servers)
    placed: dict[int, set[str]] = {}
    cached: list[int] = []
    for name in ("first", "second", "third"):
        for i in range(9):
            meta = complete.run(prefix(i), name, backend=replicas).get_meta_info("body")
            placed.setdefault(i, set()).add(meta["replica"])
            if name != "first":
                cached.append(meta["cached_tokens"])
    assert all(len(where) == 1 for where in placed.values()), placed
    assert len(set().union(*placed.values())) >= 2  # nine prefixes spread over the replicas
    # each later program found its prefix in its replica's cache (the prefix is ~140 tokens)
    assert min(cached) >= 100, cached
    assert {s.label for s in replicas.stats()} == {s.url for s in servers}


def test_programs_give_the_same_greedy_output_as_one_server(servers: list[lp.Runtime]) -> None:
    @lp.function
    def suite_style(s, i):
        s += prefix(i % 3) + "# pick one: "
        s += lp.select("kind", choices=["helper", "module", "return"])
        s += "\nvalue = " + lp.gen("number", regex=r"[0-9]{1,3}", temperature=0)
        forks = s.fork(2)
        forks += lambda k: f"\n# branch {k}\n" + lp.gen("tail", max_tokens=12, temperature=0)
        forks.join()
        s += "\n" + lp.gen("end", max_tokens=12, temperature=0)

    batch = [(i,) for i in range(12)]
    spread = suite_style.run_batch(batch, backend=lp.Replicas(servers))
    single = suite_style.run_batch(batch, backend=lp.LlamaCpp(servers[0].url))
    assert all(s.error() is None for s in spread + single)
    for a, b in zip(spread, single, strict=True):
        assert (a.text(), a["kind"], a["number"], a["tail"]) == (
            b.text(),
            b["kind"],
            b["number"],
            b["tail"],
        )


def test_killing_a_replica_mid_batch_loses_no_program() -> None:
    started = [start_replica() for _ in range(3)]
    pids = [s._process.pid for s in started if s._process is not None]
    try:
        replicas = lp.Replicas(started, retry_after=60)
        victim = started[2]
        seen: dict[str, int] = {}

        def kill_when_busy() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                stats = {s.label: s for s in replicas.stats()}[victim.url]
                if stats.requests >= 2 and stats.in_flight >= 1:
                    seen["in_flight"] = stats.in_flight
                    seen["served"] = sum(s.requests for s in replicas.stats())
                    os.killpg(pids[2], signal.SIGKILL)
                    return
                time.sleep(0.001)

        killer = threading.Thread(target=kill_when_busy)
        killer.start()
        states = two_turns.run_batch([(i,) for i in range(40)], backend=replicas)
        killer.join()
        assert seen, "the replica was never busy enough to kill"
        assert seen["served"] < 80  # killed mid-batch, with requests of its own in flight
        assert [s.error() for s in states if s.error()] == []
        stats = {s.label: s for s in replicas.stats()}
        assert not stats[victim.url].healthy and stats[victim.url].failures >= 1
        assert sum(s.requests for s in stats.values()) == 80
        # the programs that moved gave what one surviving server gives
        single = two_turns.run_batch([(i,) for i in range(40)], backend=lp.LlamaCpp(started[0].url))
        assert [s.text() for s in states] == [s.text() for s in single]
    finally:
        for server in started:
            server.shutdown()
    assert not any(alive(pid) for pid in pids)
