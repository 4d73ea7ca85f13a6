"""Programs on a real `transformers serve` (transformers' own OpenAI-compatible server), started
from its own venv (backends/transformers/install.sh) on the tiny model's folder, through the
public API: lp.OpenAI(model_id, base_url=url + "/v1").

What the server honours (backends/transformers/NOTES.md): text completions and chat, stop
strings, max_tokens, temperature 0, streaming with usage; it enforces no constraint, returns no
logprobs, cannot continue an assistant prefill, has no prefix cache, and rejects unknown fields
(top_k, ignore_eos, ...) with a 422. So constrained gens and selects must be refused by lmprog
before any request, and sampling extras either honoured or refused, never sent to a 422.

lp.OpenAI recognises the server (lmprog/backends/transformers_serve.py, the "transformers"
dialect) and so trims the stop string it leaves in its text, refuses logprobs and chat
json_schema (which it ignores), and asks it to sample when temperature > 0 (it stays greedy
unless told through `generation_config`).
"""

from __future__ import annotations

from typing import Annotated, Literal

import httpx
import pydantic
import pytest
import tokenizers
from support.models import tiny_model_dir
from support.reference import transformers_greedy
from support.servers import (
    ServerProcess,
)

import lmprog as lp

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]

@pytest.fixture(scope="module")
def server(transformers_server: ServerProcess) -> ServerProcess:
    """One server for the session (tests/conftest.py): the constraint matrix uses it too."""
    return transformers_server


@pytest.fixture(scope="module")
def model_id() -> str:
    """A server pinned to a folder answers only to that folder's path as the model."""
    return str(tiny_model_dir())


@pytest.fixture(scope="module")
def completions(server: ServerProcess, model_id: str) -> lp.OpenAI:
    return lp.OpenAI(model_id, base_url=server.url + "/v1")


@pytest.fixture(scope="module")
def chat(server: ServerProcess, model_id: str) -> lp.OpenAI:
    return lp.OpenAI(model_id, base_url=server.url + "/v1", is_chat_model=True)


@pytest.fixture(params=["completions", "chat"])
def backend(request: pytest.FixtureRequest) -> lp.OpenAI:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


# ----- the wire: what a client can probe (see NOTES.md) -----------------------------------------


def test_identifies_itself_without_side_effects(server: ServerProcess, model_id: str) -> None:
    health = httpx.get(server.url + "/health", timeout=10)
    assert health.json() == {"status": "ok"}
    assert "x-request-id" in health.headers
    # Paths no other engine serves: the probe for detection.
    paths = httpx.get(server.url + "/openapi.json", timeout=10).json()["paths"]
    assert {"/v1/systemone", "/load_model", "/reset"} <= set(paths)
    assert "/v1/embeddings" not in paths and "/tokenize" not in paths
    for absent in ("/version", "/props", "/get_server_info", "/v1/embeddings"):
        assert httpx.get(server.url + absent, timeout=10).status_code == 404
    (listed,) = httpx.get(server.url + "/v1/models", timeout=10).json()["data"]
    assert listed["id"] == model_id  # the folder path, as on the command line
    assert listed["owned_by"] == "local" and listed["status"] == {"value": "loaded"}


def test_a_request_for_another_model_is_a_400(server: ServerProcess) -> None:
    body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
    reply = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert reply.status_code == 400
    assert "pinned" in reply.json()["detail"]


def test_unknown_fields_are_a_422(server: ServerProcess, model_id: str) -> None:
    body = {"model": model_id, "prompt": "x", "max_tokens": 2, "top_k": 3}
    reply = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert reply.status_code == 422
    assert "top_k" in reply.json()["detail"]


# ----- programs through lp.OpenAI ---------------------------------------------------------------

FEW_SHOT = "Q: 1 + 1?\nA: 2\nQ: 2 + 2?\nA: 4\n"


@lp.function
def few_shot(s, question):
    s += (
        FEW_SHOT + f"Q: {question}?\nA:" + lp.gen("answer", max_tokens=12, stop="\n", temperature=0)
    )


@lp.function
def ramble(s):
    s += "def main():\n" + lp.gen("body", max_tokens=24, temperature=0)


