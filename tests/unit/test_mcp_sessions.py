"""lp.mcp_tools against a real MCP server (tests/mcp_servers/tools_server.py, the SDK's own
server side, started over stdio by the client), with the model replaced by lmprog's scripted
test double: sessions per run, batch and `with` block, errors, timeouts, cancellation and
secrets. tests/integration/test_mcp.py proves the same tools on real models."""

from __future__ import annotations

import _thread
import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import lmprog as lp
from lmprog.backends.base import GenerateRequest
from lmprog.mcp.endpoint import Endpoint
from lmprog.testing import ScriptedBackend

SERVER = Path(__file__).parents[1] / "mcp_servers" / "tools_server.py"
SECRET = "tok-9f8e7d6c5b4a"

pytestmark = pytest.mark.timeout(120)


def call(name: str, **arguments: Any) -> str:
    return json.dumps({"name": name, "arguments": arguments})


def answering(*calls: str) -> ScriptedBackend:
    """A test double that answers each gen with the next of `calls`, whatever the prompt."""
    queue = iter(calls)
    return ScriptedBackend(lambda request: next(queue))


def by_prompt(answer: Callable[[str], str]) -> ScriptedBackend:
    return ScriptedBackend(lambda request: answer(request_text(request)))


def request_text(request: GenerateRequest) -> str:
    return request.prompt if isinstance(request.prompt, str) else json.dumps(request.prompt)


@pytest.fixture
def pid_log(tmp_path: Path) -> Path:
    return tmp_path / "pids.txt"


@pytest.fixture
def tools(pid_log: Path) -> Iterator[lp.MCPTools]:
    server = lp.mcp_tools(
        command=[sys.executable, str(SERVER)],
        env={"PID_LOG": str(pid_log), "API_TOKEN": SECRET},
        timeout=10,
    )
    yield server
    assert_all_exited(pid_log)


def started(pid_log: Path) -> list[int]:
    return [int(line) for line in pid_log.read_text().split()] if pid_log.exists() else []


def assert_all_exited(pid_log: Path, within: float = 10.0) -> None:
    """Every server process the client started has exited (none left behind)."""
    deadline = time.monotonic() + within
    alive = started(pid_log)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        time.sleep(0.05)
    assert alive == [], f"MCP server processes left behind: {alive}"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def plus(x: int, y: int) -> int:
    """A Python tool beside the server's."""
    return x + y


# ----- the tools, and a run that uses them ------------------------------------------------


def test_the_tools_are_listed_once_with_their_closed_schemas(
    tools: lp.MCPTools, pid_log: Path
) -> None:
    assert tools.names == ["add", "lookup", "fail", "slow", "crash", "token_length"]
    spec = tools["add"]
    assert spec.description == "Add two integers."
    assert spec.parameters["properties"] == {
        "a": {"title": "A", "type": "integer"},
        "b": {"title": "B", "type": "integer"},
    }
    assert spec.parameters["required"] == ["a", "b"]
    assert spec.parameters["additionalProperties"] is False
    assert len(tools) == 6 and [s.name for s in tools] == tools.names  # listed once, kept
    assert len(started(pid_log)) == 1  # outside any run: one session to list, then closed
    with pytest.raises(KeyError, match="no tool 'nope'"):
        tools["nope"]


def test_a_run_calls_server_tools_beside_python_callables(
    tools: lp.MCPTools, pid_log: Path
) -> None:
    backend = answering(
        call("add", a=2, b=3), call("plus", x=4, y=5), call("lookup", city="Madrid"), "warm"
    )

    @lp.function
    def agent(s):
        s += "call:" + lp.gen("first", tools=[tools, plus])
        s += f"\nresult: {s['first'].result}\ncall:" + lp.gen("second", tools=[*tools, plus])
        s += f"\nresult: {s['second'].result}\ncall:" + lp.gen("third", tools=tools)
        s += f"\nresult: {s['third'].structured}\nanswer:" + lp.gen("answer")

    state = agent.run(backend=backend)
    assert state.error() is None
    first, second, third = state["first"], state["second"], state["third"]
    assert (first.name, first.arguments, first.result) == ("add", {"a": 2, "b": 3}, "5")
    assert first.structured == {"result": 5}
    assert first.content == ({"type": "text", "text": "5"},)
    assert (second.name, second.result, second.structured) == ("plus", 9, None)  # Python's
    assert third.structured == {"city": "Madrid", "temperature_c": 27, "sky": "sunny"}
    assert json.loads(third.result) == third.structured
    assert "result: 5\ncall:" in state.text()
    # the gen that followed saw the results appended before it
    assert "'temperature_c': 27" in request_text(backend.requests[-1])
    # the call was generated under a schema admitting only the listed tools' arguments
    schema = backend.requests[0].constraint.schema
    assert {c["properties"]["name"]["const"] for c in schema["anyOf"]} == {
        *tools.names,
        "plus",
    }
    assert len(started(pid_log)) == 1  # one session for the run: listing and calls
    assert_all_exited(pid_log)  # closed when the run ended


