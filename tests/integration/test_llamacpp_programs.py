"""The program suite against a real llama-server started by the tests (lp.LlamaCpp)."""

from __future__ import annotations

import socket
import time
from typing import Literal

import httpx
import pydantic
import pytest

import lmprog as lp

pytestmark = pytest.mark.engine

FEW_SHOT = (
    "Q: What is the capital of Germany?\nA: Berlin\nQ: What is the capital of Italy?\nA: Rome\n"
)


@lp.function
def capital(s, country):
    s += FEW_SHOT + f"Q: What is the capital of {country}?\nA:"
    s += lp.gen("answer", max_tokens=8, stop="\n", temperature=0)


# ----- behaviour, on Gemma 270M -----------------------------------------------------------


@pytest.mark.gemma
def test_few_shot_qa(gemma: lp.LlamaCpp) -> None:
    states = capital.run_batch([("France",), ("Spain",), ("Japan",)], backend=gemma)
    answers = [s["answer"].strip() for s in states]
    assert answers == ["Paris", "Madrid", "Tokyo"]


@pytest.mark.gemma
def test_multi_turn_roles_reuse_the_prefix_cache(gemma: lp.LlamaCpp) -> None:
    @lp.function
    def conversation(s):
        s += lp.user("Say the word 'hello'.")
        s += lp.assistant(lp.gen("first", max_tokens=12, temperature=0))
        s += lp.user("Now say the word 'goodbye'.")
        s += lp.assistant(lp.gen("second", max_tokens=12, temperature=0))

    state = conversation.run(backend=gemma)
    assert state.error() is None
    messages = state.messages()
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1]["content"] == state["first"]
    text = state.text()
    assert text.startswith("<start_of_turn>user\nSay the word 'hello'.<end_of_turn>\n")
    assert text.count("<start_of_turn>model\n") == 2
    # The second request extended the first byte for byte: the server reused that prefix.
    assert state.get_meta_info("second")["cached_tokens"] > 20


@pytest.mark.gemma
def test_select_drives_control_flow(gemma: lp.LlamaCpp) -> None:
    @lp.function
    def route(s, review):
        s += (
            "Review: I loved it, wonderful!\nSentiment: positive\n"
            "Review: Terrible, a waste of money.\nSentiment: negative\n"
            f"Review: {review}\nSentiment:"
        )
        s += lp.select("label", [" positive", " negative"])
        if s["label"] == " positive":
            s += "\nWhat they liked:" + lp.gen("detail", max_tokens=6, stop="\n", temperature=0)
        return s["label"].strip()

    good = route.run("Great food and a lovely, friendly staff.", backend=gemma)
    bad = route.run("Awful. Cold food, rude staff, never again.", backend=gemma)
    assert (good.ret_value, bad.ret_value) == ("positive", "negative")
    assert "detail" in good and "detail" not in bad
    scores = good.get_meta_info("label")["scores"]
    assert scores[0] > scores[1]


@pytest.mark.gemma
@pytest.mark.parametrize(
    "method", [lp.greedy_token_selection, lp.unconditional_likelihood_normalized]
)
def test_every_choices_method_on_a_real_model(gemma: lp.LlamaCpp, method) -> None:
    @lp.function
    def pick(s):
        s += FEW_SHOT + "Q: What is the capital of France?\nA:"
        s += lp.select("city", [" Paris", " Lyon", " Marseille"], choices_method=method)

    state = pick.run(backend=gemma)
    assert state.error() is None
    assert state["city"] == " Paris"


class Person(pydantic.BaseModel):
    name: str
    age: int


class Tag(pydantic.BaseModel):
    """Bounded fields, so a random-weight model's JSON ends within max_tokens. (No free
    string: the tiny model emits stray UTF-8 bytes that the server decodes to U+FFFD, which
    can break a maxLength the grammar enforced on bytes; lmprog reports that as an error.)"""

    label: Literal["alpha", "beta", "gamma"]
    count: int
    ok: bool


@pytest.mark.gemma
def test_pydantic_output_on_gemma(gemma: lp.LlamaCpp) -> None:
    @lp.function
    def extract(s, text):
        s += f"Text: {text}\nJSON with name and age:"
        s += lp.gen("person", type=Person, max_tokens=48, temperature=0)

    state = extract.run("Alice is 31 years old.", backend=gemma)
    assert state.error() is None
    assert isinstance(state["person"], Person)


@pytest.mark.gemma
def test_greedy_output_equals_a_raw_request_with_the_same_text(
    gemma: lp.LlamaCpp, gemma_server
) -> None:
    state = capital.run("Portugal", backend=gemma)
    prompt = FEW_SHOT + "Q: What is the capital of Portugal?\nA:"
    raw = httpx.post(
        f"{gemma_server.url}/completion",
        json={"prompt": prompt, "n_predict": 8, "stop": ["\n"], "temperature": 0},
        timeout=120,
    ).json()
    assert state["answer"] == raw["content"]
    assert state.text() == prompt + raw["content"]


# ----- plumbing and constraints, on the tiny model ----------------------------------------


