"""Fraction digits of JSON numbers are bounded by default (issue 16), on the engines that read
lmprog's bound (`multipleOf: 1e-10`, constraints.FRACTION_STEP): lp.Local and vLLM's guidance
backend (the one lp.Runtime starts). llama-server ignores it and keeps its own 16 decimals.

Without the bound Gemma 3 270M copies pi's 40 decimals, and the tiny model at temperature 1
writes up to 40 decimals where a range leaves it room after the tenth.
"""

from __future__ import annotations

import re

import pytest

import lmprog as lp
from lmprog.constraints import FRACTION_DIGITS

pytestmark = pytest.mark.timeout(600)

# Every value in this range has at least 9 decimals, and past the tenth any digits fit.
NEAR_ONE_VALUE = {"type": "number", "minimum": 0.123456789, "maximum": 0.1234567891}
EIGHT_NUMBERS = {"type": "array", "items": NEAR_ONE_VALUE, "minItems": 8, "maxItems": 8}


@lp.function
def eight_numbers(s, seed):
    s += "Numbers: " + lp.gen("v", json_schema=EIGHT_NUMBERS, max_tokens=300, seed=seed)


def fractions(texts: list[str]) -> list[int]:
    """The length of every fraction written in `texts`."""
    return [len(digits) for text in texts for digits in re.findall(r"\.([0-9]+)", text)]


def sampled(backend: lp.Backend) -> list[str]:
    states = eight_numbers.run_batch([(seed,) for seed in range(6)], backend=backend, temperature=1)
    for state in states:
        assert state.error() is None, state.error()
    return [state.text().split("Numbers: ", 1)[1] for state in states]  # as written


def test_gemma_on_local_stops_copying_pi_at_the_fraction_bound(gemma_local: lp.Local) -> None:
    schema = {
        "type": "object",
        "properties": {"pi": {"type": "number"}},
        "required": ["pi"],
        "additionalProperties": False,
    }

    @lp.function(temperature=0)
    def pi(s):
        s += "The number pi to 40 decimal places is 3.1415926535897932384626433832795028841971.\n"
        s += "As JSON: " + lp.gen("v", json_schema=schema, max_tokens=60)

    state = pi.run(backend=gemma_local)
    assert state.error() is None, state.error()
    assert state["v"] == {"pi": 3.1415926535}  # ten decimals, then the object closes


def test_local_ends_every_fraction_at_the_bound(tiny_local: lp.Local) -> None:
    written = fractions(sampled(tiny_local))
    assert len(written) == 6 * 8 and max(written) == FRACTION_DIGITS


def test_vllm_guidance_ends_every_fraction_at_the_bound(vllm_server: lp.Runtime) -> None:
    written = fractions(sampled(lp.VLLM(vllm_server.url)))
    assert len(written) == 6 * 8 and max(written) == FRACTION_DIGITS


def test_llama_server_takes_the_bounded_schema(tiny: lp.LlamaCpp) -> None:
    """llama.cpp ignores `multipleOf` on a number (its grammar allows 16 decimals)."""

    @lp.function
    def numbers(s, seed):
        schema = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}
        s += "Numbers: " + lp.gen("v", json_schema=schema, max_tokens=200, seed=seed)

    states = numbers.run_batch([(seed,) for seed in range(4)], backend=tiny, temperature=1)
    for state in states:
        assert state.error() is None, state.error()
        assert len(state["v"]) == 4 and all(isinstance(x, (int, float)) for x in state["v"])