def test_a_batch_shares_one_session_and_a_with_block_one_for_all_its_runs(
    tools: lp.MCPTools, pid_log: Path
) -> None:
    backend = by_prompt(lambda prompt: call("add", a=len(prompt), b=1))

    @lp.function
    def agent(s, word):
        s += f"{word}:" + lp.gen("call", tools=tools)

    states = agent.run_batch([(w,) for w in ["a", "bb", "ccc", "dddd"]], backend=backend)
    assert [int(s["call"].result) for s in states] == [
        s["call"].arguments["a"] + 1 for s in states
    ]
    assert len(started(pid_log)) == 1
    assert_all_exited(pid_log)

    with tools:
        assert len(started(pid_log)) == 2  # entering connects and lists
        one = agent.run("x", backend=backend)
        other = agent.run_batch([("y",), ("z",)], backend=backend)
        assert not any(_alive(pid) for pid in started(pid_log)[:1])
        assert _alive(started(pid_log)[1])  # still open between runs
    assert one["call"].result == "3" and all(s.error() is None for s in other)
    assert len(started(pid_log)) == 2
    assert_all_exited(pid_log)


def test_async_with_and_arun(tools: lp.MCPTools, pid_log: Path) -> None:
    @lp.function
    async def agent(s):
        s += "call:" + lp.gen("call", tools=tools)

    async def main() -> list[str]:
        async with tools:
            first = await agent.arun(backend=answering(call("add", a=1, b=1)))
            second = await agent.arun(backend=answering(call("add", a=2, b=2)))
        return [first["call"].result, second["call"].result]

    assert asyncio.run(main()) == ["2", "4"]
    assert len(started(pid_log)) == 1


# ----- failures: each names the server and the tool, and loses no finished result --------


def test_a_tool_error_names_the_server_and_the_tool(tools: lp.MCPTools) -> None:
    @lp.function
    def agent(s, name):
        s += f"{name} call:" + lp.gen("call", tools=tools)

    backend = by_prompt(
        lambda prompt: call("fail", reason=f"bad {SECRET}")
        if "bad" in prompt
        else call("add", a=1, b=2)
    )
    states = agent.run_batch([("good",), ("bad",), ("fine",)], backend=backend)
    good, bad, fine = states
    assert good["call"].result == "3" and fine["call"].result == "3"
    error = bad.error()
    assert isinstance(error, lp.ProgramError) and isinstance(error.cause, lp.ToolError)
    assert not isinstance(error.cause, (lp.MCPServerError, lp.ToolTimeoutError))
    assert (error.cause.tool, error.cause.server) == ("fail", tools.endpoint.label)
    message = str(error)
    assert "program 'agent' failed at gen('call')" in message
    assert f"MCP server {tools.endpoint.label}: tool 'fail' failed" in message
    assert "fail was asked to fail: bad ***" in message  # the server's own words, redacted
    assert SECRET not in message


def test_a_slow_tool_past_its_timeout(pid_log: Path) -> None:
    tools = lp.mcp_tools(
        command=[sys.executable, str(SERVER)], env={"PID_LOG": str(pid_log)}, timeout=1
    )

    @lp.function
    def agent(s, seconds):
        s += f"wait:{seconds} call:" + lp.gen("call", tools=tools)

    backend = by_prompt(lambda prompt: call("slow", seconds=0 if ":0 " in prompt else 30))
    started_at = time.perf_counter()
    quick, slow = agent.run_batch([(0,), (30,)], backend=backend)
    elapsed = time.perf_counter() - started_at
    assert quick["call"].result == "done"
    cause = slow.error().cause
    assert isinstance(cause, lp.ToolTimeoutError) and cause.tool == "slow"
    assert "tool 'slow' did not answer within 1 s (timeout=)" in str(cause)
    assert elapsed < 15
    assert_all_exited(pid_log)


def test_a_server_that_dies_mid_run(tools: lp.MCPTools, pid_log: Path) -> None:
    @lp.function
    def agent(s, name):
        s += f"{name} call:" + lp.gen("call", tools=tools)

    backend = by_prompt(
        lambda prompt: call("crash") if "crash" in prompt else call("add", a=1, b=1)
    )
    first, crashed, after = agent.run_batch(
        [("add",), ("crash",), ("add",)], backend=backend, max_concurrency=1
    )
    assert first["call"].result == "2"  # finished before the crash: kept
    cause = crashed.error().cause
    assert isinstance(cause, lp.MCPServerError) and cause.tool == "crash"
    assert "closed the connection during tool 'crash'" in str(cause)
    assert "tools_server: crashing on purpose" in str(cause)  # the tail of its stderr
    # the batch's session is gone: later calls fail at once, naming the server
    assert isinstance(after.error().cause, lp.MCPServerError)
    assert_all_exited(pid_log)


