"""Turns: role markers, images and tool results, and the chat messages they become.

A turn's text goes into the state as the chat template lays it out; when the turn closes, the
same text becomes one chat message (with its images, or its tool calls), for backends that
take messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from lmprog.backends.base import ImagePart
from lmprog.errors import LmprogError
from lmprog.ir import Image, RoleBegin, RoleEnd, ToolResult
from lmprog.tool_messages import openai_tool_call, tool_message
from lmprog.tools import ToolCall

if TYPE_CHECKING:
    from lmprog.execution.core import Execution


async def role_begin(execution: Execution, node: RoleBegin) -> None:
    if execution.role is not None:
        raise LmprogError(f"{node.role} turn opened inside an open {execution.role} turn")
    template = await execution.backend.chat_template()
    begin, _ = template.role_markers(node.role)
    execution.append(begin, "role")
    execution.role, execution.role_start, execution.role_parts = node.role, execution.text_len, []
    execution.turn_calls = []


async def role_end(execution: Execution, node: RoleEnd) -> None:
    if execution.role != node.role:
        raise LmprogError(f"{node.role} turn closed but the open turn is {execution.role}")
    template = await execution.backend.chat_template()
    _, end = template.role_markers(node.role)
    tail = execution.text[execution.role_start :]
    if execution.turn_calls:
        execution.messages.append(_calling_message(execution, tail))
    elif execution.role_parts:
        text_part = [{"type": "text", "text": tail}] if tail else []
        execution.messages.append(
            {"role": node.role, "content": [*execution.role_parts, *text_part]}
        )
    else:
        execution.messages.append({"role": node.role, "content": tail})
    execution.append(end, "role")
    execution.role = None


def _calling_message(execution: Execution, tail: str) -> dict[str, Any]:
    """The assistant message of a turn that called tools: its text without the calls'
    JSON (None if nothing else), and the calls as `tool_calls`."""
    kept, at = [], execution.role_start
    for start, end, _ in execution.turn_calls:
        kept.append(execution.text[at:start])
        at = end
    kept.append(execution.text[at : execution.role_start + len(tail)])
    content = "".join(kept)
    calls = [openai_tool_call(call) for _, _, call in execution.turn_calls]
    execution.turn_calls = []
    return {"role": "assistant", "content": content or None, "tool_calls": calls}


def record_call(execution: Execution, start: int, call: ToolCall) -> None:
    """Remember a call made in the open assistant turn, for that turn's message."""
    if execution.role == "assistant":
        execution.turn_calls.append((start, execution.text_len, call))


async def tool_result(execution: Execution, node: ToolResult) -> None:
    """The `tool` turn answering a call, laid out by the chat template's tool role."""
    if execution.role is not None:
        raise LmprogError(f"lp.tool_result() must follow the {execution.role} turn, not sit in it")
    template = await execution.backend.chat_template()
    begin, end = template.role_markers("tool")
    execution.append(begin, "role")
    execution.role = "tool"
    execution.append(node.content, "text")
    execution.append(end, "role")
    execution.role = None
    execution.messages.append(tool_message(node.call_id, node.tool, node.content))


async def image(execution: Execution, node: Image) -> None:
    if execution.role != "user":
        raise LmprogError("lp.image() must be inside a user turn")
    data, mime_type = node.data, node.mime_type
    if data is None:
        data, mime_type = await _download(node.source)
    before = execution.text[execution.role_start :]
    if before:
        execution.role_parts.append({"type": "text", "text": before})
    execution.role_parts.append(
        {
            "type": "image",
            "mime_type": mime_type,
            "source": node.source,
            "image_index": len(execution.images),
        }
    )
    execution.images.append(ImagePart(data, mime_type))
    execution.append(execution.backend.image_marker, "text")
    execution.role_start = execution.text_len  # the marker is the backend's, not message text


async def _download(url: str) -> tuple[bytes, str]:
    try:
        async with httpx.AsyncClient(timeout=30, follow_redirects=True) as client:
            response = await client.get(url)
            response.raise_for_status()
    except httpx.HTTPError as exc:
        raise LmprogError(f"could not download the image at {url}: {exc}") from exc
    return response.content, response.headers.get("content-type", "image/png").split(";")[0]
