"""Typed partial streams, the recorded constraint path, the validation fallback, select by a
JSON enum on chat models, and traces, against real engines (lp.Local, llama-server)."""

from __future__ import annotations

import asyncio
import re

import pydantic
import pytest

import lmprog as lp

pytestmark = pytest.mark.engine


class Pet(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=12)
    legs: int = pydantic.Field(ge=0, le=8)
    tags: list[str] = pydantic.Field(max_length=3)


@lp.function
def describe(s):
    s += "A pet as JSON: " + lp.gen("pet", type=Pet, max_tokens=80, temperature=0)


@pytest.fixture(params=["local", "llamacpp"])
def engine(request: pytest.FixtureRequest) -> lp.Backend:
    return request.getfixturevalue("tiny_local" if request.param == "local" else "tiny")


def test_partial_values_grow_validated_and_end_with_the_value(engine: lp.Backend) -> None:
    state = describe.run(backend=engine, stream=True)
    values = list(state.partial_iter("pet"))
    assert state.error() is None, state.error()
    assert values[-1] == state["pet"] and isinstance(values[-1], Pet)
    partials = values[:-1]
    assert len(partials) >= 3, values  # several steps arrived while tokens streamed
    filled = [sum(getattr(v, f) is not None for f in ("name", "legs", "tags")) for v in partials]
    assert filled == sorted(filled)  # fields only ever get filled in
    for partial in partials:  # every partial is validated: what is there is within bounds
        assert partial.legs is None or 0 <= partial.legs <= 8
        assert partial.tags is None or len(partial.tags) <= 3


def test_partial_values_async(engine: lp.Backend) -> None:
    async def collect() -> list[object]:
        state = await describe.arun(backend=engine, stream=True)
        return [value async for value in state.partial_iter("pet")]

    values = asyncio.run(collect())
    assert isinstance(values[-1], Pet) and len(values) >= 2


def test_the_constraint_path_says_how_each_value_was_held(
    tiny_local: lp.Local, tiny: lp.LlamaCpp
) -> None:
    @lp.function
    def prog(s):
        s += "Code: " + lp.gen("code", regex=r"[A-Z]{3}", max_tokens=8)
        s += " OK? " + lp.select("ok", ["yes", "no"])

    local = prog.run(backend=tiny_local)
    server = prog.run(backend=tiny)
    assert local.get_meta_info("code")["constraint_path"] == "token masks"
    assert server.get_meta_info("code")["constraint_path"] == "enforced by server"
    for state in (local, server):
        assert state.get_meta_info("ok")["constraint_path"] == "logprob scoring"
        assert state.get_meta_info("code")["constraint"] == "regex '[A-Z]{3}'"


def test_a_trace_has_the_engines_token_counts_and_cache_hits(tiny: lp.LlamaCpp) -> None:
    @lp.function
    def two_turns(s):
        s += "Once upon a time, in a land far away, there lived " * 8
        s += lp.gen("a", max_tokens=6, temperature=0)
        s += "\nThen" + lp.gen("b", max_tokens=6, temperature=0)

    state = two_turns.run(backend=tiny)
    requests = [s for s in state.trace() if s.kind == "request"]
    assert len(requests) == 2
    first, second = (r.attributes for r in requests)
    assert first["prompt_tokens"] > 50 and first["completion_tokens"] <= 6
    assert second["cached_tokens"] > 50  # the second request reused the first one's prefix
    report = state.cache_report()
    assert report.cached_tokens == first["cached_tokens"] + second["cached_tokens"]


@pytest.fixture(scope="module")
def gemma_chat_api(gemma_server: lp.Runtime) -> lp.OpenAI:
    """Gemma behind llama-server's chat endpoint, used as a chat API that enforces JSON
    schemas only (like the OpenAI API): no regex, no choice constraint, no logprob scoring."""
    return lp.OpenAI("gemma", base_url=gemma_server.url + "/v1", is_chat_model=True,
                     server="generic")  # fmt: skip


@pytest.mark.gemma
def test_select_on_a_chat_api_goes_through_a_json_enum(gemma_chat_api: lp.OpenAI) -> None:
    @lp.function
    def capital(s, city, country):
        s += lp.user(f"Is {city} the capital of {country}? Answer yes or no.")
        s += lp.assistant(lp.select("answer", ["yes", "no"]))

    states = capital.run_batch(
        [("Paris", "France"), ("Madrid", "Spain"), ("Tokyo", "Japan")], backend=gemma_chat_api
    )
    for state in states:
        assert state.error() is None, state.error()
        assert state["answer"] == "yes"
        assert state.get_meta_info("answer")["constraint_path"] == "json enum"
        assert state.messages()[-1] == {"role": "assistant", "content": "yes"}


@pytest.mark.gemma
def test_fallback_validates_on_a_backend_that_cannot_enforce_a_regex(
    gemma_chat_api: lp.OpenAI,
) -> None:
    @lp.function
    def arithmetic(s, a, b, pattern, fallback):
        s += lp.user(f"What is {a} + {b}? Reply with only the number.")
        s += lp.assistant(
            lp.gen("sum", regex=pattern, max_tokens=40, fallback=fallback, max_attempts=3)
        )

    sentence = r"(?s)[A-Z].*"  # a 270M chat model answers in sentences, not reliably numbers
    refused = arithmetic.run(2, 3, sentence, None, backend=gemma_chat_api)
    assert isinstance(refused.error().cause, lp.UnsupportedFeatureError)

    state = arithmetic.run(2, 3, sentence, "validate", backend=gemma_chat_api, temperature=0.7)
    assert state.error() is None, state.error()
    assert re.fullmatch(sentence, state["sum"])
    path = state.get_meta_info("sum")["constraint_path"]
    assert re.fullmatch(r"validated after [123] attempts?", path)

    impossible = arithmetic.run(2, 3, r"[xyz]{30}", "validate", backend=gemma_chat_api,
                                temperature=0.7)  # fmt: skip
    error = impossible.error()
    assert isinstance(error.cause, lp.ConstraintError) and "3 attempts" in str(error)
    attempts = [s for s in impossible.trace() if s.kind == "request"]
    assert len(attempts) == 3
    assert all(a.error is not None and "Cancelled" in a.error for a in attempts)  # cut short
