"""Pricing: lp.Price arithmetic, the genai-prices table for hosted models, the per-backend
override, and the error when no price is known. The cost reported in the cache report and the
trace is the one the budget charges."""

from __future__ import annotations

from decimal import Decimal

import genai_prices
import pytest

import lmprog as lp
from lmprog.backends.base import WrappedBackend  # what lp.Runtime is
from lmprog.budget import price_of
from lmprog.cache_report import CacheRow
from lmprog.pricing import OPENAI_API_URL, TablePrice
from lmprog.testing import ScriptedBackend

MILLION = 1_000_000


def test_a_price_charges_input_cached_input_and_output_at_their_own_rates() -> None:
    price = lp.Price(input=0.10, output=0.40, cached_input=0.025)
    cost = price.cost(prompt_tokens=1000, completion_tokens=200, cached_tokens=600)
    # 400 uncached at 0.10, 600 cached at 0.025, 200 out at 0.40, per million tokens
    assert cost == lp.Cost(Decimal("0.000135"), "USD")
    assert str(cost) == "0.000135 USD"


def test_cached_input_defaults_to_the_input_rate_and_per_and_currency_apply() -> None:
    price = lp.Price(input=2, output=6, per=1000, currency="eur")
    cost = price.cost(prompt_tokens=500, completion_tokens=100, cached_tokens=300)
    assert cost == lp.Cost(Decimal("1.6"), "EUR")  # (500 * 2 + 100 * 6) / 1000


def test_float_prices_add_up_without_float_drift() -> None:
    price = lp.Price(input=0.1, output=0.2, per=1)
    total = sum((price.cost(1, 1, 0) for _ in range(10)), lp.Cost(Decimal(0)))
    assert total.amount == Decimal("3.0")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input": -1, "output": 1}, "input=...) must be a finite amount of 0 or more"),
        ({"input": 1, "output": "cheap"}, "output=...) must be a number"),
        ({"input": 1, "output": 1, "per": 0}, "per=...) must be a whole number"),
        ({"input": 1, "output": 1, "currency": "$"}, "currency=...) must be a code"),
    ],
)
def test_a_bad_price_is_refused_saying_which_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        lp.Price(**kwargs)


def test_a_negative_cost_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="max_cost"):
        lp.Budget(max_cost=-0.01)


