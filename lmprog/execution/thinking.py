"""A gen's reasoning: the span `gen(think=...)` writes before its answer, and
`separate_reasoning`, which splits a gen's text into reasoning and answer after the fact."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from lmprog.errors import LmprogError
from lmprog.execution.request import build_request, send
from lmprog.ir import SeparateReasoning, Think
from lmprog.reasoning import reasoning_format

if TYPE_CHECKING:
    from lmprog.execution.core import Execution


async def think(execution: Execution, node: Think) -> None:
    """The reasoning span of `gen(think=...)`: free text up to the closing delimiter or the
    budget, then the delimiter (also when the budget cut it short), so the constrained
    answer that follows starts in the right place."""
    opening, closing = node.delimiters or await _think_delimiters(execution)
    execution.append(opening, "text")
    stops = tuple(dict.fromkeys((closing, closing.strip())))
    sampling = node.sampling.merged_over(execution.defaults).replaced(
        max_new_tokens=node.budget, stop=stops
    )
    request = build_request(execution, sampling)
    generation = await send(execution, request, f"{node.name} (reasoning)")
    reasoning = generation.text.rstrip() if closing[:1].isspace() else generation.text
    execution.append(reasoning, "text")
    execution.append(closing, "text")
    execution.pending_reasoning = reasoning


async def _think_delimiters(execution: Execution) -> tuple[str, str]:
    """The model's own reasoning tags where its chat template uses them, else plain words
    (which a base model also follows)."""
    try:
        template = await execution.backend.chat_template()
    except LmprogError:
        template = None
    if template is not None and "<think>" in template.source:
        return "<think>\n", "\n</think>\n\n"
    return " Reasoning:", "\nAnswer:"


def separate_reasoning(execution: Execution, node: SeparateReasoning) -> None:
    """Split each target's value into reasoning and answer (SGLang's separate_reasoning).
    The value becomes the answer and the text keeps only the answer, except while
    streaming: the raw text was already streamed, so it stays."""
    try:
        form = reasoning_format(node.model_type)
        for target in node.targets:
            raw = execution.variables.get(target)
            if not isinstance(raw, str):
                raise LmprogError(
                    f"separate_reasoning({target!r}) needs text, but {target!r} holds a "
                    f"{type(raw).__name__}"
                )
            reasoning, answer = form.split(raw)
            execution.variables[target] = answer
            execution.variables[node.process_name_for_reasoning(target)] = reasoning
            execution.meta.setdefault(target, {})["reasoning"] = reasoning
            if not execution.stream:
                _rewrite_gen_text(execution, target, raw, answer)
    finally:
        for target in node.targets:
            execution.separating[target] -= 1
            if not execution.separating[target]:
                del execution.separating[target]


def _rewrite_gen_text(execution: Execution, name: str, raw: str, answer: str) -> None:
    """Replace the text gen `name` appended (`raw`, its last chunk) with `answer`, keeping
    every position recorded after it (role start, open var scopes) in step."""
    index = next(
        (
            i
            for i in range(len(execution.chunks) - 1, -1, -1)
            if execution.chunks[i].kind == "gen"
            and execution.chunks[i].names[:1] == (name,)
            and execution.chunks[i].text == raw
        ),
        None,
    )
    if index is None:
        return
    start = sum(len(c.text) for c in execution.chunks[:index])
    delta = len(answer) - len(raw)
    old = execution.chunks[index]
    execution.chunks[index] = dataclasses.replace(old, text=answer)
    execution.text_len += delta
    if execution.role_start > start:
        execution.role_start += delta
        for message in reversed(execution.messages):  # its turn ended: fix the message too
            content = message.get("content")
            if isinstance(content, str) and raw in content:
                head, _, tail = content.rpartition(raw)
                message["content"] = head + answer + tail
                break
    execution.scopes = {k: v + delta if v > start else v for k, v in execution.scopes.items()}
    execution.notify()


def attach_reasoning(execution: Execution, name: str) -> None:
    """Put the reasoning of the gen(think=...) that came first into `name`'s meta."""
    if execution.pending_reasoning is not None:
        execution.meta[name]["reasoning"] = execution.pending_reasoning
        execution.pending_reasoning = None
