"""Tool calls as chat messages: the OpenAI shapes servers take and return.

A server that parses tool calls itself (the native path) is sent the tools as OpenAI function
entries and answers with `tool_calls`, which are checked here against the same call schema the
constrained path enforces, so both paths give the program the same values. A call's result goes
back as a `tool` message answering the call's id, after an assistant message carrying the call:
the shape chat templates and servers expect for a multi-turn tool loop.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from lmprog.errors import ConstraintError
from lmprog.tools import ToolCall, ToolSpec, chosen_specs, tools_constraint


def openai_tools(specs: tuple[ToolSpec, ...]) -> tuple[dict[str, Any], ...]:
    """The `tools` request field: one function entry per tool."""
    return tuple(
        {
            "type": "function",
            "function": {
                "name": spec.name,
                "description": spec.description,
                "parameters": spec.parameters,
            },
        }
        for spec in specs
    )


def native_request(
    specs: tuple[ToolSpec, ...], tool_choice: str
) -> tuple[tuple[dict[str, Any], ...], str]:
    """The tools and tool_choice a native request sends. A named tool is sent as the only tool
    with tool_choice "required": the same call, in the form every server takes (llama-server
    takes no named tool_choice)."""
    if tool_choice in ("required", "auto", "none"):
        return openai_tools(specs), tool_choice
    return openai_tools(chosen_specs(specs, tool_choice)), "required"


def parse_native_call(
    tool_calls: list[dict[str, Any]], specs: tuple[ToolSpec, ...], tool_choice: str
) -> tuple[dict[str, Any], str]:
    """The first call a server returned, as {"name", "arguments"} checked against the tools'
    schemas, and its id. A call naming no tool, or arguments that are not JSON or break the
    tool's schema, raise ConstraintError naming the tool."""
    raw = tool_calls[0]
    function = raw.get("function") or {}
    name = function.get("name")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise ConstraintError(
                f"the server's call to tool {name!r} has arguments that are not JSON: "
                f"{arguments[:120]!r}"
            ) from exc
    call = {"name": name, "arguments": arguments}
    constraint = tools_constraint(chosen_specs(specs, tool_choice))
    try:
        constraint.parse(json.dumps(call))
    except ConstraintError as exc:
        known = [spec.name for spec in specs]
        what = f"tool {name!r}" if name in known else f"unknown tool {name!r} (tools: {known})"
        raise ConstraintError(f"the server's call to {what} is invalid: {exc}") from exc
    return call, str(raw.get("id") or new_call_id())


def new_call_id() -> str:
    """An id for a call the server did not name (the constrained path's calls)."""
    return "call_" + uuid.uuid4().hex[:12]


def call_text(call: dict[str, Any]) -> str:
    """How a native call is written into the program's text: the JSON the constrained path
    generates, so `s.text()` reads the same on both paths."""
    return json.dumps(call, ensure_ascii=False)


def openai_tool_call(call: ToolCall) -> dict[str, Any]:
    """A call as an assistant message's `tool_calls` entry."""
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
    }


def result_text(result: Any) -> str:
    """A tool's result as a tool message's content: a string as it is, anything else as JSON
    (str() for what JSON cannot hold)."""
    if isinstance(result, str):
        return result
    return json.dumps(result, ensure_ascii=False, default=str)


def tool_message(call_id: str, name: str, content: str) -> dict[str, Any]:
    """The `tool` message answering call `call_id`."""
    return {"role": "tool", "tool_call_id": call_id, "name": name, "content": content}
