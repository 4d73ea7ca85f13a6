"""An agent whose tools come from an MCP server: `lp.mcp_tools(command=[...])` starts
examples/mcp_weather_server.py over stdio, lists its tools (name, description, input schema)
and hands them to `gen(tools=[...])` beside a Python function, `finish`.

Each Action is generated under a schema that admits exactly one call with valid arguments (a
city from the server's list, an integer), so every call parses; lmprog runs it through the MCP
session and `s[name]` is an `lp.ToolCall` whose `.result` is the server's text and
`.structured` its structured content. The program appends the result as the Observation and
loops, at most MAX_STEPS times. The `with` block keeps one server process for the whole batch;
it is stopped when the block ends. Gemma 3 270M follows the trace closely: every call is valid
and its numbers come from the tools, but its final sentence may copy a word from the examples
(Oslo "cloudy" where the server said snow). Run with:

    .venv/bin/python examples/mcp_agent.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import lmprog as lp

SERVER = Path(__file__).with_name("mcp_weather_server.py")
weather_tools = lp.mcp_tools(command=[sys.executable, str(SERVER)])


def finish(answer: str) -> str:
    """The final answer; calling it ends the loop."""
    return answer


MAX_STEPS = 4

PROMPT = """Answer with the tools weather, to_fahrenheit and finish.
Question: How warm is it in Rome, in Fahrenheit?
Action: {"name": "weather", "arguments": {"city": "Rome"}}
Observation: {"city": "Rome", "temperature_c": 24, "sky": "sunny"}
Action: {"name": "to_fahrenheit", "arguments": {"celsius": 24}}
Observation: 75.2
Action: {"name": "finish", "arguments": {"answer": "75.2 F and sunny in Rome."}}
Question: How warm is it in Lima, in Fahrenheit?
Action: {"name": "weather", "arguments": {"city": "Lima"}}
Observation: {"city": "Lima", "temperature_c": 18, "sky": "cloudy"}
Action: {"name": "to_fahrenheit", "arguments": {"celsius": 18}}
Observation: 64.4
Action: {"name": "finish", "arguments": {"answer": "64.4 F and cloudy in Lima."}}
"""


@lp.function(temperature=0)  # greedy: the same trace on every run
def agent(s, question):
    s += PROMPT + f"Question: {question}\n"
    for step in range(MAX_STEPS):
        s += "Action: " + lp.gen(f"action_{step}", tools=[weather_tools, finish], max_tokens=48)
        call = s[f"action_{step}"]  # an lp.ToolCall: the tool already ran
        if call.name == "finish":
            return call.result
        s += f"\nObservation: {compact(call.result)}\n"
    return None  # out of steps: no answer rather than an endless loop


def compact(text: str) -> str:
    """The server's text on one line (it indents structured results over several)."""
    return " ".join(text.split())


QUESTIONS = ["How warm is it in Oslo, in Fahrenheit?", "How warm is it in Cairo, in Fahrenheit?"]


def main() -> None:
    with weather_tools:  # one session (one server process) for the listing and the batch
        print("MCP tools:", ", ".join(weather_tools.names))
        # No backend given: the default, lp.Local() with Gemma 3 270M in this process.
        states = agent.run_batch([(q,) for q in QUESTIONS])
    for question, state in zip(QUESTIONS, states, strict=True):
        print(f"Question: {question}")
        step = 0
        while f"action_{step}" in state:
            call = state[f"action_{step}"]
            print(f"  {step + 1}. {call.name}({call.arguments}) -> {compact(call.result)}")
            step += 1
        print(f"Answer: {state.ret_value}")


if __name__ == "__main__":
    main()
