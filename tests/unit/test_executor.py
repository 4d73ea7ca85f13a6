"""The executor, state and program API on the scripted test double (no engine)."""

from __future__ import annotations

import _thread
import asyncio
import threading
import time
from typing import Literal

import pydantic
import pytest

import lmprog as lp
from lmprog.backends.base import Capabilities
from lmprog.program import resolve_backend
from lmprog.testing import ScriptedBackend


@lp.function
def chat(s, question):
    s += lp.system("Be brief.")
    s += lp.user(question)
    s += lp.assistant(lp.gen("answer", stop="\n"))
    return "done"


def test_roles_render_with_template_and_messages_match() -> None:
    backend = ScriptedBackend(lambda r: "Paris\nignored")
    state = chat.run("Capital of France?", backend=backend)
    assert state.error() is None
    assert state["answer"] == "Paris"
    assert state.ret_value == "done"
    assert state.text() == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis<|im_end|>\n"
    )
    assert state.messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ]
    # The prompt of the gen is exactly the text before it, and the turn's end stops it.
    request = backend.requests[0]
    assert request.prompt.endswith("<|im_start|>assistant\n")
    assert request.sampling.stop == ("\n", "<|im_end|>")


def test_context_managers_and_begin_end_are_the_same_as_role_values() -> None:
    @lp.function
    def with_blocks(s):
        with s.user():
            s += "hi"
        s += lp.assistant_begin() + lp.gen("a") + lp.assistant_end()

    backend = ScriptedBackend(lambda r: "yo")
    assert with_blocks.run(backend=backend).text() == chat_text("hi", "yo")


def chat_text(user: str, assistant: str) -> str:
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n"


def test_gen_settings_override_run_defaults_which_override_function_defaults() -> None:
    @lp.function(temperature=0.5, top_k=7)
    def prog(s):
        s += "a" + lp.gen("x", temperature=0.1) + lp.gen("y")

    backend = ScriptedBackend()
    prog.run(backend=backend, temperature=0.3, max_new_tokens=9)
    first, second = backend.requests
    assert (first.sampling.temperature, first.sampling.top_k) == (0.1, 7)
    assert (second.sampling.temperature, second.sampling.max_new_tokens) == (0.3, 9)


def test_appending_returns_at_once_and_reads_wait_only_for_their_value() -> None:
    timeline: list[tuple[str, float]] = []

    @lp.function
    def prog(s):
        start = time.perf_counter()
        s += "Q" + lp.gen("a")
        timeline.append(("appended", time.perf_counter() - start))
        s["a"]
        timeline.append(("read", time.perf_counter() - start))

    prog.run(backend=ScriptedBackend(delay=0.2))
    assert timeline[0][1] < 0.05
    assert timeline[1][1] >= 0.19


def test_fork_branches_run_concurrently_and_join_gathers_values() -> None:
    backend = ScriptedBackend(lambda r: "|" + r.prompt, delay=0.2)

    @lp.function
    def tips(s):
        s += "Tips:\n"
        forks = s.fork(4)
        forks += lambda i: f"Tip {i}:" + lp.gen("tip")
        forks.join()
        return [f["tip"] for f in forks]

    started = time.perf_counter()
    state = tips.run(backend=backend)
    elapsed = time.perf_counter() - started
    assert state.error() is None
    assert state.ret_value == [f"|Tips:\nTip {i}:" for i in range(4)]
    assert state["tip"] == state.ret_value  # gather_variable: one list per new variable
    assert backend.max_in_flight == 4
    assert elapsed < 0.6
    assert state.text() == "Tips:\n"  # the parent is untouched


def test_join_concate_and_append_and_copy() -> None:
    @lp.function
    def prog(s):
        s += "A"
        forks = s.fork(2)
        forks += lambda i: str(i)
        forks.join("concate_and_append")
        with s.copy() as c:
            c += "never in parent"

    assert prog.run(backend=ScriptedBackend()).text() == "A01"


