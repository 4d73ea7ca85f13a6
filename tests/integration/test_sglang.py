"""lp.SGLang against SGLang's documented wire contract, and against a real server when
LMPROG_SGLANG_URL points to one (SGLang's runtime cannot be installed on these machines)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pydantic
import pytest
from support import fake_sglang
from support.fake_sglang import ANSWER, FakeSGLang, char_logprob
from support.models import tiny_model_dir

import lmprog as lp


@pytest.fixture
def server():
    with FakeSGLang(model_path=str(tiny_model_dir())) as fake:
        yield fake


def test_generate_sends_the_contract_and_reads_meta_info(server: FakeSGLang) -> None:
    @lp.function
    def prog(s):
        s += "Q: capital?\nA: " + lp.gen("a", max_tokens=5, stop="\n", temperature=0.2, seed=3)

    state = prog.run(backend=lp.SGLang(server.url))
    assert state["a"] == ANSWER[:5]
    sent = server.requests[-1]
    assert sent["text"] == "Q: capital?\nA: "
    assert sent["sampling_params"] == {
        "max_new_tokens": 5,
        "stop": ["\n"],
        "temperature": 0.2,
        "sampling_seed": 3,
    }
    meta = state.get_meta_info("a")
    assert (meta["finish_reason"], meta["prompt_tokens"], meta["cached_tokens"]) == (
        "length",
        16,
        11,
    )


class City(pydantic.BaseModel):
    name: str


@pytest.mark.parametrize(
    ("kwargs", "field", "expected"),
    [
        ({"regex": "[A-Z][a-z ]+"}, "regex", "[A-Z][a-z ]+"),
        ({"grammar": 'root ::= "x"'}, "ebnf", 'root ::= "x"'),
        ({"type": City}, "json_schema", None),
    ],
)
def test_constraints_go_in_sampling_params(server: FakeSGLang, kwargs, field, expected) -> None:
    @lp.function
    def prog(s):
        s += "x" + lp.gen("a", **kwargs)

    prog.run(backend=lp.SGLang(server.url))  # the fake enforces nothing; the request counts
    params = server.requests[-1]["sampling_params"]
    if expected is None:
        assert params[field].startswith("{") and '"name"' in params[field]  # a JSON string
    else:
        assert params[field] == expected


def test_streaming_turns_cumulative_text_into_deltas(server: FakeSGLang) -> None:
    @lp.function
    def prog(s):
        s += "x" + lp.gen("a", max_tokens=64)

    state = prog.run(backend=lp.SGLang(server.url), stream=True)
    pieces = list(state.text_iter("a"))
    assert len(pieces) > 3 and "".join(pieces) == ANSWER == state["a"]


def test_streamed_logprobs_arrive_with_their_chunks(server: FakeSGLang) -> None:
    """SGLang repeats every logprob so far in each chunk; lmprog passes each token's once,
    and each chunk's meta-info carries those so far, as SGLang's frontend gives them."""

    @lp.function
    def prog(s):
        s += "x" + lp.gen("a", max_tokens=64, return_logprob=True)

    state = prog.run(backend=lp.SGLang(server.url), stream=True)

    async def read() -> list[tuple[str, dict]]:
        return [pair async for pair in state.text_async_iter("a", return_meta_data=True)]

    pairs = asyncio.run(read())
    text = ""
    for piece, meta in pairs:
        text += piece
        assert [token for _, _, token in meta["output_token_logprobs"]] == list(text)
        assert meta["output_token_logprobs_length"] == meta["completion_tokens"] == len(text)
    assert text == ANSWER
    final = state.get_meta_info("a")["output_token_logprobs"]
    assert final == pairs[-1][1]["output_token_logprobs"] and final[0].token_id == ord("P") + 10


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (lp.token_length_normalized, " ~~"),  # mean -0.52 beats -0.58
        (lp.greedy_token_selection, " ~~"),  # tie on " ", then -0.65 beats -0.75
        (lp.unconditional_likelihood_normalized, " aa"),  # the fake ignores context: a tie
    ],
)
def test_select_scores_come_from_input_logprobs_in_one_request(
    server: FakeSGLang, method, expected
) -> None:
    @lp.function
    def pick(s):
        s += "A:" + lp.select("c", [" aa", " ~~"], choices_method=method)

    state = pick.run(backend=lp.SGLang(server.url))
    sent = server.requests[-1]
    assert len(server.requests) == 1  # the prompt and every choice, in one batch
    assert sent["text"][:3] == ["A:", "A: aa", "A: ~~"]
    assert (sent["return_logprob"], sent["logprob_start_len"]) == (True, 0)
    assert sent["sampling_params"]["max_new_tokens"] == 0
    meta = state.get_meta_info("c")
    assert meta["input_token_logprobs"][0] == pytest.approx([char_logprob(c) for c in " aa"])
    assert meta["choice_tokens"] == [[" ", "a", "a"], [" ", "~", "~"]]
    assert state["c"] == expected


@pytest.mark.parametrize(
    "method", [lp.token_length_normalized, lp.unconditional_likelihood_normalized]
)
def test_a_long_prompt_is_scored_from_near_its_end_so_its_cached_prefix_is_reused(
    server: FakeSGLang, method
) -> None:
    """SGLang reuses no cached prefix past `logprob_start_len` (its scheduler caps the match
    there): a long prompt's length is asked first, and logprobs are read only near its end."""
    long = "x" * 1200 + "\nA:"

    @lp.function
    def pick(s):
        s += long + lp.select("c", [" aa", " ~~"], choices_method=method)

    state = pick.run(backend=lp.SGLang(server.url))
    count, scoring = server.requests
    assert count["text"] == long and count["sampling_params"]["max_new_tokens"] == 0
    prompt_tokens = len(long) + 1  # the fake's: one per character, and BOS
    start = scoring["logprob_start_len"]
    expected_start = prompt_tokens - 4
    if method is lp.unconditional_likelihood_normalized:  # the choices alone: from 0
        assert start == [expected_start] * 3 + [0, 0]
    else:
        assert start == expected_start
    meta = state.get_meta_info("c")
    assert meta["choice_tokens"] == [[" ", "a", "a"], [" ", "~", "~"]]
    assert meta["input_token_logprobs"][0] == pytest.approx([char_logprob(c) for c in " aa"])