def test_a_hosted_openai_model_is_priced_from_the_genai_prices_table() -> None:
    price = price_of(lp.OpenAI("gpt-4o-mini", api_key="sk-test"))
    assert price == TablePrice("gpt-4o-mini", OPENAI_API_URL)
    listed = genai_prices.calc_price(
        genai_prices.Usage(), "gpt-4o-mini", provider_api_url=OPENAI_API_URL
    ).model_price
    rate_in, rate_cached, rate_out = listed.input_mtok, listed.cache_read_mtok, listed.output_mtok
    assert rate_cached < rate_in < rate_out  # the table's rates, read independently
    cost = price.cost(prompt_tokens=MILLION, completion_tokens=MILLION, cached_tokens=MILLION // 4)
    expected = rate_in * Decimal("0.75") + rate_cached * Decimal("0.25") + rate_out
    assert cost == lp.Cost(expected, "USD")


def test_the_api_url_picks_the_provider() -> None:
    anthropic = lp.OpenAI("claude-3-5-haiku-latest", base_url="https://api.anthropic.com/v1")
    assert price_of(anthropic).cost(MILLION, 0, 0).amount > 0
    with pytest.raises(lp.UnsupportedFeatureError, match="no price for 'claude-3-5-haiku"):
        price_of(lp.OpenAI("claude-3-5-haiku-latest", api_key="sk-test"))  # not OpenAI's


def test_a_self_hosted_model_is_never_priced_as_the_hosted_one_of_the_same_name() -> None:
    local = lp.OpenAI("gpt-4o-mini", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(lp.UnsupportedFeatureError) as caught:
        price_of(local)
    message = str(caught.value)
    assert "'gpt-4o-mini'" in message and "http://127.0.0.1:9/v1" in message
    assert "backend.price = lp.Price(" in message


def test_an_unknown_model_is_an_error_naming_it_and_how_to_set_a_price() -> None:
    with pytest.raises(lp.UnsupportedFeatureError) as caught:
        price_of(lp.OpenAI("no-such-model-xyz", api_key="sk-test"))
    assert "no price for 'no-such-model-xyz'" in str(caught.value)
    with pytest.raises(lp.UnsupportedFeatureError, match=r"lp.LlamaCpp\('http://127.0.0.1:9'\)"):
        price_of(lp.LlamaCpp("http://127.0.0.1:9"))


def test_a_price_set_on_a_backend_overrides_the_table() -> None:
    backend = lp.OpenAI("gpt-4o-mini", api_key="sk-test")
    backend.price = lp.Price(input=1, output=1)
    assert price_of(backend) is backend.price


def test_a_price_set_on_a_wrapper_is_found_through_it() -> None:
    inner = ScriptedBackend()
    outer = WrappedBackend(inner)
    outer.price = lp.Price(input=3, output=4)
    assert price_of(outer) is outer.price
    inner.price = lp.Price(input=5, output=6)
    assert price_of(WrappedBackend(inner)) is inner.price


@lp.function
def two_gens(s):
    s += "Q:" + lp.gen("a", max_tokens=4)
    s += "Q:" + lp.gen("b", max_tokens=4)


def test_the_cache_report_and_the_trace_carry_each_requests_cost() -> None:
    backend = ScriptedBackend(lambda request: " x y")
    backend.price = lp.Price(input=1, output=10, per=1)
    state = two_gens.run(backend=backend)
    report = state.cache_report()
    # prompts "Q:" (1 word) and "Q: x yQ:" (3 words); two completion words each
    assert [row.cost for row in report.rows] == [lp.Cost(Decimal(21)), lp.Cost(Decimal(23))]
    assert report.cost == lp.Cost(Decimal(44)) and "cost 44 USD" in str(report)
    requests = [span for span in state.trace() if span.kind == "request"]
    assert [(s.attributes["cost"], s.attributes["currency"]) for s in requests] == [
        (21.0, "USD"),
        (23.0, "USD"),
    ]


def test_a_batch_report_sums_its_programs_costs() -> None:
    backend = ScriptedBackend(lambda request: " x")
    backend.price = lp.Price(input=1, output=1, per=1)
    batch = two_gens.run_batch([{}, {}, {}], backend=backend)
    # each program: "Q:" + " x" (2 words), then "Q: xQ:" + " x" (3 words)
    assert [s.cache_report().cost for s in batch] == [lp.Cost(Decimal(5))] * 3
    assert batch.cache_report().cost == lp.Cost(Decimal(15))


def test_without_a_price_the_cost_is_unknown_not_zero() -> None:
    state = two_gens.run(backend=ScriptedBackend())
    assert state.cache_report().cost is None and "cost" not in str(state.cache_report())
    assert all("cost" not in span.attributes for span in state.trace())


def test_a_report_total_is_unknown_when_one_cost_is_or_currencies_differ() -> None:
    usd, eur = lp.Cost(Decimal(1), "USD"), lp.Cost(Decimal(1), "EUR")
    assert lp.CacheReport((CacheRow("gen", "a", 1, 5, 0, usd),)).cost == usd
    unknown = CacheRow("gen", "b", 1, 5, 0)
    in_euros = CacheRow("gen", "b", 1, 5, 0, eur)
    assert lp.CacheReport((CacheRow("gen", "a", 1, 5, 0, usd), unknown)).cost is None
    assert lp.CacheReport((CacheRow("gen", "a", 1, 5, 0, usd), in_euros)).cost is None
    with pytest.raises(lp.LmprogError, match="USD and EUR"):
        usd + eur


def test_opentelemetry_gets_the_cost_as_lmprog_attributes() -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk not installed")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    backend = ScriptedBackend(lambda request: " x y")
    backend.price = lp.Price(input=1, output=10, per=1)
    sink = lp.trace_to(lp.OpenTelemetryTraces(provider))
    try:
        two_gens.run(backend=backend)
    finally:
        lp.stop_tracing(sink)
    requests = [s for s in exporter.get_finished_spans() if s.name.startswith("text_completion")]
    assert sorted(s.attributes["lmprog.cost"] for s in requests) == [21.0, 23.0]
    assert all(s.attributes["lmprog.currency"] == "USD" for s in requests)