def test_lark_grammar_is_refused_before_any_request(tiny: lp.LlamaCpp) -> None:
    @lp.function
    def expr(s):
        s += "x" + lp.gen("e", grammar='start: "a"+')

    error = expr.run(backend=tiny).error()
    assert isinstance(error.cause, lp.UnsupportedFeatureError)
    assert "LARK" in str(error)


# ----- bad input: each a clear error on that program's state; the rest go on --------------


def test_unreachable_server() -> None:
    backend = lp.LlamaCpp("http://127.0.0.1:9", timeout=5)
    error = capital.run("France", backend=backend).error()
    assert isinstance(error.cause, lp.BackendUnavailableError)
    assert "'capital'" in str(error) and "gen('answer')" in str(error)
    assert "127.0.0.1:9" in str(error)


def test_timeout_is_a_clear_error() -> None:
    # A server that accepts the connection and never answers: deterministic, unlike racing
    # a real generation against the clock.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        backend = lp.LlamaCpp(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        started = time.perf_counter()
        error = capital.run("France", backend=backend).error()
    assert isinstance(error.cause, lp.BackendTimeoutError)
    assert "timeout" in str(error)
    assert time.perf_counter() - started < 5


def test_chat_template_comes_from_the_server(tiny: lp.LlamaCpp) -> None:
    @lp.function
    def hello(s):
        s += lp.user("hi") + lp.assistant(lp.gen("a", max_tokens=2))

    text = hello.run(backend=tiny).text()
    assert text.startswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_images_need_a_vision_model(tiny: lp.LlamaCpp) -> None:
    @lp.function
    def look(s):
        s += lp.user("What is this?" + lp.image(b"\x89PNG\r\n\x1a\n...")) + lp.assistant(
            lp.gen("a")
        )

    error = look.run(backend=tiny).error()
    assert isinstance(error.cause, lp.UnsupportedFeatureError)
    assert "--mmproj" in str(error)


@pytest.mark.gemma
def test_select_scores_are_the_models_own_logprobs(gemma: lp.LlamaCpp, gemma_server) -> None:
    prompt = FEW_SHOT + "Q: What is the capital of France?\nA:"

    @lp.function
    def pick(s):
        s += prompt + lp.select("city", [" Paris", " paris", " Ljubljana"])

    meta = pick.run(backend=gemma).get_meta_info("city")
    # Each choice is scored on its canonical tokenization: one token each here.
    assert meta["choice_tokens"] == [[" Paris"], [" paris"], [" Ljubljana"]]
    raw = httpx.post(
        f"{gemma_server.url}/completion",
        json={"prompt": prompt, "n_predict": 1, "temperature": 0, "n_probs": 262144},
        timeout=120,
    ).json()
    reference = {
        t["token"]: t["logprob"] for t in raw["completion_probabilities"][0]["top_logprobs"]
    }
    choices = [" Paris", " paris", " Ljubljana"]
    for choice, logprobs in zip(choices, meta["input_token_logprobs"], strict=True):
        assert logprobs[0] == pytest.approx(reference[choice], abs=0.02)


def test_min_tokens_holds_back_the_end(gemma: lp.LlamaCpp) -> None:
    """SGLang's min_new_tokens on llama-server (which has no such field): no end of sequence
    and no stop string before the minimum; the rest continues the same tokens, from the slot's
    cache. Without it the model answers " Paris" and stops at the newline."""

    @lp.function
    def answer(s, minimum):
        s += "Q: What is the capital of France?\nA:"
        s += lp.gen("a", max_tokens=24, stop="\n", min_tokens=minimum, temperature=0)

    free = answer.run(0, backend=gemma)
    held = answer.run(12, backend=gemma)
    streamed = answer.run(12, backend=gemma, stream=True)
    chunks = "".join(streamed.text_iter("a"))
    assert free.error() is None and held.error() is None, (free.error(), held.error())
    free_tokens = free.get_meta_info("a")["completion_tokens"]
    held_tokens = held.get_meta_info("a")["completion_tokens"]
    assert free_tokens < 12 <= held_tokens <= 24
    assert held["a"].startswith(free["a"])  # greedy: the same start, then more
    assert chunks == streamed["a"] == held["a"]


def test_min_tokens_with_a_constraint_is_refused(gemma: lp.LlamaCpp) -> None:
    @lp.function
    def number(s):
        s += "Answer:" + lp.gen("n", regex=r"[0-9]+", min_tokens=3)

    error = number.run(backend=gemma).error()
    assert error is not None and "min_tokens" in str(error)


def test_min_tokens_through_the_openai_endpoint_is_refused(gemma_server: lp.Runtime) -> None:
    """llama-server's /v1/completions accepts `min_tokens` and ignores it (measured: " Paris",
    2 tokens, with or without min_tokens=12), so lp.OpenAI refuses it rather than drop it."""

    @lp.function
    def answer(s):
        s += "Q: What is the capital of France?\nA:" + lp.gen("a", min_tokens=12, stop="\n")

    backend = lp.OpenAI("gemma", base_url=gemma_server.url + "/v1")
    error = answer.run(backend=backend).error()
    assert error is not None and "min_tokens" in str(error) and "llama-server" in str(error)
