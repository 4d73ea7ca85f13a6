"""lp.mcp_tools on real models: Gemma 3 270M on llama-server and on lp.Local call the tools of
a real MCP server (tests/mcp_servers/tools_server.py, the SDK's server side) over stdio and
over streamable HTTP, with arguments generated under each tool's input schema, get the results,
append them and go on generating. Also: an HTTP server killed mid-call."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import lmprog as lp
from lmprog.testing import ScriptedBackend

SERVER = Path(__file__).parents[1] / "mcp_servers" / "tools_server.py"
SECRET = "hdr-5e4d3c2b1a09"
sys.path.insert(0, str(SERVER.parent))
from tools_server import WEATHER  # noqa: E402  (the server's own table: the expected answers)

pytestmark = [pytest.mark.engine, pytest.mark.gemma, pytest.mark.timeout(600)]

QUESTIONS = ["What is 17 plus 25?", "What is the weather in Oslo?", "How warm is it in Madrid?"]


@pytest.fixture(params=["llamacpp", "local"])
def model(request: pytest.FixtureRequest) -> lp.Backend:
    backend: lp.Backend = request.getfixturevalue(
        "gemma" if request.param == "llamacpp" else "gemma_local"
    )
    return backend


def start_http_server() -> tuple[subprocess.Popen[bytes], str]:
    """The test server over streamable HTTP on a free port; its URL once it accepts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, str(SERVER), "http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"http://127.0.0.1:{port}/mcp"
        except OSError:
            assert process.poll() is None, "the MCP test server exited at start"
            time.sleep(0.1)
    process.kill()
    raise AssertionError("the MCP test server did not listen within 60 s")


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    process, url = start_http_server()
    yield url
    process.kill()
    process.wait(timeout=10)


def agent_for(tools: lp.MCPTools) -> lp.Program:
    chosen = [tools["add"], tools["lookup"]]
    menu = "".join(f"- {spec.name}: {spec.description}\n" for spec in chosen)

    @lp.function(temperature=0)
    def agent(s, question):
        s += f"You can call these tools:\n{menu}\nQuestion: {question}\nTool call: "
        s += lp.gen("call", tools=chosen, max_tokens=64)
        s += f"\nTool result: {s['call'].result}\nAnswer in one sentence:"
        s += lp.gen("answer", max_tokens=24, stop="\n")

    return agent


def check_calls(tools: lp.MCPTools, states: list[lp.ProgramState]) -> list[str]:
    """Each call is valid under its tool's input schema and holds the server's true result;
    the result was appended and the model went on. Returns what was called, for the record."""
    called = []
    for state in states:
        assert state.error() is None, state.error()
        tool_call = state["call"]
        jsonschema.validate(tool_call.arguments, tools[tool_call.name].parameters)
        arguments: dict[str, Any] = tool_call.arguments
        if tool_call.name == "add":
            expected: Any = {"result": arguments["a"] + arguments["b"]}
            assert tool_call.result == str(arguments["a"] + arguments["b"])
        else:
            temperature, sky = WEATHER.get(arguments["city"], (15, "clear"))
            expected = {"city": arguments["city"], "temperature_c": temperature, "sky": sky}
            assert json.loads(tool_call.result) == expected
        assert tool_call.structured == expected
        assert f"Tool result: {tool_call.result}\nAnswer in one sentence:" in state.text()
        assert state["answer"].strip(), state.text()
        called.append(f"{tool_call.name}({json.dumps(arguments)})")
    return called


def test_a_model_calls_stdio_tools_and_goes_on(model: lp.Backend) -> None:
    tools = lp.mcp_tools(command=[sys.executable, str(SERVER)])
    agent = agent_for(tools)
    states = agent.run_batch([(q,) for q in QUESTIONS], backend=model)
    print(check_calls(tools, states))
    single = agent.run("What is 2 plus 2?", backend=model)
    print(check_calls(tools, [single]))


def test_a_model_calls_http_tools_and_goes_on(model: lp.Backend, http_url: str) -> None:
    tools = lp.mcp_tools(url=http_url, headers={"Authorization": f"Bearer {SECRET}"})
    agent = agent_for(tools)
    with tools:  # one session for both runs
        states = agent.run_batch([(q,) for q in QUESTIONS[:2]], backend=model)
        states.append(agent.run(QUESTIONS[2], backend=model))
    print(check_calls(tools, states))


def test_an_http_server_killed_mid_call_fails_that_call_at_once() -> None:
    """The model is lmprog's scripted test double here: the server's death is the subject."""
    process, url = start_http_server()
    try:
        tools = lp.mcp_tools(url=url, headers={"Authorization": f"Bearer {SECRET}"})

        @lp.function
        def agent(s, seconds):
            s += f"wait:{seconds} call:" + lp.gen("call", tools=tools)

        def answer(request: Any) -> str:
            seconds = 0 if "wait:0 " in request.prompt else 60
            return json.dumps({"name": "slow", "arguments": {"seconds": seconds}})

        def kill_when_called(request: Any) -> None:
            if "wait:60" in request.prompt:
                time_to_kill.append(time.monotonic())
            return None

        time_to_kill: list[float] = []
        backend = ScriptedBackend(answer, fail=kill_when_called)
        with tools:
            quick = agent.run(0, backend=backend)
            future = agent.run(60, backend=backend, stream=True)
            while not time_to_kill:
                time.sleep(0.05)
            time.sleep(1.0)  # the slow call is in flight on the server
            process.kill()
            killed = time.monotonic()
            future.sync()
            failed_after = time.monotonic() - killed
    finally:
        process.kill()
        process.wait(timeout=10)
    assert quick["call"].result == "done"  # finished before: kept
    cause = future.error().cause
    assert isinstance(cause, lp.MCPServerError) and cause.tool == "slow"
    assert "closed the connection during tool 'slow'" in str(cause)
    assert SECRET not in str(cause)
    assert failed_after < 10  # at once, not after the 60 s call timeout