def test_a_choice_that_starts_before_the_counted_boundary_is_read_from_the_start(
    server: FakeSGLang,
) -> None:
    server.prompt_token_surplus = 10  # the count says the prompt ends later than it does

    @lp.function
    def pick(s):
        s += "y" * 1200 + lp.select("c", [" aa", " ~~"])

    state = pick.run(backend=lp.SGLang(server.url))
    starts = [r.get("logprob_start_len") for r in server.requests]
    assert starts == [None, 1200 + 1 + 10 - 4, 0]  # count, scoring past the prompt, again from 0
    assert state.get_meta_info("c")["choice_tokens"] == [[" ", "a", "a"], [" ", "~", "~"]]
    assert state["c"] == " ~~"


def test_images_and_chat_template_from_the_model_folder(server: FakeSGLang) -> None:
    @lp.function
    def look(s):
        s += lp.user("What is it?" + lp.image(b"\x89PNG\r\n\x1a\nrest")) + lp.assistant(lp.gen("a"))

    state = look.run(backend=lp.SGLang(server.url))
    assert state.error() is None
    assert state.text().startswith("<|im_start|>user\nWhat is it?")  # the tiny model's ChatML
    assert server.requests[-1]["image_data"][0].startswith("data:image/png;base64,")


def test_a_select_after_an_image_scores_every_text_with_the_image(server: FakeSGLang) -> None:
    @lp.function
    def look(s):
        s += lp.user("Cat or dog?" + lp.image(b"\x89PNG\r\n\x1a\nrest"))
        s += lp.assistant(
            lp.select("a", ["cat", "dog"], choices_method=lp.unconditional_likelihood_normalized)
        )

    state = look.run(backend=lp.SGLang(server.url))
    assert state.error() is None
    sent = server.requests[-1]["image_data"]
    assert [len(images) for images in sent] == [
        1,
        1,
        1,
        0,
        0,
    ]  # prompt, prompt+choice; choices alone
    assert all(images[0].startswith("data:image/png;base64,") for images in sent[:3])


@lp.function
def _chat(s):
    s += lp.user("Hi") + lp.assistant(lp.gen("a", max_tokens=4))


