"""An MCP server for lmprog's tests, on the SDK's own server side (MCPServer).

`python tools_server.py` serves over stdio; `python tools_server.py http PORT` over streamable
HTTP at http://127.0.0.1:PORT/mcp. Its tools cover what a client must handle: a plain result,
structured content, a tool that raises, one that outlasts a timeout, one whose process dies.
"""

from __future__ import annotations

import asyncio
import os
import sys

import pydantic
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("lmprog-test-tools")


class Weather(pydantic.BaseModel):
    city: str
    temperature_c: int
    sky: str


WEATHER = {"Paris": (18, "cloudy"), "Madrid": (27, "sunny"), "Oslo": (4, "snow")}


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def lookup(city: str) -> Weather:
    """The weather in a city."""
    temperature, sky = WEATHER.get(city, (15, "clear"))
    return Weather(city=city, temperature_c=temperature, sky=sky)


@server.tool()
def fail(reason: str) -> str:
    """Always fails, with a message the client is meant to see."""
    raise ToolError(f"fail was asked to fail: {reason}")


@server.tool()
async def slow(seconds: float) -> str:
    """Sleeps, then answers."""
    await asyncio.sleep(seconds)
    return "done"


@server.tool()
def crash() -> str:
    """Ends the server's process at once, as a crash would."""
    sys.stderr.write("tools_server: crashing on purpose\n")
    sys.stderr.flush()
    os._exit(3)


@server.tool()
def token_length() -> int:
    """The length of the API_TOKEN the server was given (never the token itself)."""
    return len(os.environ.get("API_TOKEN", ""))


if __name__ == "__main__":
    if os.environ.get("PID_LOG"):  # tests count the server processes a client started
        with open(os.environ["PID_LOG"], "a") as log:
            log.write(f"{os.getpid()}\n")
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
