"""`gen(tools=...)`: the model picks a tool and its arguments; lmprog validates and runs it.

On a backend that enforces JSON schemas, the call is generated under a schema that admits
exactly one call to one of the tools with valid arguments, so it always parses. The Python
callable then runs (awaited if async, in a worker thread if not, so a slow tool never stalls
other programs), and `s[name]` is a `ToolCall` holding its result. The text of the program
keeps the call's JSON; what to append next (the result, another turn) is the program's choice.

`tool_choice` says whether a call must come: "required" (the default), a tool's name, "auto"
(the model may answer in text instead: under a schema admitting `{"answer": "..."}` beside the
calls) or "none". Servers that parse tool calls themselves take the native path instead
(lmprog.tool_messages).
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import pydantic

from lmprog.constraints import Constraint, closed_schema, schema_constraint
from lmprog.errors import ConstraintError


@dataclass(frozen=True)
class ToolSpec:
    """A tool as the model sees it, plus what runs it: a Python callable (`function`), a call
    to a server (`call`: an MCP tool's, from lp.mcp_tools), or neither (a bare schema)."""

    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., Any] | None = None
    call: Callable[[dict[str, Any]], Awaitable[ToolCall]] | None = field(
        default=None, compare=False, repr=False
    )


@runtime_checkable
class ToolSet(Protocol):
    """Tools that come as a group whose specs are known only once listed (lp.mcp_tools)."""

    def tool_specs(self) -> tuple[ToolSpec, ...]: ...


@dataclass(frozen=True)
class ToolCall:
    """The model's call: which tool, with which arguments, and what running it returned."""

    name: str
    arguments: dict[str, Any]
    result: Any = None
    id: str | None = field(default=None, compare=False)  # what the tool message answers
    # An MCP tool's result as the server sent it: `result` is its text, `structured` its
    # structured content (None if it gave none), `content` every content block as JSON.
    structured: Any = None
    content: tuple[dict[str, Any], ...] = ()


# What gen(tools=...) takes: Python callables, tool schemas, ToolSpecs and tool sets.
Tools = Sequence[Callable[..., Any] | dict[str, Any] | ToolSpec | ToolSet] | ToolSet


def tool_specs(tools: Tools) -> tuple[ToolSpec, ...]:
    """The specs of `tools=`: callables, tool schemas, ToolSpecs, and tool sets (an MCP
    server's tools), flattened in order."""
    given = [tools] if isinstance(tools, ToolSet) else tools
    specs = tuple(spec for tool in given for spec in _specs(tool))
    names = [spec.name for spec in specs]
    if not specs:
        raise ConstraintError("tools= must name at least one tool")
    if len(set(names)) != len(names):
        raise ConstraintError(f"tool names must be distinct, got {names}")
    return specs


def _specs(tool: Callable[..., Any] | dict[str, Any] | ToolSpec | ToolSet) -> tuple[ToolSpec, ...]:
    if isinstance(tool, ToolSet):
        return tool.tool_specs()
    if isinstance(tool, ToolSpec):
        return (tool,)
    return (_spec(tool),)


def _spec(tool: Callable[..., Any] | dict[str, Any]) -> ToolSpec:
    if isinstance(tool, dict):
        function = tool.get("function", tool)  # OpenAI's {"type": "function", "function": ...}
        if "name" not in function:
            raise ConstraintError(f"a tool schema needs a name: {tool!r}")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        return ToolSpec(function["name"], function.get("description", ""), parameters)
    if not callable(tool):
        raise ConstraintError(f"a tool must be a callable or a tool schema, got {tool!r}")
    fields: dict[str, Any] = {}
    try:
        hints = typing.get_type_hints(tool, include_extras=True)
    except (NameError, TypeError) as exc:
        raise ConstraintError(f"cannot read the type hints of tool {tool.__name__}: {exc}") from exc
    for name, parameter in inspect.signature(tool).parameters.items():
        annotation = hints.get(name, Any)
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        fields[name] = (annotation, default)
    model = pydantic.create_model(f"{tool.__name__}_arguments", **fields)
    parameters = closed_schema(model.model_json_schema())
    return ToolSpec(tool.__name__, inspect.getdoc(tool) or "", parameters, tool)


TOOL_CHOICES = ("required", "auto", "none")
ANSWER_FIELD = "answer"  # the text answer tool_choice="auto" admits on the constrained path


def chosen_specs(specs: tuple[ToolSpec, ...], tool_choice: str) -> tuple[ToolSpec, ...]:
    """The tools a call may use under `tool_choice` (a tool's name narrows them to one)."""
    if tool_choice in TOOL_CHOICES:
        return specs
    named = tuple(spec for spec in specs if spec.name == tool_choice)
    if not named:
        known = ", ".join(TOOL_CHOICES + tuple(spec.name for spec in specs))
        raise ConstraintError(f"tool_choice={tool_choice!r} is none of {known}")
    return named


def tools_constraint(specs: tuple[ToolSpec, ...], tool_choice: str = "required") -> Constraint:
    """A JSON schema admitting exactly one call: {"name": <tool>, "arguments": {...}}; under
    tool_choice="auto" also a text answer, {"answer": "..."}."""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": spec.name}, "arguments": spec.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for spec in chosen_specs(specs, tool_choice)
    ]
    if tool_choice == "auto":
        calls.append(
            {
                "type": "object",
                "properties": {ANSWER_FIELD: {"type": "string"}},
                "required": [ANSWER_FIELD],
                "additionalProperties": False,
            }
        )
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return schema_constraint(schema)


async def run_tool(
    specs: tuple[ToolSpec, ...], call: dict[str, Any], call_id: str | None = None
) -> ToolCall:
    """Run the tool the model called; its exceptions propagate as the gen's failure."""
    spec = next(s for s in specs if s.name == call["name"])
    arguments = dict(call["arguments"])
    if spec.call is not None:
        return replace(await spec.call(arguments), id=call_id)
    if spec.function is None:
        return ToolCall(spec.name, arguments, id=call_id)
    if inspect.iscoroutinefunction(spec.function):
        result = await spec.function(**arguments)
    else:
        result = await asyncio.to_thread(spec.function, **arguments)
    return ToolCall(spec.name, arguments, result, call_id)
