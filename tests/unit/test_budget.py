"""Budgets on the scripted test double: requests and tokens stop at the limit, finished results
are kept, the rest carry a budget error; retries are charged by the HTTP client."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import lmprog as lp
from lmprog.testing import ScriptedBackend


@lp.function
def retry_loop(s):
    """A loop that keeps asking until it likes the answer: it never would, here."""
    while True:
        s += "Again:" + lp.gen("v", max_tokens=4)
        if s["v"] == "never":
            return


@lp.function
def one(s, i):
    s += f"Item {i}:" + lp.gen("v", max_tokens=4)


def test_a_runaway_retry_loop_stops_at_max_requests() -> None:
    backend = ScriptedBackend(lambda request: " no")
    state = retry_loop.run(backend=backend, budget=lp.Budget(max_requests=5))
    error = state.error()
    assert isinstance(error.cause, lp.BudgetExceededError)
    assert "5 requests" in str(error) and "gen('v')" in str(error)
    assert state.text().count("Again: no") == 5


def test_a_batch_shares_its_budget_and_keeps_what_finished() -> None:
    backend = ScriptedBackend(lambda request: " ok")
    states = one.run_batch(
        [(i,) for i in range(10)],
        backend=backend,
        max_concurrency=1,
        budget=lp.Budget(max_requests=4),
    )
    finished = [s for s in states if s.error() is None]
    assert len(finished) == 4 and all(s["v"] == " ok" for s in finished)
    assert all(isinstance(s.error().cause, lp.BudgetExceededError) for s in states[4:])


def test_tokens_are_counted_from_what_the_engine_reports() -> None:
    backend = ScriptedBackend(lambda request: " a b c")  # reports words as tokens
    states = one.run_batch(
        [(i,) for i in range(6)],
        backend=backend,
        max_concurrency=1,
        budget=lp.Budget(max_tokens=10),
    )
    # each request: prompt "Item i:" (2) + completion (3) = 5 tokens; the third is refused
    assert [s.error() is None for s in states] == [True, True, False, False, False, False]
    assert "10 tokens" in str(states[2].error())


def test_forks_and_selects_charge_the_same_budget() -> None:
    @lp.function
    def forked(s):
        forks = s.fork(3)
        forks += lp.select("c", [" x", " y"])
        forks.join()

    backend = ScriptedBackend(lambda request: "")
    assert forked.run(backend=backend, budget=lp.Budget(max_requests=6)).error() is None
    error = forked.run(backend=backend, budget=lp.Budget(max_requests=5)).error()
    assert isinstance(error.cause, lp.BudgetExceededError)


class _Unavailable(BaseHTTPRequestHandler):
    requests = 0

    def do_POST(self) -> None:
        type(self).requests += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def unavailable_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Unavailable.requests = 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_retries_are_charged_to_the_budget(unavailable_server: str) -> None:
    backend = lp.LlamaCpp(unavailable_server, chat_template="chatml", max_retries=10)
    state = one.run(1, backend=backend, budget=lp.Budget(max_retries=2))
    assert isinstance(state.error().cause, lp.BudgetExceededError)
    assert "2 retries" in str(state.error())
    assert _Unavailable.requests == 3  # the first try and two retries, not ten
