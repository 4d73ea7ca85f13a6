"""One open connection to an MCP server, through the official SDK (the only module that
imports it, so `import lmprog` never needs the `mcp` extra).

The SDK's client lives in anyio task groups, which must be entered and left by the same task:
a session is owned by a task of its own (`_serve`) that connects, then waits to be closed,
while programs' tasks send their calls through it. Every call races the owner: when the server
dies, the owner ends and every call in flight fails at once with the server named, rather than
waiting for its timeout. A stdio server's stderr goes to a temporary file, never the terminal;
its tail is quoted when the server dies.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TextIO, TypeVar

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT, ListToolsResult, TextContent, Tool

from lmprog.errors import MCPServerError, ToolError, ToolTimeoutError
from lmprog.mcp.endpoint import Endpoint
from lmprog.tools import ToolCall

T = TypeVar("T")

# The SDK reports transport trouble through logging; without a handler of the user's own,
# Python would print it on stderr. lmprog raises these as errors instead.
logging.getLogger("mcp").addHandler(logging.NullHandler())

STDERR_TAIL_CHARS = 1500
HTTP_READ_TIMEOUT = 300.0  # the SDK's: a server may hold an event stream open between calls
MAX_LIST_PAGES = 100  # a server whose tool list never ends cannot hang the listing


class Session:
    """An open session with one MCP server; close it with `aclose()`."""

    def __init__(self, endpoint: Endpoint, timeout: float, connect_timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._stderr: TextIO | None = (
            # closed by aclose(): the tail is read after the server dies
            tempfile.TemporaryFile("a+", encoding="utf-8", errors="replace")  # noqa: SIM115
            if endpoint.url is None
            else None
        )
        self._client: Client | None = None
        self._scope: anyio.CancelScope | None = None
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._owner: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._closing = False

    @classmethod
    async def open(cls, endpoint: Endpoint, timeout: float, connect_timeout: float) -> Session:
        """Start the server (stdio) or connect to it (HTTP) and complete MCP's handshake,
        within `connect_timeout` seconds; an error names the server. Cancelled, it closes
        again. Each request after that has `timeout` seconds."""
        session = cls(endpoint, timeout, connect_timeout)
        session._owner = asyncio.get_running_loop().create_task(session._serve())
        try:
            await asyncio.shield(session._ready)
        except BaseException:
            await asyncio.shield(session.aclose())
            raise
        return session

    async def list_tools(self) -> list[Tool]:
        tools: list[Tool] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = await self._request(None, functools.partial(_list_page, cursor=cursor))
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolCall:
        """Call tool `name`; an error result (`isError`) raises ToolError with its text."""
        result = await self._request(name, lambda client: client.call_tool(name, arguments))
        text = "\n".join(block.text for block in result.content if isinstance(block, TextContent))
        if result.is_error:
            raise ToolError(
                self._say(f"tool {name!r} failed: {text or '(the server gave no message)'}"),
                self.endpoint.label,
                name,
            )
        blocks = tuple(
            block.model_dump(mode="json", by_alias=True, exclude_none=True)
            for block in result.content
        )
        return ToolCall(name, arguments, text, structured=result.structured_content, content=blocks)

    async def aclose(self) -> None:
        """End the session: a stdio server's stdin is closed, then it is stopped if it lingers
        (the SDK's shutdown, shielded from cancellation); an HTTP session is ended."""
        self._closing = True
        if self._scope is not None:
            self._scope.cancel()
        elif self._owner is not None:
            self._owner.cancel()  # it has not started: nothing to shut down
        if self._owner is not None:
            await asyncio.wait({self._owner})
        if not self._ready.done():
            self._ready.cancel()
        if self._stderr is not None:
            self._stderr.close()

    # ----- the owner task ---------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                scope.deadline = anyio.current_time() + self.connect_timeout
                async with AsyncExitStack() as stack:
                    transport = await self._transport(stack)
                    client = Client(transport, read_timeout_seconds=self.timeout)
                    self._client = await stack.enter_async_context(client)
                    scope.deadline = math.inf
                    self._ready.set_result(None)
                    await anyio.sleep_forever()
            if not self._ready.done() and not self._closing:
                self._fail_opening(
                    MCPServerError(
                        self._say(
                            f"did not connect within {self.connect_timeout:g} s "
                            "(connect_timeout=)"
                        ),
                        self.endpoint.label,
                    )
                )
        except Exception as exc:  # the transport failed: the server could not start, or died
            self._failure = exc
            if not self._ready.done():
                self._fail_opening(
                    MCPServerError(
                        self._say(f"could not connect: {_summary(exc)}{self._stderr_tail()}"),
                        self.endpoint.label,
                    )
                )

    def _fail_opening(self, error: MCPServerError) -> None:
        self._ready.set_exception(error)
        self._ready.exception()  # read here too, so asyncio never reports it as unretrieved

    async def _transport(self, stack: AsyncExitStack) -> Any:
        endpoint = self.endpoint
        if endpoint.url is not None:
            http = httpx2.AsyncClient(
                headers=dict(endpoint.headers),
                timeout=httpx2.Timeout(
                    self.timeout,
                    connect=self.connect_timeout,
                    read=max(self.timeout, HTTP_READ_TIMEOUT),
                ),
            )
            await stack.enter_async_context(http)
            return streamable_http_client(endpoint.url, http_client=http)
        assert self._stderr is not None
        parameters = StdioServerParameters(
            command=endpoint.command[0],
            args=list(endpoint.command[1:]),
            env=dict(endpoint.env) or None,
            cwd=endpoint.cwd,
        )
        return stdio_client(parameters, errlog=self._stderr)

    # ----- requests -----------------------------------------------------------------------

    async def _request(self, tool: str | None, send: Callable[[Client], Awaitable[T]]) -> T:
        """`send` through the session, failing at once if the server dies meanwhile."""
        assert self._client is not None and self._owner is not None
        if self._owner.done():
            raise self._died(tool)
        request = asyncio.ensure_future(send(self._client))
        request.add_done_callback(_retrieve)
        try:
            await asyncio.wait({request, self._owner}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            request.cancel()  # the SDK tells the server the request was cancelled
            raise
        if not request.done() or request.cancelled():
            request.cancel()
            raise self._died(tool)
        exc = request.exception()
        if exc is None:
            return request.result()
        what = f"tool {tool!r}" if tool else "listing tools"
        if isinstance(exc, MCPError) and exc.code == REQUEST_TIMEOUT:
            raise ToolTimeoutError(
                self._say(f"{what} did not answer within {self.timeout:g} s (timeout=)"),
                self.endpoint.label,
                tool,
            )
        if isinstance(exc, MCPError) and exc.code == CONNECTION_CLOSED:
            raise self._died(tool)
        if isinstance(exc, MCPError):
            raise ToolError(
                self._say(f"{what} was refused: {exc.error.message}"), self.endpoint.label, tool
            )
        raise MCPServerError(
            self._say(f"{what} failed: {_summary(exc)}"), self.endpoint.label, tool
        )

    def _died(self, tool: str | None) -> MCPServerError:
        during = f" during tool {tool!r}" if tool else ""
        cause = f": {_summary(self._failure)}" if self._failure is not None else ""
        return MCPServerError(
            self._say(f"closed the connection{during} (it exited or crashed){cause}")
            + self.endpoint.redact(self._stderr_tail()),
            self.endpoint.label,
            tool,
        )

    def _say(self, text: str) -> str:
        """A message about this server, naming it, with its secrets hidden."""
        return self.endpoint.redact(f"MCP server {self.endpoint.label}: {text}")

    def _stderr_tail(self) -> str:
        if self._stderr is None or self._stderr.closed:
            return ""
        self._stderr.seek(0)
        tail = self._stderr.read()[-STDERR_TAIL_CHARS:].strip()
        return f"\nthe end of its stderr:\n{tail}" if tail else ""


def _summary(exc: BaseException) -> str:
    """The first real error inside `exc` (anyio wraps a transport's in exception groups)."""
    while inner := getattr(exc, "exceptions", None):  # an exception group (3.10: backport)
        exc = inner[0]
    return f"{type(exc).__name__}: {exc}"


async def _list_page(client: Client, cursor: str | None) -> ListToolsResult:
    return await client.list_tools(cursor=cursor)


def _retrieve(request: asyncio.Future[Any]) -> None:
    """Read a request's outcome, so one nobody waits for any more is never logged."""
    if not request.cancelled():
        request.exception()
