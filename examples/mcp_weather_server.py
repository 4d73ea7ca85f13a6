"""A small MCP server for examples/mcp_agent.py, on the official SDK's server side: the weather
in a few cities (structured output) and a unit conversion. lmprog starts it over stdio; run it
alone with `python examples/mcp_weather_server.py` to serve on stdin/stdout."""

from __future__ import annotations

from typing import Literal

import pydantic
from mcp.server.mcpserver import MCPServer

City = Literal["Oslo", "Paris", "Madrid", "Cairo", "Tokyo"]

TODAY: dict[str, tuple[int, str]] = {
    "Oslo": (3, "snow"),
    "Paris": (14, "rain"),
    "Madrid": (26, "sunny"),
    "Cairo": (34, "sunny"),
    "Tokyo": (19, "cloudy"),
}

server = MCPServer("weather")


class Weather(pydantic.BaseModel):
    city: str
    temperature_c: int
    sky: str


@server.tool()
def weather(city: City) -> Weather:
    """Today's weather in a city."""
    temperature, sky = TODAY[city]
    return Weather(city=city, temperature_c=temperature, sky=sky)


@server.tool()
def to_fahrenheit(celsius: int) -> float:
    """Degrees Celsius in Fahrenheit."""
    return round(celsius * 9 / 5 + 32, 1)


if __name__ == "__main__":
    server.run()
