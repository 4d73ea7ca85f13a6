"""Every request of a program carries one routing key and its trace context, as headers, on
both of lp.OpenAI's transports (lmprog's JSON client for self-hosted engines, the OpenAI SDK
for the others), against a real local HTTP server that records what it got."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from support.fake_openai import FakeOpenAI

import lmprog as lp
from lmprog.backends.base import Affinity, Routing

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01")


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@lp.function
def program(s, i):
    s += f"question {i}: " + lp.gen("a", max_tokens=4)
    s += " and " + lp.gen("b", max_tokens=4)
    branches = s.fork(2)
    for branch in branches:
        branch += lp.gen("c", max_tokens=4)
    branches.join()


@pytest.mark.parametrize("server", ["llamacpp", "generic"])  # JSON client, SDK
def test_one_key_per_program_on_every_request(fake: FakeOpenAI, server: str) -> None:
    backend = lp.OpenAI("m", base_url=fake.url, server=server)
    states = program.run_batch([(0,), (1,)], backend=backend, num_threads=1)
    assert all(s.error() is None for s in states)
    sent = []
    for body, headers in zip(fake.requests, fake.headers, strict=True):
        lowered = {k.lower(): v for k, v in headers.items()}
        sent.append((body["prompt"], lowered))
        assert lowered["x-smg-routing-key"] == lowered["x-session-id"]
        assert TRACEPARENT.fullmatch(lowered["traceparent"])
    for i, state in enumerate(states):
        spans = state.trace()
        requests = [h for prompt, h in sent if prompt.startswith(f"question {i}")]
        assert len(requests) == 4  # two turns, two branches
        keys = {h["x-smg-routing-key"] for h in requests}
        assert keys == {spans[0].trace_id}  # the program's own, shared by its branches
        parents = {TRACEPARENT.fullmatch(h["traceparent"]).groups() for h in requests}  # type: ignore[union-attr]
        request_spans = {(s.trace_id, s.span_id) for s in spans if s.kind == "request"}
        assert parents == request_spans  # each request names its own span
    assert states[0].trace()[0].trace_id != states[1].trace()[0].trace_id


def test_a_session_token_a_router_answers_with_is_sent_back() -> None:
    routing = Routing(Affinity("key"), "00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    assert "x-session-token" not in routing.headers()
    routing.observe({"x-session-token": "pod-7"})
    assert routing.headers()["x-session-token"] == "pod-7"
    routing.observe({})  # an answer without one keeps the last
    assert routing.headers() == {
        "X-SMG-Routing-Key": "key",
        "x-session-id": "key",
        "x-session-token": "pod-7",
        "traceparent": routing.traceparent,
    }


def test_a_router_backend_asks_nothing_until_first_used() -> None:
    """Making lp.SGLangRouter touches no network (it asks the router and workers on first
    use); an unreachable router is then the program's error, naming where it looked."""
    router = lp.SGLangRouter("http://127.0.0.1:9")  # nothing listens on port 9
    assert "not yet asked" in repr(router)

    @lp.function
    def one(s):
        s += "x" + lp.gen("a", max_tokens=2)

    error = one.run(backend=router).error()
    assert isinstance(error, lp.ProgramError)
    assert isinstance(error.cause, lp.BackendUnavailableError)
    assert "127.0.0.1:9/workers" in str(error)
