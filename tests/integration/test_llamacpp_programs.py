"""The program suite against a real llama-server started by the tests (lp.LlamaCpp)."""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

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


def test_greedy_output_equals_raw_request_on_tiny(tiny: lp.LlamaCpp, tiny_server) -> None:
    @lp.function
    def ramble(s):
        s += "def main():\n" + lp.gen("body", max_tokens=24, temperature=0)

    state = ramble.run(backend=tiny)
    raw = httpx.post(
        f"{tiny_server.url}/completion",
        json={"prompt": "def main():\n", "n_predict": 24, "temperature": 0},
        timeout=60,
    ).json()
    assert state["body"] == raw["content"]


CONSTRAINED = [
    ({"type": int}, int),
    ({"type": float}, float),
    ({"type": bool}, bool),
    ({"regex": r"[A-Z][a-z]{2,6}-\d{2}"}, str),
    ({"regex": r"(yes|no|maybe)"}, str),
    ({"type": Tag}, Tag),
    ({"type": Annotated[list[int], pydantic.Field(max_length=4)]}, list),
    (
        {
            "json_schema": {
                "type": "object",
                "properties": {"k": {"enum": ["a", "b"]}},
                "required": ["k"],
            }
        },
        dict,
    ),
]


@pytest.mark.parametrize(("kwargs", "python_type"), CONSTRAINED)
def test_constrained_outputs_always_validate(tiny: lp.LlamaCpp, kwargs, python_type) -> None:
    @lp.function
    def constrained(s, seed):
        s += f"value {seed}: " + lp.gen("v", max_tokens=400, temperature=1.0, seed=seed, **kwargs)

    states = constrained.run_batch([(seed,) for seed in range(12)], backend=tiny)
    for state in states:
        assert state.error() is None, state.error()
        assert isinstance(state["v"], python_type)
    if "regex" in kwargs:
        assert all(re.fullmatch(kwargs["regex"], s["v"]) for s in states)


def test_grammar_is_enforced(tiny: lp.LlamaCpp) -> None:
    grammar = 'root ::= "(" [0-9]{1,4} " " ("+" | "-") " " [0-9]{1,4} ")"'

    @lp.function
    def expr(s, seed):
        s += "expr: " + lp.gen("e", grammar=grammar, max_tokens=48, temperature=1.0, seed=seed)

    for state in expr.run_batch([(i,) for i in range(6)], backend=tiny):
        assert re.fullmatch(r"\(\d+ [+-] \d+\)", state["e"]), state.error()


def test_lark_grammar_is_refused_before_any_request(tiny: lp.LlamaCpp) -> None:
    @lp.function
    def expr(s):
        s += "x" + lp.gen("e", grammar='start: "a"+')

    error = expr.run(backend=tiny).error()
    assert isinstance(error.cause, lp.UnsupportedFeatureError)
    assert "LARK" in str(error)


def test_fork_join_with_concurrent_branches(tiny: lp.LlamaCpp) -> None:
    @lp.function
    def branches(s):
        s += "shared prefix\n"
        forks = s.fork(4)
        forks += lambda i: f"branch {i}:" + lp.gen("out", max_tokens=8, temperature=0)
        forks.join()
        s += "merged" + lp.gen("final", max_tokens=4, temperature=0)
        return [f.text() for f in forks]

    state = branches.run(backend=tiny)
    assert state.error() is None
    assert len(state["out"]) == 4
    assert all(t.startswith(f"shared prefix\nbranch {i}:") for i, t in enumerate(state.ret_value))
    assert state.text().startswith("shared prefix\nmerged")


def test_streaming_chunks_add_up_to_the_final_text(tiny: lp.LlamaCpp) -> None:
    @lp.function
    def story(s):
        s += lp.user("Tell me a story.")
        s += lp.assistant(lp.gen("story", max_tokens=40, temperature=0, ignore_eos=True))

    state = story.run(backend=tiny, stream=True)
    pieces = list(state.text_iter("story"))
    assert len(pieces) > 10
    assert "".join(pieces) == state["story"]
    assert state.get_meta_info("story")["completion_tokens"] == 40


def test_batch_of_120_programs(tiny: lp.LlamaCpp) -> None:
    states = capital.run_batch([(f"country {i}",) for i in range(120)], backend=tiny)
    assert len(states) == 120
    assert all(s.error() is None for s in states)
    assert all(s.text().endswith(f"country {i}?\nA:" + s["answer"]) for i, s in enumerate(states))


