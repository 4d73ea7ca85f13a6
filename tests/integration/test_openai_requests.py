"""What lp.OpenAI puts on the wire, read back by a real local server: images in user turns,
structured outputs for the OpenAI API, refusals before any request, the model list."""

from __future__ import annotations

import base64

import pydantic
import pytest
from support.fake_openai import FakeOpenAI

import lmprog as lp

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 8


@pytest.fixture
def server():
    with FakeOpenAI() as fake:
        yield fake


def test_several_images_in_one_user_turn(server: FakeOpenAI) -> None:
    backend = lp.OpenAI("fake", base_url=server.url, is_chat_model=True)

    @lp.function
    def compare(s):
        s += lp.user("Compare" + lp.image(PNG) + "with" + lp.image(JPEG) + "please.")
        s += lp.assistant(lp.gen("answer", max_tokens=8))

    state = compare.run(backend=backend)
    assert state.error() is None
    content = server.requests[-1]["messages"][0]["content"]
    assert [part["type"] for part in content] == ["text", "image_url", "text", "image_url", "text"]
    assert (
        content[1]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    )
    assert content[3]["image_url"]["url"].startswith("data:image/jpeg;base64,")


class Answer(pydantic.BaseModel):
    value: int


def test_openai_api_gets_structured_outputs_and_refuses_the_rest(server: FakeOpenAI) -> None:
    backend = lp.OpenAI("fake", base_url=server.url, server="openai", is_chat_model=True)

    @lp.function
    def typed(s):
        s += lp.user("Number?") + lp.assistant(lp.gen("n", type=Answer))

    typed.run(backend=backend)  # the fake's fixed text cannot validate; the request is what counts
    sent = server.requests[-1]["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["strict"] is True
    limit = lp.constraints.NUMBER_LIMIT  # numbers are bounded (structured outputs take it)
    assert sent["json_schema"]["schema"]["properties"] == {
        "value": {"title": "Value", "type": "integer", "minimum": -limit, "maximum": limit}
    }

    @lp.function
    def with_regex(s):
        s += lp.user("Code?") + lp.assistant(lp.gen("c", regex="[A-Z]{3}"))

    count = len(server.requests)
    error = with_regex.run(backend=backend).error()
    assert isinstance(error.cause, lp.UnsupportedFeatureError)
    assert "regex" in str(error)
    assert len(server.requests) == count  # refused before any request


def test_openai_api_cannot_continue_a_turn(server: FakeOpenAI) -> None:
    backend = lp.OpenAI("fake", base_url=server.url, server="openai", is_chat_model=True)

    @lp.function
    def two_gens(s):
        s += lp.user("Hi") + lp.assistant(lp.gen("a", max_tokens=4) + " and " + lp.gen("b"))

    state = two_gens.run(backend=backend)
    assert state["a"] == "hello world"
    assert isinstance(state.error().cause, lp.UnsupportedFeatureError)
    assert "gen('b')" in str(state.error())


def test_models_and_usage(server: FakeOpenAI) -> None:
    backend = lp.OpenAI("fake", base_url=server.url)

    @lp.function
    def one(s):
        s += "x" + lp.gen("a", max_tokens=4)

    assert lp.loop.wait(backend.models()) == ["fake"]
    meta = one.run(backend=backend).get_meta_info("a")
    assert (meta["prompt_tokens"], meta["completion_tokens"]) == (5, 2)


def test_sglang_is_detected_and_gets_its_constraint_fields() -> None:
    # No SGLang server can run here (see ENGINES.md): this checks its documented wire contract.
    with FakeOpenAI(identity="sglang") as server:
        backend = lp.OpenAI("fake", base_url=server.url)

        @lp.function
        def constrained(s):
            s += "x" + lp.gen("a", regex="[a-z ]+", max_tokens=4)
            s += lp.gen("b", grammar='root ::= "hello world"', max_tokens=4)

        constrained.run(backend=backend)
        assert lp.loop.wait(backend.server()) == "sglang"
        first, second = (r for r in server.requests if "prompt" in r)
        assert first["regex"] == "[a-z ]+"
        assert second["ebnf"] == 'root ::= "hello world"'
