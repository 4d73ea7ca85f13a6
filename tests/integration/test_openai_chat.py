"""lp.OpenAI with chat models, against real servers' chat endpoints (tiny model)."""

from __future__ import annotations

import re

import pytest

import lmprog as lp

pytestmark = pytest.mark.engine


def test_roles_become_messages_and_gens_continue_a_prefilled_turn(chat: lp.OpenAI) -> None:
    @lp.function
    def interview(s):
        s += lp.system("You are terse.")
        s += lp.user("Give me a code and a word.")
        s += lp.assistant("Code: " + lp.gen("code", regex=r"[A-Z]{3}-\d{2}") + ", word: "
                          + lp.gen("word", max_tokens=4, temperature=0))  # fmt: skip
        s += lp.user("Pick one.")
        s += lp.assistant(lp.select("pick", ["left", "right"]))
        return s["pick"]

    state = interview.run(backend=chat)
    assert state.error() is None, state.error()
    assert re.fullmatch(r"[A-Z]{3}-\d{2}", state["code"])
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == f"Code: {state['code']}, word: {state['word']}"
    assert state.ret_value in ("left", "right") and messages[4]["content"] == state.ret_value


def test_typed_outputs_and_streaming_on_chat(chat: lp.OpenAI) -> None:
    @lp.function
    def numbers(s, i):
        s += lp.user(f"Number {i}?")
        s += lp.assistant(lp.gen("n", type=int, max_tokens=8, temperature=1.0, seed=i))

    for state in numbers.run_batch([(i,) for i in range(8)], backend=chat):
        assert isinstance(state["n"], int), state.error()
    streamed = numbers.run(99, backend=chat, stream=True)
    assert "".join(streamed.text_iter("n")) == str(streamed["n"])


def test_chat_models_refuse_what_they_cannot_take(chat: lp.OpenAI) -> None:
    @lp.function
    def loose_text(s):
        s += "Q: hi\nA:" + lp.gen("a", max_tokens=4)

    @lp.function
    def gen_in_user_turn(s):
        s += lp.user("hi " + lp.gen("a", max_tokens=4))

    for program in (loose_text, gen_in_user_turn):
        error = program.run(backend=chat).error()
        assert isinstance(error.cause, lp.UnsupportedFeatureError), error
        assert "chat model" in str(error)
