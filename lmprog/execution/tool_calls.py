"""Native tool calls: the server gets the tools and parses the model's call itself (where it
can); a tool gen without that path generates its call under a schema (execution/gen.py)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from lmprog.errors import ConstraintError, UnsupportedFeatureError
from lmprog.execution.gen import validates
from lmprog.execution.request import build_request, generation_meta, observe, send
from lmprog.execution.thinking import attach_reasoning
from lmprog.execution.turns import record_call
from lmprog.ir import Gen
from lmprog.tool_messages import call_text, native_request, parse_native_call
from lmprog.tools import run_tool

if TYPE_CHECKING:
    from lmprog.execution.core import Execution


async def takes_native_path(execution: Execution, node: Gen) -> bool:
    """Whether a tool gen sends the tools to the server (which parses the call) rather
    than generating the call under a schema: where the server can, unless told."""
    if node.tool_path == "constrained" or node.n > 1:
        return False
    parsing = await execution.backend.tool_call_parsing()
    if node.tool_path == "native":
        if parsing == "no":
            raise UnsupportedFeatureError(
                execution.backend.name,
                "parse tool calls (the server does not)",
                'use gen(..., tool_path="constrained")',
            )
        return True
    if parsing != "yes" and not validates(execution, node):
        execution.backend.check_constraint(node.constraint)  # deferred by Execution._check
    return parsing == "yes"


async def native_tool_gen(execution: Execution, node: Gen) -> None:
    """The server gets the tools and answers with a parsed call (checked against the
    tool's schema, then run) or, where tool_choice lets it, with text."""
    tools, tool_choice = native_request(node.tools, node.tool_choice)
    request = build_request(
        execution,
        node.sampling.merged_over(execution.defaults),
        tools=tools,
        tool_choice=tool_choice,
    )
    observe(execution, node.describe(), request.prompt)
    started = time.perf_counter()
    generation = await send(execution, request, node.name)
    execution.append(generation.text, "gen", node.name)
    value: Any = generation.text
    if generation.tool_calls:
        call, call_id = parse_native_call(generation.tool_calls, node.tools, node.tool_choice)
        start = execution.text_len
        execution.append(call_text(call), "gen", node.name)
        value = await run_tool(node.tools, call, call_id)
        record_call(execution, start, value)
    elif node.tool_choice not in ("auto", "none"):
        raise ConstraintError(
            f"the server answered in text, not with the call tool_choice="
            f"{node.tool_choice!r} asks for: {generation.text[:80]!r}"
        )
    path = "native tool call"
    execution.span.attributes.update(
        {"variable": node.name, "constraint": "a tool call", "constraint_path": path}
    )
    if node.name is not None:
        execution.variables[node.name] = value
        meta = generation_meta(generation, time.perf_counter() - started)
        meta.update(constraint="a tool call", constraint_path=path)
        if len(generation.tool_calls) > 1:  # asked for one (parallel_tool_calls=false)
            meta["tool_calls_returned"] = len(generation.tool_calls)
        execution.meta[node.name] = meta
        attach_reasoning(execution, node.name)