def test_greedy_output_equals_transformers_generate(completions: lp.OpenAI) -> None:
    state = ramble.run(backend=completions)
    assert state.error() is None, state.error()
    reference = transformers_greedy(tiny_model_dir())
    assert state["body"] == reference("def main():\n", 24)
    meta = state.get_meta_info("body")
    assert meta["completion_tokens"] == 24 and meta["finish_reason"] == "length"
    tokenizer = tokenizers.Tokenizer.from_file(str(tiny_model_dir() / "tokenizer.json"))
    assert meta["prompt_tokens"] == len(tokenizer.encode("def main():\n").ids)  # BOS included
    assert not meta.get("cached_tokens")  # no prefix cache, no cached_tokens in usage


def test_max_tokens_and_usage(completions: lp.OpenAI) -> None:
    @lp.function
    def short(s):
        s += "def main():\n" + lp.gen("v", max_tokens=5, temperature=0)

    meta = short.run(backend=completions).get_meta_info("v")
    assert meta["completion_tokens"] == 5 and meta["finish_reason"] == "length"


def test_few_shot_stops_at_the_stop_string(completions: lp.OpenAI) -> None:
    # The server stops after the token that completes a stop string and sends that token's
    # whole text (" Paris\n", here "...\n\n   "): the client must cut at the stop string.
    state = few_shot.run("3 + 3", backend=completions)
    assert state.error() is None, state.error()
    assert "\n" not in state["answer"]
    assert state.text() == FEW_SHOT + "Q: 3 + 3?\nA:" + state["answer"]
    meta = state.get_meta_info("answer")
    assert meta["prompt_tokens"] > 10 and 0 < meta["completion_tokens"] <= 12


def test_multi_turn_roles_on_chat(chat: lp.OpenAI, server: ServerProcess) -> None:
    @lp.function
    def conversation(s):
        s += lp.system("You are terse.")
        s += lp.user("Hello")
        s += lp.assistant(lp.gen("first", max_tokens=6, temperature=0))
        s += lp.user("Again")
        s += lp.assistant(lp.gen("second", max_tokens=6, temperature=0))

    state = conversation.run(backend=chat)
    assert state.error() is None, state.error()
    roles = [m["role"] for m in state.messages()]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert state.messages()[2]["content"] == state["first"]
    assert state.text().startswith("<|im_start|>system\nYou are terse.<|im_end|>\n")
    # The server applied the folder's ChatML template: the same reply as a raw request.
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello"},
    ]
    body = {"model": chat.model, "messages": messages, "max_tokens": 6, "temperature": 0}
    raw = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).json()
    assert raw["choices"][0]["message"]["content"] == state["first"]
    rendered = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    tokenizer = tokenizers.Tokenizer.from_file(str(tiny_model_dir() / "tokenizer.json"))
    # apply_chat_template adds no special tokens: no BOS unless the template writes one
    expected = tokenizer.encode(rendered + "<|im_start|>assistant\n", add_special_tokens=False)
    assert raw["usage"]["prompt_tokens"] == len(expected.ids)


def test_roles_on_completions_with_a_given_template(server: ServerProcess, model_id: str) -> None:
    backend = lp.OpenAI(model_id, base_url=server.url + "/v1", chat_template="chatml")

    @lp.function
    def turn(s):
        s += lp.user("Hello")
        s += lp.assistant(lp.gen("reply", max_tokens=6, temperature=0))

    state = turn.run(backend=backend)
    assert state.error() is None, state.error()
    assert state.text().startswith("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")


def test_streaming_chunks_add_up_to_the_final_text(backend: lp.OpenAI) -> None:
    @lp.function
    def story(s):
        s += lp.user("Tell me a story.")
        s += lp.assistant(lp.gen("story", max_tokens=40, temperature=0))

    if not backend.is_chat_model:
        backend = lp.OpenAI(backend.model, base_url=backend.base_url, chat_template="chatml")
    state = story.run(backend=backend, stream=True)
    pieces = list(state.text_iter("story"))
    assert state.error() is None, state.error()
    assert len(pieces) > 10
    assert "".join(pieces) == state["story"]
    # the tiny model writes no end-of-sequence token here: usage comes from the last chunk
    assert state.get_meta_info("story")["completion_tokens"] == 40


