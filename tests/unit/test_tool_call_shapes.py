"""Tool calls' shapes without an engine: which path a gen takes, what goes on the wire for the
native path (a scripted OpenAI-compatible HTTP server answers), how the answer is checked, and
the messages a tool loop leaves. tests/integration/test_tool_calls.py runs them on llama-server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import lmprog as lp
from lmprog.backends.base import ToolCallParsing
from lmprog.backends.dialect import Dialect
from lmprog.backends.llamacpp import DIALECT as LLAMACPP
from lmprog.backends.vllm import DIALECT as VLLM
from lmprog.testing import ScriptedBackend
from lmprog.tool_messages import native_request, parse_native_call
from lmprog.tools import tool_specs


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


SPECS = tool_specs([add, shout])
NATIVE = Dialect(
    kind="scripted",
    label="a scripted server",
    chat_constraints=frozenset({"json_schema"}),
    self_hosted=True,
    native_tools=True,
)


def native_call(name: str, arguments: Any, call_id: str = "call_1") -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


class ScriptedServer:
    """/v1/chat/completions answering each request with the next scripted message."""

    def __init__(self, *messages: dict[str, Any]) -> None:
        self.messages = list(messages)
        self.bodies: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                fake.bodies.append(body)
                message = {"role": "assistant", "content": None, **fake.messages.pop(0)}
                answer = json.dumps(
                    {
                        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def backend(self, dialect: Dialect = NATIVE) -> lp.OpenAI:
        return lp.OpenAI("m", base_url=self.url, is_chat_model=True, server=dialect)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def scripted() -> Iterator[type[ScriptedServer]]:
    made: list[ScriptedServer] = []

    class Made(ScriptedServer):
        def __init__(self, *messages: dict[str, Any]) -> None:
            super().__init__(*messages)
            made.append(self)

    yield Made
    for server in made:
        server.close()


@lp.function
def agent(s, tool_choice="required"):
    s += lp.user("What is 2 + 3?")
    s += lp.assistant(lp.gen("call", tools=[add, shout], tool_choice=tool_choice))
    if isinstance(s["call"], lp.ToolCall):
        s += lp.tool_result(s["call"])
        s += lp.assistant(lp.gen("answer"))


# ----- the choice of path -------------------------------------------------------------------


def test_native_tools_are_declared_per_dialect_and_only_for_chat() -> None:
    assert NATIVE.capabilities(chat=True).native_tools
    assert not NATIVE.capabilities(chat=False).native_tools
    assert not Dialect(kind="generic", label="x").capabilities(chat=True).native_tools


def test_llama_server_parses_calls_only_where_its_template_renders_tools() -> None:
    class Props:
        name, model = "llama-server", "m"

        def __init__(self, caps: dict[str, bool]) -> None:
            self.caps = caps

        async def get(self, path: str) -> Any:
            assert path == "/props"
            return {"chat_template_caps": self.caps}

        async def post(self, path: str, body: dict[str, Any]) -> Any:
            raise AssertionError(path)

    import asyncio

    both = {"supports_tools": True, "supports_tool_calls": True}
    assert asyncio.run(LLAMACPP.tool_calls(Props(both))) == "yes"
    assert asyncio.run(LLAMACPP.tool_calls(Props({**both, "supports_tools": False}))) == "no"
    assert asyncio.run(LLAMACPP.tool_calls(Props({}))) == "no"
    assert asyncio.run(VLLM.tool_calls(Props({}))) == "if configured"  # its API does not say


def test_a_backend_without_native_calls_takes_the_constrained_path() -> None:
    backend = ScriptedBackend(lambda r: '{"name": "add", "arguments": {"a": 2, "b": 3}}')
    state = agent.run(backend=backend)
    assert state["call"] == lp.ToolCall("add", {"a": 2, "b": 3}, 5)
    assert state.get_meta_info("call")["constraint_path"] == "enforced by server"
    assert backend.requests[0].tools == ()  # the schema, not the tools, went out
    assert backend.requests[0].constraint is not None


def test_tool_path_native_is_refused_where_no_server_parses_calls() -> None:
    @lp.function
    def forced(s):
        s += lp.user("hi") + lp.assistant(lp.gen("call", tools=[add], tool_path="native"))

    error = forced.run(backend=ScriptedBackend()).error()
    assert isinstance(error, lp.ProgramError)
    assert isinstance(error.cause, lp.UnsupportedFeatureError)
    assert "gen('call')" in str(error) and 'tool_path="constrained"' in str(error)


def test_tool_arguments_are_checked_when_the_gen_is_written() -> None:
    with pytest.raises(lp.ConstraintError, match="tool_choice='mul' is none of"):
        lp.gen("call", tools=[add], tool_choice="mul")
    with pytest.raises(ValueError, match="need tools="):
        lp.gen("call", tool_choice="auto")
    with pytest.raises(ValueError, match="tool_path"):
        lp.gen("call", tools=[add], tool_path="json")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n=1"):
        lp.gen("call", tools=[add], tool_path="native", n=2)


# ----- tool_choice on the constrained path ----------------------------------------------------


def test_constrained_auto_admits_a_text_answer_and_named_admits_one_tool() -> None:
    backend = ScriptedBackend(lambda r: '{"answer": "five"}')
    state = agent.run("auto", backend=backend)
    assert state["call"] == "five"
    branches = backend.requests[0].constraint.schema["anyOf"]
    assert [b["properties"].get("name", {}).get("const") for b in branches] == [
        "add",
        "shout",
        None,
    ]

    named = ScriptedBackend(lambda r: '{"name": "shout", "arguments": {"text": "hi"}}')
    state = agent.run("shout", backend=named)
    assert state["call"].result == "HI"
    assert named.requests[0].constraint.schema["properties"]["name"] == {"const": "shout"}


def test_constrained_none_generates_free_text() -> None:
    backend = ScriptedBackend(lambda r: "no tool needed")
    state = agent.run("none", backend=backend)
    assert state["call"] == "no tool needed"
    assert backend.requests[0].constraint is None


def test_a_constrained_loop_leaves_openai_messages_and_renders_the_tool_turn() -> None:
    answers = iter(['{"name": "add", "arguments": {"a": 2, "b": 3}}', "It is 5."])
    state = agent.run(backend=ScriptedBackend(lambda r: next(answers)))
    call = state["call"]
    assert call.id and call.id.startswith("call_")
    assert state.messages() == [
        {"role": "user", "content": "What is 2 + 3?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "name": "add", "content": "5"},
        {"role": "assistant", "content": "It is 5."},
    ]
    # the text path lays the tool turn out with the chat template's own markers (ChatML here)
    assert "<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\nIt is 5." in state.text()


def test_tool_result_takes_only_a_call_and_never_sits_inside_a_turn() -> None:
    with pytest.raises(TypeError, match="ToolCall"):
        lp.tool_result({"name": "add"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no id"):
        lp.tool_result(lp.ToolCall("add", {}, 1))

    @lp.function
    def misplaced(s):
        s += lp.user_begin() + lp.tool_result(lp.ToolCall("add", {}, 1, "c1"))

    error = misplaced.run(backend=ScriptedBackend()).error()
    assert "tool_result('add')" in str(error) and "must follow the user turn" in str(error)


# ----- the native path's requests and answers -------------------------------------------------


def test_native_request_names_a_tool_by_sending_only_it() -> None:
    tools, choice = native_request(SPECS, "shout")
    assert [t["function"]["name"] for t in tools] == ["shout"] and choice == "required"
    tools, choice = native_request(SPECS, "auto")
    assert [t["function"]["name"] for t in tools] == ["add", "shout"] and choice == "auto"
    assert tools[0]["function"]["parameters"]["required"] == ["a", "b"]


def test_native_calls_are_checked_against_the_tool_schema() -> None:
    call, call_id = parse_native_call([native_call("add", {"a": 1, "b": 2})], SPECS, "required")
    assert (call, call_id) == ({"name": "add", "arguments": {"a": 1, "b": 2}}, "call_1")
    with pytest.raises(lp.ConstraintError, match="tool 'add' is invalid"):
        parse_native_call([native_call("add", {"a": "x", "b": 2})], SPECS, "required")
    with pytest.raises(lp.ConstraintError, match="not JSON"):
        parse_native_call([native_call("add", "{a: 1")], SPECS, "required")
    with pytest.raises(lp.ConstraintError, match="unknown tool 'mul'"):
        parse_native_call([native_call("mul", {"a": 1})], SPECS, "required")
    with pytest.raises(lp.ConstraintError, match="tool 'add' is invalid"):  # not the named one
        parse_native_call([native_call("add", {"a": 1, "b": 2})], SPECS, "shout")


def test_a_native_round_trip_sends_tools_then_the_tool_message(
    scripted: type[ScriptedServer],
) -> None:
    server = scripted(
        {"tool_calls": [native_call("add", {"a": 2, "b": 3}, "srv-7")]},
        {"content": "It is 5."},
    )
    state = agent.run(backend=server.backend())
    assert state["call"] == lp.ToolCall("add", {"a": 2, "b": 3}, 5)
    assert state["call"].id == "srv-7"
    assert state["answer"] == "It is 5."
    meta = state.get_meta_info("call")
    assert meta["constraint_path"] == "native tool call"
    first, second = server.bodies
    assert [t["function"]["name"] for t in first["tools"]] == ["add", "shout"]
    assert first["tool_choice"] == "required" and first["parallel_tool_calls"] is False
    assert "response_format" not in first  # the server, not a schema, shapes the call
    assert "tools" not in second
    assert second["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "srv-7",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                }
            ],
        },
        {"role": "tool", "content": "5", "tool_call_id": "srv-7"},
    ]
    assert '{"name": "add", "arguments": {"a": 2, "b": 3}}' in state.text()


def test_native_auto_may_answer_in_text(scripted: type[ScriptedServer]) -> None:
    server = scripted({"content": "Five."})
    state = agent.run("auto", backend=server.backend())
    assert state["call"] == "Five."
    assert server.bodies[0]["tool_choice"] == "auto"
    assert state.messages()[-1] == {"role": "assistant", "content": "Five."}


def test_native_required_refuses_a_text_answer_and_a_bad_call(
    scripted: type[ScriptedServer],
) -> None:
    server = scripted({"content": "Five."}, {"tool_calls": [native_call("add", {"a": "two"})]})
    text = agent.run(backend=server.backend()).error()
    assert isinstance(text.cause, lp.ConstraintError) and "answered in text" in str(text)
    bad = agent.run(backend=server.backend()).error()
    assert "gen('call')" in str(bad) and "tool 'add' is invalid" in str(bad)


class _ParserUnknown(Dialect):
    async def tool_calls(self, server: Any) -> ToolCallParsing:
        return "if configured"


def test_a_server_that_parses_calls_only_if_configured_needs_tool_path_native(
    scripted: type[ScriptedServer],
) -> None:
    maybe = _ParserUnknown(**{**NATIVE.__dict__, "kind": "maybe"})
    server = scripted(
        {"content": '{"name": "add", "arguments": {"a": 1, "b": 1}}'},
        {"tool_calls": [native_call("add", {"a": 1, "b": 1})]},
    )

    @lp.function
    def one(s, path=None):
        s += lp.user("1+1?") + lp.assistant(lp.gen("call", tools=[add], tool_path=path))

    by_default = one.run(backend=server.backend(maybe))
    assert by_default.get_meta_info("call")["constraint_path"] == "enforced by server"
    assert "tools" not in server.bodies[0]
    asked = one.run("native", backend=server.backend(maybe))
    assert asked.get_meta_info("call")["constraint_path"] == "native tool call"
    assert asked["call"].result == 2 and "tools" in server.bodies[1]


def test_tool_path_constrained_overrides_a_native_server(scripted: type[ScriptedServer]) -> None:
    server = scripted({"content": '{"name": "add", "arguments": {"a": 1, "b": 1}}'})

    @lp.function
    def constrained(s):
        s += lp.user("1+1?")
        s += lp.assistant(lp.gen("call", tools=[add], tool_path="constrained"))

    state = constrained.run(backend=server.backend())
    assert state["call"].result == 2
    assert "tools" not in server.bodies[0]
    assert server.bodies[0]["response_format"]["type"] == "json_schema"
