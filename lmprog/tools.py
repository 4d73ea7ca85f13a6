"""`gen(tools=...)`: the model picks a tool and its arguments; lmprog validates and runs it.

On a backend that enforces JSON schemas, the call is generated under a schema that admits
exactly one call to one of the tools with valid arguments, so it always parses. The Python
callable then runs (awaited if async, in a worker thread if not, so a slow tool never stalls
other programs), and `s[name]` is a `ToolCall` holding its result. The text of the program
keeps the call's JSON; what to append next (the result, another turn) is the program's choice.
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic

from lmprog.constraints import Constraint, closed_schema, schema_constraint
from lmprog.errors import ConstraintError


@dataclass(frozen=True)
class ToolSpec:
    """A tool as the model sees it, plus the callable that runs it (None for a bare schema)."""

    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., Any] | None = None


@dataclass(frozen=True)
class ToolCall:
    """The model's call: which tool, with which arguments, and what running it returned."""

    name: str
    arguments: dict[str, Any]
    result: Any = None


def tool_specs(tools: Sequence[Callable[..., Any] | dict[str, Any]]) -> tuple[ToolSpec, ...]:
    specs = tuple(_spec(tool) for tool in tools)
    names = [spec.name for spec in specs]
    if not specs:
        raise ConstraintError("tools= must name at least one tool")
    if len(set(names)) != len(names):
        raise ConstraintError(f"tool names must be distinct, got {names}")
    return specs


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


def tools_constraint(specs: tuple[ToolSpec, ...]) -> Constraint:
    """A JSON schema admitting exactly one call: {"name": <tool>, "arguments": {...}}."""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": spec.name}, "arguments": spec.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for spec in specs
    ]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return schema_constraint(schema)


async def run_tool(specs: tuple[ToolSpec, ...], call: dict[str, Any]) -> ToolCall:
    """Run the tool the model called; its exceptions propagate as the gen's failure."""
    spec = next(s for s in specs if s.name == call["name"])
    arguments = dict(call["arguments"])
    if spec.function is None:
        return ToolCall(spec.name, arguments)
    if inspect.iscoroutinefunction(spec.function):
        result = await spec.function(**arguments)
    else:
        result = await asyncio.to_thread(spec.function, **arguments)
    return ToolCall(spec.name, arguments, result)