def test_var_scope_and_plus_concatenation() -> None:
    @lp.function
    def prog(s):
        with s.var_scope("block"):
            s += "x=" + lp.gen("x") + ";"
        s += "after"

    state = prog.run(backend=ScriptedBackend(lambda r: "1"))
    assert state["block"] == "x=1;"
    assert state["x"] == "1"
    assert state.text() == "x=1;after"


def test_select_drives_control_flow_and_reports_scores() -> None:
    @lp.function
    def route(s, text):
        s += text + " Sentiment:" + lp.select("label", ["good", "bad"])
        if s["label"] == "good":
            s += " Why?" + lp.gen("why")

    backend = ScriptedBackend(lambda r: " fine")
    good = route.run("so good", backend=backend)
    bad = route.run("bad", backend=backend)
    assert (good["label"], good["why"]) == ("good", " fine")
    assert bad["label"] == "bad" and "why" not in bad
    meta = good.get_meta_info("label")
    assert meta["choices_method"] == "token_length_normalized"
    assert len(meta["scores"]) == 2


@pytest.mark.parametrize(
    "method",
    [lp.token_length_normalized, lp.greedy_token_selection, lp.unconditional_likelihood_normalized],
)
def test_every_choices_method_picks_a_choice(method) -> None:
    @lp.function
    def pick(s):
        s += "b then a" + lp.select("c", ["a", "b"], choices_method=method)

    assert pick.run(backend=ScriptedBackend())["c"] == "a"


def test_constrained_decoding_sends_one_generation_under_a_choice_constraint() -> None:
    backend = ScriptedBackend(lambda request: "b")

    @lp.function
    def pick(s):
        s += "Pick:" + lp.select("c", ["a", "b"], choices_method=lp.constrained_decoding)

    state = pick.run(backend=backend)
    assert state["c"] == "b" and state.text() == "Pick:b"
    (request,) = backend.requests
    assert request.constraint is not None and request.constraint.choices == ("a", "b")
    assert request.sampling.temperature == 0.0
    assert state.get_meta_info("c")["scores"] == [float("-inf"), 0.0]


def test_constrained_decoding_refuses_an_answer_outside_the_choices() -> None:
    @lp.function
    def pick(s):
        s += "Pick:" + lp.select("c", ["a", "b"], choices_method=lp.constrained_decoding)

    error = pick.run(backend=ScriptedBackend(lambda request: "c")).error()
    assert isinstance(error.cause, lp.ConstraintError) and "none of them" in str(error)


def test_constrained_decoding_needs_a_backend_that_enforces_choices() -> None:
    backend = lp.OpenAI("davinci-002", base_url="http://127.0.0.1:9/v1", server="generic")

    @lp.function
    def pick(s):
        s += "Pick:" + lp.select("c", ["a", "b"], choices_method=lp.constrained_decoding)

    error = pick.run(backend=backend).error()
    assert isinstance(error.cause, lp.UnsupportedFeatureError), error


class City(pydantic.BaseModel):
    name: str
    population: int


@pytest.mark.parametrize(
    ("kwargs", "reply", "expected"),
    [
        ({"type": int}, "42", 42),
        ({"dtype": "float"}, "-3.5", -3.5),
        ({"type": bool}, "false", False),
        (
            {"type": City},
            '{"name": "Paris", "population": 2100000}',
            City(name="Paris", population=2100000),
        ),
        ({"type": list[int]}, "[1, 2]", [1, 2]),
        ({"type": Literal["a", "b"]}, "b", "b"),
        (
            {"json_schema": {"type": "object", "properties": {"k": {"type": "string"}}}},
            '{"k": "v"}',
            {"k": "v"},
        ),
        ({"regex": r"\d{3}-\d{4}"}, "555-1234", "555-1234"),
    ],
)
def test_constraints_parse_to_typed_values(kwargs, reply, expected) -> None:
    @lp.function
    def prog(s):
        s += "value:" + lp.gen("v", **kwargs)

    backend = ScriptedBackend(lambda r: reply)
    state = prog.run(backend=backend)
    assert state.error() is None
    assert state["v"] == expected
    assert backend.requests[0].constraint is not None
    assert state.text() == "value:" + reply