def test_batch_of_programs(completions: lp.OpenAI) -> None:
    # The server runs one generation at a time (no continuous batching by default): keep it small.
    states = few_shot.run_batch([(f"{i} + {i}",) for i in range(24)], backend=completions)
    assert len(states) == 24
    assert all(s.error() is None for s in states), [s.error() for s in states if s.error()]
    assert all(s.text().endswith(f"{i} + {i}?\nA:" + s["answer"]) for i, s in enumerate(states))


def test_fork_join_with_concurrent_branches(completions: lp.OpenAI) -> None:
    @lp.function
    def branches(s):
        s += "shared prefix\n"
        forks = s.fork(3)
        forks += lambda i: f"branch {i}:" + lp.gen("out", max_tokens=6, temperature=0)
        forks.join()
        s += "merged" + lp.gen("final", max_tokens=4, temperature=0)
        return [f.text() for f in forks]

    state = branches.run(backend=completions)
    assert state.error() is None, state.error()
    assert len(state["out"]) == 3
    assert all(t.startswith(f"shared prefix\nbranch {i}:") for i, t in enumerate(state.ret_value))


async def test_async_programs(completions: lp.OpenAI) -> None:
    @lp.function
    async def two_step(s, topic):
        s += f"{topic}:" + lp.gen("a", max_tokens=4, temperature=0)
        first = await s.aget("a")
        s += " then" + lp.gen("b", max_tokens=4, temperature=0)
        return first + "|" + s["b"]

    states = await two_step.arun_batch([(f"t{i}",) for i in range(4)], backend=completions)
    assert all(s.error() is None and "|" in s.ret_value for s in states)


# ----- what the server cannot do: refused before any request -------------------------------------


class Tag(pydantic.BaseModel):
    label: Literal["alpha", "beta", "gamma"]
    count: int


CONSTRAINED = {
    "int": {"type": int},
    "bool": {"type": bool},
    "regex": {"regex": r"[A-Z][a-z]{2,6}-\d{2}"},
    "model": {"type": Tag},
    "list": {"type": Annotated[list[int], pydantic.Field(max_length=4)]},
    "json_schema": {"json_schema": {"type": "object", "properties": {"k": {"enum": ["a", "b"]}}}},
    "choices": {"choices": [" red", " green"]},
    "grammar": {"grammar": 'root ::= "(" [0-9]{1,4} ")"'},
}
# What an unrecognised server's chat gets as response_format json_schema (or a JSON enum, for
# choices): transformers serve ignores it, so only the dialect refuses these.


def _refused_before_any_request(
    server: ServerProcess, backend: lp.OpenAI, program: lp.Program
) -> None:
    before = server.requests_logged("POST")
    error = program.run(backend=backend).error()
    assert error is not None
    assert isinstance(error.cause, lp.UnsupportedFeatureError), error
    assert server.requests_logged("POST") == before, server.log_tail(600)


@pytest.mark.parametrize("kind", list(CONSTRAINED))
def test_constrained_gens_are_refused_on_completions(
    server: ServerProcess, completions: lp.OpenAI, kind: str
) -> None:
    @lp.function
    def constrained(s):
        s += "value: " + lp.gen("v", max_tokens=20, temperature=0, **CONSTRAINED[kind])

    _refused_before_any_request(server, completions, constrained)


@pytest.mark.parametrize("kind", list(CONSTRAINED))
def test_constrained_gens_are_refused_on_chat(
    server: ServerProcess, chat: lp.OpenAI, kind: str
) -> None:
    # The server accepts response_format and ignores it ("Ignoring unsupported fields" in its
    # log): a schema must be refused, not sent.
    @lp.function
    def constrained(s):
        s += lp.user("Give a value.")
        s += lp.assistant(lp.gen("v", max_tokens=20, temperature=0, **CONSTRAINED[kind]))

    _refused_before_any_request(server, chat, constrained)


def test_select_is_refused_on_completions(server: ServerProcess, completions: lp.OpenAI) -> None:
    @lp.function
    def route(s):
        s += "Item 1 is" + lp.select("kind", [" red", " green", " blue"])

    _refused_before_any_request(server, completions, route)


