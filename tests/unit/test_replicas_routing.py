"""lp.Replicas' routing, health and failover on scripted test doubles (no engine)."""

from __future__ import annotations

import asyncio
import time

import pytest

import lmprog as lp
from lmprog.backends.base import Capabilities, GenerateRequest
from lmprog.ir import SamplingParams
from lmprog.testing import ScriptedBackend


class Server(ScriptedBackend):
    """A scripted replica at a URL, which can be taken down and brought back."""

    def __init__(self, url: str, delay: float = 0.0) -> None:
        super().__init__(lambda request: "ok", delay=delay, fail=self._failure)
        self.url = url
        self.down = False

    def _failure(self, request: GenerateRequest) -> BaseException | None:
        if self.down:
            return lp.BackendUnavailableError(f"cannot reach {self.url} (connection refused)")
        return None


def servers(n: int, delay: float = 0.0) -> list[Server]:
    return [Server(f"http://replica-{i}", delay) for i in range(n)]


def request(prompt: str) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, sampling=SamplingParams(max_new_tokens=4))


def served_by(backend: lp.Replicas, prompt: str) -> str:
    generation = asyncio.run(backend.generate(request(prompt)))
    return str(generation.extra["replica"])


def prefix(i: int) -> str:
    return f"Task {i}: " + f"instructions for task {i}. " * 20  # ~500 chars


def test_the_same_prefix_always_goes_to_the_same_replica_and_prefixes_spread() -> None:
    replicas = lp.Replicas(servers(3))
    placement: dict[int, set[str]] = {}
    for round_ in range(4):
        for i in range(12):
            placement.setdefault(i, set()).add(served_by(replicas, prefix(i) + f"Q{round_}"))
    assert all(len(where) == 1 for where in placement.values()), placement
    used = set().union(*placement.values())
    assert used == {f"http://replica-{i}" for i in range(3)}  # 12 prefixes over all 3
    # another client (no shared memory) places every prefix the same way: rendezvous hashing
    other = lp.Replicas(servers(3))
    assert all(served_by(other, prefix(i) + "Z") in placement[i] for i in range(12))


def test_a_program_continues_on_the_replica_that_holds_its_prompt() -> None:
    replicas = lp.Replicas(servers(3))
    first = prefix(1) + "Q: long question " * 30
    where = served_by(replicas, first)
    assert all(served_by(replicas, first + f" turn {t}") == where for t in range(5))


def test_losing_a_replica_moves_only_its_own_prefixes() -> None:
    backends = servers(3)
    before = {i: served_by(lp.Replicas(backends), prefix(i)) for i in range(30)}
    dead = backends[0].url
    backends[0].down = True
    replicas = lp.Replicas(backends, retry_after=60)
    after = {i: served_by(replicas, prefix(i)) for i in range(30)}
    assert dead not in after.values()
    assert all(after[i] == before[i] for i in before if before[i] != dead)


def test_concurrent_requests_sharing_one_prefix_spread_under_the_load_bound() -> None:
    backends = servers(3, delay=0.05)
    replicas = lp.Replicas(backends)

    async def many() -> None:
        await asyncio.gather(*(replicas.generate(request(prefix(0) + str(i))) for i in range(30)))

    asyncio.run(many())
    loads = [b.max_in_flight for b in backends]
    assert all(load >= 1 for load in loads) and max(loads) <= 13, loads  # ceil(1.25 * 30 / 3)
    assert sum(s.requests for s in replicas.stats()) == 30


def test_fork_branches_go_to_the_replica_their_prefix_was_warmed_on() -> None:
    @lp.function
    def branches(s):
        s += "context " * 200
        forks = s.fork(4)
        forks += lambda i: f"{i}:" + lp.gen("x")
        forks.join()

    backends = servers(3, delay=0.01)
    state = branches.run(backend=lp.Replicas(backends))
    assert state.error() is None
    warmed = [b for b in backends if b.warmed]
    assert len(warmed) == 1 and len(warmed[0].requests) == 4


def test_a_dead_replica_is_skipped_and_its_requests_go_elsewhere() -> None:
    backends = servers(3, delay=0.01)
    backends[1].down = True
    replicas = lp.Replicas(backends, retry_after=60)

    @lp.function
    def qa(s, i):
        s += prefix(i) + lp.gen("a") + " then" + lp.gen("b")

    states = qa.run_batch([(i,) for i in range(30)], backend=replicas)
    assert all(s.error() is None for s in states)
    stats = {s.label: s for s in replicas.stats()}
    assert stats["http://replica-1"].failures >= 1 and not stats["http://replica-1"].healthy
    assert stats["http://replica-1"].requests == 0
    assert stats["http://replica-0"].requests + stats["http://replica-2"].requests == 60
    assert "replica-1" in repr(replicas) and "2 of 3 up" in repr(replicas)