def test_output_violating_a_constraint_is_an_error_naming_program_and_gen() -> None:
    @lp.function
    def ask_number(s):
        s += "n=" + lp.gen("n", type=int)

    state = ask_number.run(backend=ScriptedBackend(lambda r: "many"))
    error = state.error()
    assert isinstance(error, lp.ProgramError)
    assert "'ask_number'" in str(error) and "gen('n')" in str(error)
    assert isinstance(error.cause, lp.ConstraintError)
    with pytest.raises(lp.ProgramError):
        state["n"]


@pytest.mark.parametrize(
    "kwargs", [{"regex": "(unclosed"}, {"json_schema": {"type": "nope"}}, {"json_schema": "{bad"}]
)
def test_invalid_constraints_fail_before_any_request(kwargs) -> None:
    @lp.function
    def prog(s):
        s += "x" + lp.gen("a") + lp.gen("b", **kwargs)

    backend = ScriptedBackend()
    state = prog.run(backend=backend)
    assert isinstance(state.error(), lp.ProgramError)
    assert isinstance(state.error().cause, lp.ConstraintError)
    assert backend.requests == []


def test_unsupported_constraint_is_refused_before_any_request() -> None:
    class NoRegex(ScriptedBackend):
        capabilities = Capabilities(constraints=frozenset({"json_schema"}))

    @lp.function
    def prog(s):
        s += "x" + lp.gen("a", regex="[a-z]+")

    backend = NoRegex()
    state = prog.run(backend=backend)
    error = state.error()
    assert isinstance(error.cause, lp.UnsupportedFeatureError)
    assert "regex" in str(error) and "gen('a')" in str(error)
    assert backend.requests == []


def test_a_raising_program_keeps_its_text_and_names_the_cause() -> None:
    @lp.function
    def broken(s):
        s += "start" + lp.gen("a")
        s["a"]
        raise RuntimeError("boom")

    state = broken.run(backend=ScriptedBackend(lambda r: "!"))
    error = state.error()  # the program's own exception, with lmprog's context as a note
    assert isinstance(error, RuntimeError) and str(error) == "boom"
    assert any("'broken'" in note for note in getattr(error, "__notes__", []))
    assert "boom" in str(state.program_error()) and "'broken'" in str(state.program_error())
    assert state.text() == "start!"


def test_batch_keeps_order_and_one_failure_does_not_sink_it() -> None:
    def respond(request):
        if "item 13:" in request.prompt:
            raise AssertionError("never called: fail() fires first")
        return request.prompt.split()[-1]

    def fail(request):
        return lp.BackendResponseError("HTTP 500", 500) if "item 7:" in request.prompt else None

    @lp.function
    def item(s, i):
        s += f"item {i}:" + lp.gen("out")

    backend = ScriptedBackend(respond, fail=fail, delay=0.01)
    states = item.run_batch(
        [{"i": i} for i in range(150) if i != 13], backend=backend, max_concurrency=8
    )
    assert len(states) == 149
    assert [s["out"] for s in states if s.error() is None] == [
        f"{i}:" for i in range(150) if i not in (7, 13)
    ]
    assert "HTTP 500" in str(states[7].error())
    assert backend.max_in_flight == 8
    with pytest.raises(lp.BatchError) as info:
        item.run_batch([(7,), (8,)], backend=backend, return_exceptions=False)
    assert len(info.value.states) == 2 and info.value.states[1]["out"] == "8:"


def test_streaming_pieces_add_up_to_the_text() -> None:
    state = chat.run("Hello?", backend=ScriptedBackend(lambda r: "Hi there, friend"), stream=True)
    pieces = list(state.text_iter())
    assert len(pieces) > 5
    assert "".join(pieces) == state.text()
    answer = "".join(state.text_iter("answer"))
    assert answer == state["answer"] == "Hi there, friend"