async def test_async_programs(tiny: lp.LlamaCpp) -> None:
    @lp.function
    async def two_step(s, topic):
        s += f"{topic}:" + lp.gen("a", max_tokens=4, temperature=0)
        first = await s.aget("a")
        s += " then" + lp.gen("b", max_tokens=4, temperature=0)
        return first + "|" + s["b"]

    states = await two_step.arun_batch([(f"t{i}",) for i in range(8)], backend=tiny)
    assert all(s.error() is None and "|" in s.ret_value for s in states)


def test_logprobs_on_request(tiny: lp.LlamaCpp) -> None:
    @lp.function
    def prog(s):
        s += "x = " + lp.gen(
            "v", max_tokens=3, temperature=0, return_logprob=True, top_logprobs_num=2
        )

    meta = prog.run(backend=tiny).get_meta_info("v")
    assert len(meta["output_token_logprobs"]) == 3
    assert all(p["logprob"] <= 0 for p in meta["output_token_logprobs"])


# ----- bad input: each a clear error on that program's state; the rest go on --------------


def test_invalid_regex_fails_before_any_request(tiny: lp.LlamaCpp) -> None:
    @lp.function
    def bad(s):
        s += "x" + lp.gen("v", regex="(unclosed")

    error = bad.run(backend=tiny).error()
    assert isinstance(error.cause, lp.ConstraintError)
    assert error.primitive == "gen('v')"
    assert "'bad'" in str(error) and "gen('v')" in str(error) and "(unclosed" in str(error)


def test_unreachable_server() -> None:
    backend = lp.LlamaCpp("http://127.0.0.1:9", timeout=5)
    error = capital.run("France", backend=backend).error()
    assert isinstance(error.cause, lp.BackendUnavailableError)
    assert "'capital'" in str(error) and "gen('answer')" in str(error)
    assert "127.0.0.1:9" in str(error)


def test_server_error_fails_one_program_and_the_batch_finishes(tiny: lp.LlamaCpp) -> None:
    @lp.function
    def maybe_bad(s, grammar):
        s += "x" + lp.gen("v", max_tokens=4, grammar=grammar)

    good = 'root ::= "ok"'
    states = maybe_bad.run_batch([(good,), ("root ::= (",), (good,)], backend=tiny)
    assert states[0]["v"] == "ok" and states[2]["v"] == "ok"
    error = states[1].error()
    assert isinstance(error.cause, lp.BackendResponseError)
    assert "HTTP 4" in str(error) or "HTTP 5" in str(error)


def test_timeout_is_a_clear_error(tiny_server) -> None:
    @lp.function
    def long(s):
        s += "x" + lp.gen("v", max_tokens=1500, ignore_eos=True)

    backend = lp.LlamaCpp(tiny_server.url, timeout=0.2)
    error = long.run(backend=backend).error()
    assert isinstance(error.cause, lp.BackendTimeoutError)
    assert "timeout" in str(error)


def test_chat_template_comes_from_the_server(tiny: lp.LlamaCpp) -> None:
    @lp.function
    def hello(s):
        s += lp.user("hi") + lp.assistant(lp.gen("a", max_tokens=2))

    text = hello.run(backend=tiny).text()
    assert text.startswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_json_schema_given_as_string(tiny: lp.LlamaCpp) -> None:
    schema = json.dumps({"type": "array", "items": {"type": "integer"}, "maxItems": 3})

    @lp.function
    def arr(s):
        s += "nums: " + lp.gen("v", json_schema=schema, max_tokens=32, temperature=0)

    state = arr.run(backend=tiny)
    assert state.error() is None and isinstance(state["v"], list)


def test_tool_calls_always_parse_and_run(tiny: lp.LlamaCpp) -> None:
    def lookup(city: Literal["Paris", "Rome"]) -> str:
        """Weather in a city."""
        return {"Paris": "rain", "Rome": "sun"}[city]

    def count(n: Annotated[int, pydantic.Field(ge=0, le=99)]) -> int:
        return n

    @lp.function
    def agent(s, seed):
        s += "Tool call: " + lp.gen("call", tools=[lookup, count], max_tokens=200, seed=seed)
        return s["call"]

    for state in agent.run_batch([(i,) for i in range(8)], backend=tiny, temperature=1.0):
        assert state.error() is None, state.error()
        call = state.ret_value
        assert call.name in ("lookup", "count")
        assert call.result == (
            lookup(**call.arguments) if call.name == "lookup" else call.arguments["n"]
        )


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