def test_a_replica_that_comes_back_is_found_by_the_probe_and_used_again() -> None:
    backends = servers(2)
    replicas = lp.Replicas(backends, retry_after=0.05)

    async def scenario() -> None:
        backends[0].down = True
        backends[1].down = False
        for i in range(6):  # whatever their prefix, all go to replica-1 now
            generation = await replicas.generate(request(prefix(i)))
            assert generation.extra["replica"] == "http://replica-1"
        backends[0].down = False
        deadline = time.monotonic() + 5
        while not replicas.stats()[0].healthy and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert replicas.stats()[0].healthy
        placed = {(await replicas.generate(request(prefix(i)))).extra["replica"] for i in range(12)}
        assert placed == {"http://replica-0", "http://replica-1"}
        await replicas.aclose()

    asyncio.run(scenario())


def test_when_every_replica_is_down_the_error_names_each() -> None:
    backends = servers(2)
    for b in backends:
        b.down = True
    replicas = lp.Replicas(backends, retry_after=60)
    with pytest.raises(lp.BackendUnavailableError, match="no replica is reachable") as caught:
        asyncio.run(replicas.generate(request("hello")))
    assert "replica-0" in str(caught.value) and "replica-1" in str(caught.value)


def test_a_request_error_is_not_retried_on_another_replica() -> None:
    bad = ScriptedBackend(fail=lambda r: lp.BackendResponseError("HTTP 400: bad grammar", 400))
    bad.url = "http://bad"  # type: ignore[attr-defined]
    good = Server("http://good")
    replicas = lp.Replicas([bad, good])
    failures = 0
    for i in range(8):
        try:
            asyncio.run(replicas.generate(request(prefix(i))))
        except lp.BackendResponseError:
            failures += 1
    assert failures == len(bad.requests) > 0 and good.requests  # each went to one replica only
    assert all(s.healthy for s in replicas.stats())


def test_unavailable_statuses_count_as_a_dead_replica() -> None:
    busy = ScriptedBackend(fail=lambda r: lp.BackendResponseError("HTTP 503: loading", 503))
    busy.url = "http://busy"  # type: ignore[attr-defined]
    replicas = lp.Replicas([busy, Server("http://good")], retry_after=60)
    placed = {served_by(replicas, prefix(i)) for i in range(8)}
    assert placed == {"http://good"}


def test_round_robin_ignores_prefixes() -> None:
    replicas = lp.Replicas(servers(2), routing="round_robin")
    assert {served_by(replicas, prefix(0)) for _ in range(4)} == {
        "http://replica-0",
        "http://replica-1",
    }


def test_capabilities_are_what_every_replica_can_do() -> None:
    one, two = servers(2)
    two.capabilities = Capabilities(
        constraints=frozenset({"regex", "json_schema"}),
        grammar_syntaxes=frozenset({"gbnf"}),
        choices_methods=frozenset({"token_length_normalized"}),
        streaming=True,
    )
    joint = lp.Replicas([one, two]).capabilities
    assert joint.constraints == frozenset({"regex", "json_schema"})
    assert joint.grammar_syntaxes == frozenset({"gbnf"})
    assert joint.choices_methods == frozenset({"token_length_normalized"})
    assert not joint.images and joint.streaming and not joint.chat_only

    @lp.function
    def grammar(s):
        s += "x" + lp.gen("g", grammar='root ::= "a"')

    error = grammar.run(backend=lp.Replicas([one, two])).error()
    assert isinstance(error.cause, lp.UnsupportedFeatureError)


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        lp.Replicas([])
    with pytest.raises(ValueError, match="same server twice"):
        lp.Replicas(["http://a:1", "http://a:1/"])
    other = Server("http://other")
    other.image_marker = "<img>"
    with pytest.raises(ValueError, match="one kind"):
        lp.Replicas([Server("http://a"), other])
    with pytest.raises(ValueError, match="routing"):
        lp.Replicas(["http://a"], routing="random")  # type: ignore[arg-type]


def test_urls_become_llama_cpp_backends_unless_told_otherwise() -> None:
    default = lp.Replicas(["http://127.0.0.1:1", "http://127.0.0.1:2"])
    assert all(isinstance(b, lp.LlamaCpp) for b in default.backends)
    sglang = lp.Replicas(["http://127.0.0.1:1"], kind=lp.SGLang)
    assert isinstance(sglang.backends[0], lp.SGLang)