async def test_async_program_arun_and_arun_batch() -> None:
    @lp.function
    async def agent(s, topic):
        s += topic + ":" + lp.gen("first")
        await asyncio.sleep(0.01)
        first = s["first"]  # blocking-style read works inside async bodies too
        s += lp.gen("second")
        return first + (await s.aget("second"))

    backend = ScriptedBackend(lambda r: r.prompt[-2:])
    state = await agent.arun("t", backend=backend)
    assert state.ret_value == "t:t:"
    states = await agent.arun_batch([("a",), ("b",)], backend=backend)
    assert [s.ret_value for s in states] == ["a:a:", "b:b:"]
    streamed = await agent.arun("z", backend=backend, stream=True)
    assert "".join([p async for p in streamed.text_async_iter()]) == streamed.text()


def test_bind_default_backend_and_call() -> None:
    @lp.function
    def greet(s, name, greeting):
        s += f"{greeting}, {name}" + lp.gen("rest")

    backend = ScriptedBackend(lambda r: "!")
    lp.set_default_backend(backend)
    try:
        assert greet.bind(greeting="Hello")("Ada").text() == "Hello, Ada!"
    finally:
        lp.set_default_backend(None)


def test_with_no_backend_set_the_default_is_local_made_once_and_not_loaded_yet() -> None:
    try:
        default = resolve_backend(None)
        assert isinstance(default, lp.Local) and default is resolve_backend(None)
        assert default.stats() == {"loaded": False}
    finally:
        lp.set_default_backend(None)


def test_n_samples_give_a_list() -> None:
    @lp.function
    def prog(s):
        s += "x" + lp.gen("a", n=3, seed=1)

    backend = ScriptedBackend(lambda r: str(r.sampling.seed))
    assert prog.run(backend=backend)["a"] == ["1", "2", "3"]


def test_images_sit_in_the_user_turn(tmp_path) -> None:
    png = tmp_path / "dot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")

    @lp.function
    def look(s):
        s += lp.user("What is this?" + lp.image(str(png)) + lp.image(png.read_bytes()) + "Say.")
        s += lp.assistant(lp.gen("a"))

    backend = ScriptedBackend()
    state = look.run(backend=backend)
    assert state.error() is None
    assert len(backend.requests[0].images) == 2
    content = state.messages()[0]["content"]
    assert [p["type"] for p in content] == ["text", "image", "image", "text"]
    assert "<image><image>" in state.text()


def test_misuse_gives_clear_errors() -> None:
    with pytest.raises(TypeError, match="cannot append"):
        lp.gen("a") + 5  # type: ignore[operator]
    with pytest.raises(lp.ConstraintError, match="at most one"):
        lp.gen("a", regex="a", type=int)
    with pytest.raises(lp.ConstraintError, match="empty"):
        lp.select("a", [])

    @lp.function
    def image_outside_user(s):
        s += lp.image(b"\x89PNG....")

    assert "user turn" in str(image_outside_user.run(backend=ScriptedBackend()).error())


def test_ctrl_c_in_run_batch_cancels_and_keeps_finished_results() -> None:
    @lp.function
    def slow(s, i):
        s += str(i) + lp.gen("x")

    backend = ScriptedBackend(lambda r: "done", delay=0.3)
    timer = threading.Timer(1.0, _thread.interrupt_main)  # >= 1 round of 4 on a loaded machine
    timer.start()
    started = time.perf_counter()
    with pytest.raises(lp.BatchInterrupted) as info:
        slow.run_batch([(i,) for i in range(40)], backend=backend, max_concurrency=4)
    assert time.perf_counter() - started < 3.0  # all 40 would take 10 x 0.3 s
    finished = [s for s in info.value.states if s is not None and s.error() is None]
    assert 4 <= len(finished) < 40
    assert all(s["x"] == "done" for s in finished)


