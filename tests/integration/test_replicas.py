"""lp.Replicas over real local llama-server replicas (the tiny model, started by lp.Runtime):
prefix affinity, the same greedy output as one server, and no program lost when a replica
dies mid-batch."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from support.models import tiny_model_gguf
from support.processes import alive

import lmprog as lp
from lmprog.backends.base import GenerateRequest, Generation, TextCallback, WrappedBackend

pytestmark = pytest.mark.engine


def start_replica() -> lp.Runtime:
    return lp.Runtime("llama.cpp", tiny_model_gguf(), slots=2, ctx_per_slot=1024, threads=1)


def start_batch_invariant_replica() -> lp.Runtime:
    """A replica whose greedy output depends on the prompt alone: one slot (no other sequence
    shares a forward pass) and one token per forward pass (`--ubatch-size 1`: a token's
    numbers are the same whether it was decoded, prefilled or served from the prompt cache).
    With two slots and whole-prompt batches (start_replica), the kill test's batch and its rerun
    on one server differed by up to 6e-3 in logprob, about the smallest gap between this
    random-weight model's top two tokens, and a text differed in 2 of 9 runs; with both
    settings, their logprobs were bit-identical in 21 of 21 runs, 6 of them under CPU load."""
    return lp.Runtime(
        "llama.cpp", tiny_model_gguf(), slots=1, ctx_per_slot=1024, threads=1, ubatch_size=1
    )


@pytest.fixture(scope="module")
def servers() -> Iterator[list[lp.Runtime]]:
    yield from three(start_replica)


@pytest.fixture(scope="module")
def invariant_servers() -> Iterator[list[lp.Runtime]]:
    yield from three(start_batch_invariant_replica)


def three(start: Callable[[], lp.Runtime]) -> Iterator[list[lp.Runtime]]:
    started: list[lp.Runtime] = []
    try:
        for _ in range(3):
            started.append(start())
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


def test_programs_give_the_same_greedy_output_as_one_server(
    invariant_servers: list[lp.Runtime],
) -> None:
    servers = invariant_servers  # output that depends on the prompt alone, not the batch mix

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


@dataclass
class Kill:
    """The replica to kill is the first one sent the next turn of a program whose turn it
    answered: its server is SIGKILLed as that request goes out, so the batch is under way, a
    request is in flight on the replica that dies, and a program moves mid-way to a replica
    whose cache never saw its first answer (polling for the moment from a thread missed it
    when requests took about a millisecond). It is picked then, not in advance: the five
    prefixes go where the servers' random ports hash them, a replica picked in advance owns
    none of them for 13% of port draws, and it was sent no second request in 4 runs of 50."""

    replicas: lp.Replicas | None = None
    victim: KillableReplica | None = None
    served_by_all: int = 0  # requests answered by all replicas when it was killed


class KillableReplica(WrappedBackend):
    def __init__(self, runtime: lp.Runtime, kill: Kill) -> None:
        super().__init__(runtime)
        self.url = runtime.url
        self.pid = runtime._process.pid if runtime._process is not None else 0
        self.kill = kill
        self.answered: list[str] = []  # the prompts it answered

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        if self.kill.victim is None and any(map(request.prompt.startswith, self.answered)):
            assert self.kill.replicas is not None
            self.kill.victim = self
            self.kill.served_by_all = sum(s.requests for s in self.kill.replicas.stats())
            os.killpg(self.pid, signal.SIGKILL)
        generation = await self.inner.generate(request, on_text)
        self.answered.append(request.prompt)
        return generation


def test_killing_a_replica_mid_batch_loses_no_program() -> None:
    started = [start_batch_invariant_replica() for _ in range(3)]
    pids = [s._process.pid for s in started if s._process is not None]
    try:
        kill = Kill()
        replicas = lp.Replicas([KillableReplica(s, kill) for s in started], retry_after=60)
        kill.replicas = replicas
        # two programs per replica at once (the default is one per slot), queued by the server
        states = two_turns.run_batch([(i,) for i in range(40)], backend=replicas, max_concurrency=6)
        assert kill.victim is not None, "no replica was sent the next turn of a program it served"
        assert 0 < kill.served_by_all < 80  # mid-batch
        assert [s.error() for s in states if s.error()] == []
        # a program whose first turn the victim answered finished elsewhere
        assert any(s.get_meta_info("a")["replica"] == kill.victim.url for s in states)
        stats = {s.label: s for s in replicas.stats()}
        victim = stats.pop(kill.victim.url)
        assert not victim.healthy and victim.failures >= 1
        assert all(s.healthy and s.failures == 0 for s in stats.values())
        assert victim.requests + sum(s.requests for s in stats.values()) == 80
        # the programs that moved gave what one surviving server gives
        survivor = next(iter(stats))
        single = two_turns.run_batch([(i,) for i in range(40)], backend=lp.LlamaCpp(survivor))
        assert [s.text() for s in states] == [s.text() for s in single]
    finally:
        for server in started:
            server.shutdown()
    assert not any(alive(pid) for pid in pids)