def test_a_server_that_cannot_start(tmp_path: Path) -> None:
    broken = tmp_path / "broken_server.py"
    broken.write_text(f"import sys\nsys.stderr.write('no luck: {SECRET}\\n')\nsys.exit(2)\n")
    tools = lp.mcp_tools(
        command=[sys.executable, str(broken)], env={"API_TOKEN": SECRET}, timeout=10
    )

    @lp.function
    def agent(s):
        s += "call:" + lp.gen("call", tools=tools)

    state = agent.run(backend=answering(call("add", a=1, b=1)))
    cause = state.error().cause
    assert isinstance(cause, lp.MCPServerError) and cause.tool is None
    assert f"MCP server {tools.endpoint.label}: could not connect" in str(cause)
    assert "no luck: ***" in str(cause) and SECRET not in str(cause)
    missing = lp.mcp_tools(command=[str(tmp_path / "no-such-server")], timeout=10)
    with pytest.raises(lp.MCPServerError, match="could not connect: FileNotFoundError"):
        missing.tool_specs()


def test_a_cancelled_batch_closes_its_sessions(tools: lp.MCPTools, pid_log: Path) -> None:
    @lp.function
    def agent(s, seconds):
        s += f"wait:{seconds} call:" + lp.gen("call", tools=tools)

    backend = by_prompt(lambda prompt: call("slow", seconds=0 if ":0 " in prompt else 60))
    batch = [(0,), (60,), (60,)]

    async def cancel_midway() -> None:
        task = asyncio.ensure_future(agent.arun_batch(batch, backend=backend))
        while len(started(pid_log)) < 1:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    assert_all_exited(pid_log)


def test_ctrl_c_during_run_batch_keeps_finished_results(
    tools: lp.MCPTools, pid_log: Path
) -> None:
    backend = by_prompt(lambda prompt: call("slow", seconds=0 if ":0" in prompt else 60))

    @lp.function
    def timed(s, seconds):
        s += f"wait:{seconds}" + lp.gen("call", tools=tools)

    def interrupt_once_a_call_finished() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(started(pid_log)) < 1:
            time.sleep(0.05)
        time.sleep(2.0)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_once_a_call_finished, daemon=True).start()
    with pytest.raises(lp.BatchInterrupted) as info:
        timed.run_batch([(0,), (60,), (60,)], backend=backend, max_concurrency=3)
    kept = [s for s in info.value.states if s is not None and s.error() is None]
    assert [s["call"].result for s in kept] == ["done"]
    assert_all_exited(pid_log)


# ----- secrets, arguments, the extra ------------------------------------------------------


def test_secrets_stay_out_of_reprs_and_messages(tools: lp.MCPTools) -> None:
    assert SECRET not in repr(tools) and "'API_TOKEN': '***'" in repr(tools)
    assert tools.endpoint.redact(f"x {SECRET} y") == "x *** y"
    web = lp.mcp_tools(
        url="http://user:pw@127.0.0.1:9/mcp?key=abc123",
        headers={"Authorization": f"Bearer {SECRET}"},
        timeout=5,
    )
    assert repr(web) == (
        "lp.mcp_tools(url='http://127.0.0.1:9/mcp?key=***', headers={'Authorization': '***'})"
    )
    with pytest.raises(lp.MCPServerError) as info:  # nothing listens on port 9
        web.tool_specs()
    assert "MCP server http://127.0.0.1:9/mcp?key=***: could not connect" in str(info.value)
    assert SECRET not in str(info.value) and "pw@" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None

    @lp.function
    def agent(s):
        s += "call:" + lp.gen("call", tools=tools)

    state = agent.run(backend=answering(call("token_length")))
    assert state["call"].result == str(len(SECRET))  # the server got the secret in its env
    assert SECRET not in state.text()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of command"),
        ({"command": ["x"], "url": "http://h/mcp"}, "exactly one of command"),
        ({"command": "python server.py"}, "list of strings"),
        ({"command": []}, "list of strings"),
        ({"url": "ftp://h/mcp"}, "must be an http"),
        ({"url": "http://h/mcp", "env": {"A": "b"}}, "go with command="),
        ({"command": ["x"], "headers": {"A": "b"}}, "goes with url="),
        ({"command": ["x"], "timeout": 0}, "timeout=.... must be a positive number"),
        ({"command": ["x"], "connect_timeout": -1}, "connect_timeout=.... must be a positive"),
    ],
)
def test_bad_arguments_are_refused_at_once(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lp.mcp_tools(**kwargs)


def test_endpoint_redacts_long_values_and_each_word_of_a_header() -> None:
    endpoint = Endpoint.of(None, None, None, "https://h/mcp", {"Authorization": "Bearer abcdef"})
    assert endpoint.redact("sent Bearer abcdef, then abcdef") == "sent ***, then ***"
    short = Endpoint.of(["srv"], {"DEBUG": "1"}, None, None, None)
    assert short.redact("run 1") == "run 1"  # a one-character value is not a secret to hunt


def test_import_lmprog_does_not_import_the_sdk() -> None:
    code = "import sys, lmprog; assert not {'mcp', 'lmprog.mcp.session'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_without_the_extra_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mcp", None)  # as if the SDK were not installed
    monkeypatch.delitem(sys.modules, "lmprog.mcp.session", raising=False)
    with pytest.raises(lp.MCPNotInstalledError, match=r"pip install 'lmprog\[mcp\]'"):
        lp.mcp_tools(command=["server"])