def test_select_is_refused_on_chat(server: ServerProcess, chat: lp.OpenAI) -> None:
    # Today it goes out as a JSON enum in response_format, which this server ignores.
    @lp.function
    def route(s):
        s += lp.user("Pick a colour.")
        s += lp.assistant(lp.select("kind", [" red", " green", " blue"]))

    _refused_before_any_request(server, chat, route)


def test_assistant_prefill_is_refused_on_chat(server: ServerProcess, chat: lp.OpenAI) -> None:
    # The server always adds the generation prompt (continue_final_message is a 422, and as a
    # chat_template_kwargs entry a 400): it cannot continue a started assistant turn.
    @lp.function
    def prefill(s):
        s += lp.user("Hello")
        s += lp.assistant("Sure, here it is:" + lp.gen("rest", max_tokens=4))

    _refused_before_any_request(server, chat, prefill)


def test_logprobs_are_refused(server: ServerProcess, backend: lp.OpenAI) -> None:
    # The server ignores logprobs/top_logprobs (a warning in its log): refuse, don't return none.
    @lp.function
    def prog(s):
        if backend.is_chat_model:
            s += lp.user("x")
            s += lp.assistant(lp.gen("v", max_tokens=3, return_logprob=True, top_logprobs_num=2))
        else:
            s += "x = " + lp.gen("v", max_tokens=3, return_logprob=True, top_logprobs_num=2)

    _refused_before_any_request(server, backend, prog)


@pytest.mark.parametrize("extra", [{"top_k": 1}, {"ignore_eos": True}, {"min_p": 0.5}])
def test_sampling_extras_are_honoured_or_refused(
    server: ServerProcess, completions: lp.OpenAI, extra
) -> None:
    """Never sent as fields the server answers with a 422 (it could take them inside
    `generation_config`)."""

    @lp.function
    def prog(s):
        s += "def main():\n" + lp.gen("v", max_tokens=8, temperature=1.0, seed=1, **extra)

    before = server.requests_logged("POST")
    state = prog.run(backend=completions)
    error = state.error()
    if error is not None:
        assert isinstance(error.cause, lp.UnsupportedFeatureError), error
        assert server.requests_logged("POST") == before
    elif "top_k" in extra:  # top_k=1 is greedy
        assert state["v"] == transformers_greedy(tiny_model_dir())("def main():\n", 8)
    elif "ignore_eos" in extra:
        assert state.get_meta_info("v")["completion_tokens"] == 8


def test_temperature_samples_and_seed_repeats(completions: lp.OpenAI) -> None:
    # temperature > 0 alone stays greedy on this server (do_sample comes from the model's
    # generation_config); a seed is honoured once sampling is on.
    @lp.function
    def prog(s, seed):
        s += "def main():\n" + lp.gen("v", max_tokens=16, temperature=1.5, seed=seed)

    texts = [s["v"] for s in prog.run_batch([(i,) for i in range(6)], backend=completions)]
    assert len(set(texts)) > 1, texts
    again = prog.run(0, backend=completions)["v"]
    assert again == texts[0]


def test_capabilities_after_detection(completions: lp.OpenAI, chat: lp.OpenAI) -> None:
    @lp.function
    def hello(s):
        s += lp.user("Hello")
        s += lp.assistant(lp.gen("v", max_tokens=2, temperature=0))

    assert ramble.run(backend=completions).error() is None  # a request runs detection
    assert hello.run(backend=chat).error() is None
    for backend in (completions, chat):
        caps = backend.capabilities
        assert caps.constraints == frozenset()
        assert not caps.logprobs
        assert not caps.prefix_cache


def test_a_server_error_fails_one_program_and_the_batch_finishes(
    server: ServerProcess, completions: lp.OpenAI
) -> None:
    # A prompt longer than the model's 2,048 positions is the server's 400.
    @lp.function
    def maybe_long(s, n):
        s += "x " * n + lp.gen("v", max_tokens=2, temperature=0)

    states = maybe_long.run_batch([(3,), (3000,), (3,)], backend=completions)
    assert states[0].error() is None and states[2].error() is None
    error = states[1].error()
    assert isinstance(error.cause, lp.BackendResponseError), error
    assert "2048" in str(error) or "HTTP 4" in str(error)
