"""A ReAct agent: Thought, Action (a tool call), Observation, repeated until it calls `finish`.

Each Action is `lp.gen(..., tools=[...])`: the output is held to a JSON object that calls
exactly one of the tools with arguments that match its type hints (a `Literal` country, an
operator from a fixed set), so every call parses and runs; `s[name]` is then an `lp.ToolCall`
with `.name`, `.arguments` and `.result`. The program appends the result as the Observation and
loops; `MAX_STEPS` bounds the loop, so the agent always stops.

lmprog does not describe the tools to the model: the prompt does, with two worked traces.
Gemma 3 270M follows such a trace closely, so questions shaped like the last example go well;
it does not reason about which operator a question needs (asked "how many more ... than ...",
it still adds, copying the last example), and with one example only it skips lookups. Every
call it makes is still valid and runs safely, and the loop always stops. Run with:

    .venv/bin/python examples/react_agent.py
"""

from __future__ import annotations

import operator
from typing import Literal

import lmprog as lp

Country = Literal["France", "Germany", "Italy", "Japan", "Poland", "Spain"]
POPULATION_MILLIONS: dict[str, int] = {
    "France": 68,
    "Germany": 84,
    "Italy": 59,
    "Japan": 124,
    "Poland": 37,
    "Spain": 48,
}


def population(country: Country) -> int:
    """Population of a country, in millions."""
    return POPULATION_MILLIONS[country]


OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def calculate(a: int, op: Literal["+", "-", "*", "/"], b: int) -> float:
    """Arithmetic on two numbers: no eval, only these four operators."""
    if op == "/" and b == 0:
        return float("nan")  # an observation the model can see, not a crash
    return float(OPERATORS[op](a, b))


def finish(answer: str) -> str:
    """The final answer; calling it ends the loop."""
    return answer


TOOLS = [population, calculate, finish]
MAX_STEPS = 6

PROMPT = """Answer the question step by step with the tools population, calculate and finish.

Question: How many more people live in Italy than in Spain, in millions?
Thought: First I need the population of Italy.
Action: {"name": "population", "arguments": {"country": "Italy"}}
Observation: 59
Thought: Now I need the population of Spain.
Action: {"name": "population", "arguments": {"country": "Spain"}}
Observation: 48
Thought: I have both populations, so I subtract 48 from 59.
Action: {"name": "calculate", "arguments": {"a": 59, "op": "-", "b": 48}}
Observation: 11
Thought: I know the answer.
Action: {"name": "finish", "arguments": {"answer": "11 million"}}

Question: What is the total population of France and Poland, in millions?
Thought: First I need the population of France.
Action: {"name": "population", "arguments": {"country": "France"}}
Observation: 68
Thought: Now I need the population of Poland.
Action: {"name": "population", "arguments": {"country": "Poland"}}
Observation: 37
Thought: I have both populations, so I add 68 and 37.
Action: {"name": "calculate", "arguments": {"a": 68, "op": "+", "b": 37}}
Observation: 105
Thought: I know the answer.
Action: {"name": "finish", "arguments": {"answer": "105 million"}}

"""


@lp.function(temperature=0)  # greedy: the same trace on every run
def agent(s, question):
    s += PROMPT + f"Question: {question}\n"
    for step in range(MAX_STEPS):
        s += "Thought:" + lp.gen(f"thought_{step}", max_tokens=24, stop="\n") + "\n"
        s += "Action: " + lp.gen(f"action_{step}", tools=TOOLS, max_tokens=40) + "\n"
        call = s[f"action_{step}"]  # an lp.ToolCall: the tool already ran
        if call.name == "finish":
            return call.result
        s += f"Observation: {call.result:g}\n"
    return None  # out of steps: no answer rather than an endless loop


QUESTIONS = [
    "What is the total population of Japan and Italy, in millions?",
    "What is the total population of Germany and Spain, in millions?",
]


def main() -> None:
    # No backend given: the default, lp.Local() with Gemma 3 270M in this process.
    states = agent.run_batch([(q,) for q in QUESTIONS])
    for question, state in zip(QUESTIONS, states, strict=True):
        print(f"Question: {question}")
        step = 0
        while f"action_{step}" in state:
            call = state[f"action_{step}"]
            print(f"  {step + 1}. thought:{state[f'thought_{step}']}")
            print(f"     action: {call.name}({call.arguments}) -> {call.result!r}")
            step += 1
        print(f"  answer: {state.ret_value} (after {step} steps)\n")


if __name__ == "__main__":
    main()