def test_a_remote_servers_template_file_is_read_when_readable(tmp_path) -> None:
    """The real server started with `--chat-template FILE` on a model folder without one
    (ENGINES.md): its /get_server_info names the file."""
    template = tmp_path / "turns.jinja"
    template.write_text(
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}[/]{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    with FakeSGLang(model_path="/not/here", chat_template=str(template)) as fake:
        state = _chat.run(backend=lp.SGLang(fake.url))
    assert state.error() is None
    assert state.text().startswith("[user]Hi[/][assistant]")
    assert state.messages()[0] == {"role": "user", "content": "Hi"}


def test_a_template_the_client_cannot_read_falls_back_to_the_family_with_a_warning() -> None:
    with (
        FakeSGLang(
            model_path="/not/here", chat_template="/srv/gemma.jinja", model_type="gemma3"
        ) as fake,
        pytest.warns(lp.TemplateGuessWarning, match="gemma3"),
    ):
        state = _chat.run(backend=lp.SGLang(fake.url))
    assert state.error() is None
    assert state.text().startswith("<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n")


def test_no_template_anywhere_is_a_clear_error() -> None:
    with FakeSGLang(model_path="/not/here", model_type="mystery") as fake:
        state = _chat.run(backend=lp.SGLang(fake.url))
    assert "cannot find the model's chat template" in str(state.error())
    assert "chat_template=" in str(state.error())


def test_runtime_endpoint_is_the_sglang_spelling(server: FakeSGLang) -> None:
    assert lp.RuntimeEndpoint is lp.SGLang
    backend = lp.RuntimeEndpoint(server.url)
    lp.loop.wait(backend.flush_cache())
    assert server.requests[-1] == {}


@pytest.mark.skipif(
    not os.environ.get("LMPROG_SGLANG_URL"),
    reason="no SGLang server: set LMPROG_SGLANG_URL to run against a real one "
    "(SGLang's runtime cannot be installed from the registries on these machines)",
)
def test_real_sglang_server() -> None:
    backend = lp.SGLang(os.environ["LMPROG_SGLANG_URL"])

    @lp.function
    def prog(s):
        s += "Q: What is 2 + 2?\nA:" + lp.gen("a", max_tokens=8, stop="\n", temperature=0)
        s += "\nCode:" + lp.gen("code", regex=r"[A-Z]{3}-\d{2}", max_tokens=12)
        s += "\nYes or no?" + lp.select("yn", [" yes", " no"])

    state = prog.run(backend=backend)
    assert state.error() is None, state.error()
    assert re.fullmatch(r"[A-Z]{3}-\d{2}", state["code"])
    assert state["yn"] in (" yes", " no")


def test_runtime_launches_sglang_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lp.Runtime("sglang") runs `python -m sglang.launch_server --model-path M --port P ...`
    (here a stand-in interpreter serving SGLang's documented contract on P), waits for
    /health, talks to it as lp.SGLang, and stops it."""
    fake_python = tmp_path / "python"
    fake_python.write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path / "argv"}\nshift 2\n'
        f'exec {sys.executable} {Path(fake_sglang.__file__)} "$@"\n'
    )
    fake_python.chmod(0o755)
    monkeypatch.setenv("LMPROG_SGLANG_PYTHON", str(fake_python))

    @lp.function
    def prog(s):
        s += "Q:" + lp.gen("a", max_tokens=8)

    with lp.Runtime("sglang", tiny_model_dir(), slots=3, ctx_per_slot=2048,
                    mem_fraction_static=0.8) as runtime:  # fmt: skip
        assert isinstance(runtime.backend, lp.SGLang)
        assert lp.get_server_info(runtime)["version"] == "stand-in"  # through the runtime
        pids = [runtime._process.pid]
        state = prog.run(backend=runtime)
        assert state.error() is None, state.error()
        assert state["a"] and ANSWER.startswith(state["a"]), state["a"]
    argv = (tmp_path / "argv").read_text().split()
    assert argv[:2] == ["-m", "sglang.launch_server"]
    for flag, value in [("--max-running-requests", "3"), ("--context-length", "2048"),
                        ("--mem-fraction-static", "0.8"), ("--host", "127.0.0.1")]:  # fmt: skip
        assert argv[argv.index(flag) + 1] == value
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_flush_cache_and_server_info_as_in_sglang(server: FakeSGLang) -> None:
    backend = lp.SGLang(server.url)
    lp.flush_cache(backend)
    assert server.requests[-1] == {}
    assert lp.get_server_info(backend)["version"] == "stand-in"
    with pytest.raises(lp.UnsupportedFeatureError, match="flush its prefix cache"):
        lp.flush_cache(lp.OpenAI("m", base_url=server.url))
