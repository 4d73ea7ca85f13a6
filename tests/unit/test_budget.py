"""Budgets on the scripted test double: requests and tokens stop at the limit, finished results
are kept, the rest carry a budget error; retries are charged by the HTTP client."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import lmprog as lp
from lmprog.backends.base import GenerateRequest, Generation, TextCallback
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


# ----- money: max_cost ------------------------------------------------------------------------


class CachingBackend(ScriptedBackend):
    """The scripted double, reporting all but the last prompt word as served from its cache."""

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        generation = await super().generate(request, on_text)
        generation.cached_tokens = max((generation.prompt_tokens or 0) - 1, 0)
        return generation


def test_a_batch_stops_at_its_money_budget_keeping_what_finished() -> None:
    backend = ScriptedBackend(lambda request: " a b c")
    backend.price = lp.Price(input=1, output=2, per=1_000)  # USD per thousand tokens
    states = one.run_batch(
        [(i,) for i in range(6)],
        backend=backend,
        max_concurrency=1,
        budget=lp.Budget(max_cost=0.02),
    )
    # each request: 2 prompt words at 0.001 + 3 completion words at 0.002 = 0.008 USD
    assert [s.error() is None for s in states] == [True, True, True, False, False, False]
    assert all(s["v"] == " a b c" for s in states[:3])
    assert len(backend.requests) == 3  # the fourth was never sent
    error = states[3].error()
    assert isinstance(error.cause, lp.BudgetExceededError)
    assert str(error) == (
        "program 'one' failed at gen('v'): BudgetExceededError: the budget of 0.02 USD is spent "
        "(0.024 USD spent)"
    )
    assert states.cache_report().cost == lp.Cost(Decimal("0.024"))


def test_cached_prompt_tokens_are_charged_at_the_cached_rate() -> None:
    backend = CachingBackend(lambda request: " a")
    backend.price = lp.Price(input=10, output=0, cached_input=1, per=1)
    prompt = "one two three four:"
    states = one.run_batch(
        [(prompt,)] * 3, backend=backend, max_concurrency=1, budget=lp.Budget(max_cost=28)
    )
    # "Item one two three four:" is 5 words: 4 cached at 1, 1 computed at 10 = 14 (50 if the
    # cached ones were charged as input, and the second program would not have run)
    assert [s.cache_report().cost for s in states[:2]] == [lp.Cost(Decimal(14))] * 2
    assert "the budget of 28 USD is spent (28 USD spent)" in str(states[2].error())


def test_no_price_means_nothing_is_sent() -> None:
    backend = ScriptedBackend()
    states = one.run_batch([(1,), (2,)], backend=backend, budget=lp.Budget(max_cost=1))
    assert backend.requests == []
    for state in states:
        assert isinstance(state.error().cause, lp.UnsupportedFeatureError)
        assert "backend.price = lp.Price(" in str(state.error())
        assert "failed at gen('v')" in str(state.error())


def test_a_price_in_another_currency_is_refused_before_sending() -> None:
    backend = ScriptedBackend()
    backend.price = lp.Price(input=1, output=1, currency="EUR")
    state = one.run(1, backend=backend, budget=lp.Budget(max_cost=1))
    assert backend.requests == [] and "EUR price to a budget in USD" in str(state.error())
    assert one.run(1, backend=backend, budget=lp.Budget(max_cost=1, currency="eur")).error() is None


def test_a_response_without_counts_is_an_error_not_a_free_request() -> None:
    class Uncounted(ScriptedBackend):
        async def generate(
            self, request: GenerateRequest, on_text: TextCallback | None = None
        ) -> Generation:
            generation = await super().generate(request, on_text)
            generation.prompt_tokens = None
            return generation

    backend = Uncounted()
    backend.price = lp.Price(input=1, output=1)
    state = one.run(1, backend=backend, budget=lp.Budget(max_cost=1))
    assert isinstance(state.error().cause, lp.BackendResponseError)
    assert "no token counts" in str(state.error())


def test_select_scoring_is_refused_and_constrained_decoding_is_priced() -> None:
    @lp.function
    def pick(s, method):
        s += "Pick:" + lp.select("c", [" x", " y"], choices_method=method)

    backend = ScriptedBackend(lambda request: " y")
    backend.price = lp.Price(input=1, output=1, per=1)
    state = pick.run(lp.token_length_normalized, backend=backend, budget=lp.Budget(max_cost=9))
    assert isinstance(state.error().cause, lp.UnsupportedFeatureError)
    assert "lp.constrained_decoding" in str(state.error())
    state = pick.run(lp.constrained_decoding, backend=backend, budget=lp.Budget(max_cost=9))
    assert state.error() is None and state["c"] == " y"
    assert state.cache_report().cost == lp.Cost(Decimal(2))  # "Pick:" in, "y" out


def test_prefix_warm_ups_are_skipped_under_a_money_budget() -> None:
    backend = ScriptedBackend()
    backend.price = lp.Price(input=1, output=1)
    shared = "A long shared instruction that every program starts with. " * 4
    states = one.run_batch(
        [(shared + str(i),) for i in range(4)], backend=backend, budget=lp.Budget(max_cost=1)
    )
    assert all(s.error() is None for s in states) and backend.warmed == []
