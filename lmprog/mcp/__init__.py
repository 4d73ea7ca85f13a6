"""`lp.mcp_tools`: the tools of an MCP server, usable in `gen(tools=...)` beside Python callables.

    calc = lp.mcp_tools(command=["python", "calc_server.py"])    # stdio: lmprog starts it
    web = lp.mcp_tools(url="https://example.com/mcp", headers={"Authorization": "Bearer ..."})

    s += lp.gen("call", tools=[calc, my_python_function])
    s["call"].result, s["call"].structured                       # what the server answered

Creating one starts nothing. A program run opens one session per server the first time it
needs that server's tools (its gen(tools=...) lists them, a call runs one) and closes it when
the run ends; a batch shares one session among its programs; `with tools:` (or `async with`)
keeps one open for the whole block, shared by every run inside it. The tool list is read once,
on the first session, and kept. The MCP SDK is imported when a server is first used, so
`import lmprog` never needs the `mcp` extra.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from lmprog import loop
from lmprog.constraints import closed_schema
from lmprog.errors import MCPNotInstalledError
from lmprog.mcp import scope
from lmprog.mcp.endpoint import Endpoint
from lmprog.tools import ToolCall, ToolSpec

if TYPE_CHECKING:
    from lmprog.mcp.session import Session

T = TypeVar("T")

DEFAULT_TIMEOUT = 60.0  # one call
DEFAULT_CONNECT_TIMEOUT = 30.0  # starting a server (a Python one imports for seconds)


def mcp_tools(
    *,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    url: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> MCPTools:
    """The tools of the MCP server started with `command` (over stdio; `env` is added to a
    minimal environment, `cwd` is its working folder) or reached at `url` (streamable HTTP;
    `headers` go with every request). `timeout` seconds bound each call (and the listing),
    `connect_timeout` starting or reaching the server. The values of `env` and `headers` are
    kept out of every repr and error message."""
    endpoint = Endpoint.of(command, env, cwd, url, headers)
    for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
        if not value > 0:
            raise ValueError(f"lp.mcp_tools({name}=...) must be a positive number, got {value!r}")
    try:
        import lmprog.mcp.session  # noqa: F401  (the SDK: imported here, off lmprog's loop)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] in ("mcp", "mcp_types", "httpx2"):
            raise MCPNotInstalledError() from None
        raise
    return MCPTools(endpoint, float(timeout), float(connect_timeout))


class MCPTools:
    """The tools of one MCP server. Pass it to `gen(tools=...)` alone or in the list beside
    Python callables, or pick some by name (`tools["add"]`); iterating lists the tools."""

    def __init__(self, endpoint: Endpoint, timeout: float, connect_timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._specs: tuple[ToolSpec, ...] | None = None
        self._held: Session | None = None

    # ----- the tools, as gen(tools=...) takes them ------------------------------------------

    def tool_specs(self) -> tuple[ToolSpec, ...]:
        """The server's tools, listed on first use (connecting if need be) and kept."""
        if self._specs is None:
            self._specs = loop.wait(self.alist())
        return self._specs

    async def alist(self) -> tuple[ToolSpec, ...]:
        """`tool_specs()` for async code."""
        if self._specs is None:
            listed = await loop.await_on_loop(self._use(lambda session: session.list_tools()))
            self._specs = tuple(
                ToolSpec(
                    tool.name,
                    tool.description or "",
                    closed_schema(tool.input_schema),
                    call=functools.partial(self._call, tool.name),
                )
                for tool in listed
            )
        return self._specs

    @property
    def names(self) -> list[str]:
        """The server's tool names, in the order it lists them."""
        return [spec.name for spec in self.tool_specs()]

    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(self.tool_specs())

    def __len__(self) -> int:
        return len(self.tool_specs())

    def __getitem__(self, name: str) -> ToolSpec:
        for spec in self.tool_specs():
            if spec.name == name:
                return spec
        label = self.endpoint.label
        raise KeyError(f"MCP server {label} has no tool {name!r}; it has {self.names}")

    # ----- sessions -----------------------------------------------------------------------

    async def _call(self, name: str, arguments: dict[str, Any]) -> ToolCall:
        return await self._use(lambda session: session.call(name, arguments))

    async def _use(self, work: Callable[[Session], Awaitable[T]]) -> T:
        """Run `work` on the session of the `with` block, else of the current run or batch,
        else (outside any run: a listing from a script) on a session of its own."""
        if self._held is not None:
            return await work(self._held)
        current = scope.current()
        if current is not None:
            return await work(await current.session(self, self._open))
        session = await self._open()
        try:
            return await work(session)
        finally:
            await asyncio.shield(session.aclose())

    async def _open(self) -> Session:
        from lmprog.mcp.session import Session

        return await Session.open(self.endpoint, self.timeout, self.connect_timeout)

    async def _hold(self) -> MCPTools:
        if self._held is not None:
            raise RuntimeError(f"{self!r} is already open: its `with` blocks cannot nest")
        self._held = await self._open()
        try:
            await self.alist()
        except BaseException:
            await self._release()
            raise
        return self

    async def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            await asyncio.shield(held.aclose())

    def __enter__(self) -> MCPTools:
        """Open one session (and list the tools) for the whole block."""
        held: MCPTools = loop.wait(self._hold())
        return held

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        loop.wait(self._release())

    async def __aenter__(self) -> MCPTools:
        held: MCPTools = await loop.await_on_loop(self._hold())
        return held

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await loop.await_on_loop(self._release())

    def __repr__(self) -> str:
        return f"lp.mcp_tools({self.endpoint!r})"