def test_chat_template_runs_sandboxed() -> None:
    evil = lp.ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(lp.TemplateError, match="unsafe"):
        evil.render([{"role": "user", "content": "x"}])


def test_tools_constrain_the_call_and_run_the_callable() -> None:
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    async def shout(text: str) -> str:
        return text.upper()

    @lp.function
    def agent(s):
        s += "call:" + lp.gen("call", tools=[add, shout])
        s += "\nresult: " + str(s["call"].result)

    backend = ScriptedBackend(lambda r: '{"name": "add", "arguments": {"a": 2, "b": 3}}')
    state = agent.run(backend=backend)
    assert state["call"] == lp.ToolCall("add", {"a": 2, "b": 3}, 5)
    assert state.text().endswith("\nresult: 5")
    schema = backend.requests[0].constraint.schema
    assert [c["properties"]["name"]["const"] for c in schema["anyOf"]] == ["add", "shout"]

    bad = ScriptedBackend(lambda r: '{"name": "add", "arguments": {"a": "x"}}')
    assert isinstance(agent.run(backend=bad).error().cause, lp.ConstraintError)


def test_a_long_shared_prefix_is_warmed_once_before_the_branches() -> None:
    long_prefix = "context " * 200

    @lp.function
    def branches(s, prefix, n):
        s += prefix
        forks = s.fork(n)
        forks += lambda i: f"{i}:" + lp.gen("x")
        forks.join()

    backend = ScriptedBackend(lambda r: "ok")
    branches.run(long_prefix, 4, backend=backend)
    assert backend.warmed == [long_prefix]
    assert len(backend.requests) == 4
    for prefix, n in ((long_prefix, 1), ("short", 4)):  # one branch, or a short prefix: no
        backend = ScriptedBackend(lambda r: "ok")
        branches.run(prefix, n, backend=backend)
        assert backend.warmed == []


def test_image_urls_are_downloaded_when_their_turn_runs() -> None:
    import http.server

    png = b"\x89PNG\r\n\x1a\nfrom-a-url"

    class Serve(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "image/png")
            self.send_header("content-length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cat.png"

    @lp.function
    def look(s, where):
        s += lp.user("What is this?" + lp.image(where)) + lp.assistant(lp.gen("a"))

    try:
        backend = ScriptedBackend()
        assert look.run(url, backend=backend).error() is None
        image = backend.requests[0].images[0]
        assert (image.data, image.mime_type) == (png, "image/png")
        missing = look.run("http://127.0.0.1:9/none.png", backend=ScriptedBackend()).error()
        assert "could not download the image" in str(missing)
        assert "image('http://127.0.0.1:9/none.png')" in str(missing)
    finally:
        server.shutdown()


def test_sglang_spellings_role_methods_with_an_argument_and_per_branch_lists() -> None:
    import lmprog as lp
    from lmprog.testing import ScriptedBackend

    @lp.function
    def prog(s):
        s.system("Be brief.")
        s.user("Name two colours.")
        forks = s.fork(2)
        forks += [lp.assistant("red"), lp.assistant("blue")]
        forks[1] += lp.user("Sure?")  # SGLang's per-branch idiom (needs ForkGroup.__setitem__)
        forks.join()
        s += lp.user("Pick:") + lp.assistant(
            lp.gen("pick", choices=["a", "b"], choices_method=lp.greedy_token_selection)
        )

    state = prog.run(backend=ScriptedBackend())
    assert state.error() is None, state.error()
    assert [m["role"] for m in state.messages()][:2] == ["system", "user"]
    assert state["pick"] in ("a", "b")
    assert state.get_meta_info("pick")["choices_method"] == "greedy_token_selection"

    @lp.function
    def mismatched(s):
        forks = s.fork(2)
        forks += ["a", "b", "c"]

    error = mismatched.run(backend=ScriptedBackend()).error()
    assert isinstance(error, ValueError) and "3 values for 2 branches" in str(error)
