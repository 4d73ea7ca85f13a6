"""Building, sending and recording one backend request for a state.

Every primitive that asks the model something goes through here: `build_request` turns the
state into what a backend may need, `send` records the request as a trace span, a cache-report
row, token usage and cost, and `generation_meta` is what `state.get_meta_info(name)` reports.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Literal

from lmprog.backends.base import (
    GenerateRequest,
    Generation,
    Routing,
    TextCallback,
    routed,
)
from lmprog.budget import request_cost
from lmprog.cache_report import CacheRow
from lmprog.errors import UnsupportedFeatureError
from lmprog.ir import SamplingParams
from lmprog.logprobs import logprob_meta
from lmprog.trace import Span, cost_attributes, traceparent
from lmprog.usage import token_usage

if TYPE_CHECKING:
    from lmprog.execution.core import Execution


def build_request(execution: Execution, sampling: SamplingParams, **fields: Any) -> GenerateRequest:
    """Everything a backend may need: the text so far, and the same as chat messages."""
    stop = sampling.stop or ()
    chat_only = execution.backend.capabilities.chat_only
    if chat_only:
        _check_chat_shape(execution)
    elif execution.role is not None:
        template_end = _end_marker(execution)
        if template_end and template_end not in stop:
            stop = (*stop, template_end)
    return GenerateRequest(
        prompt=execution.text,
        sampling=sampling.replaced(stop=stop or None),
        images=tuple(execution.images),
        messages=tuple(execution.messages),
        prefill=execution.text[execution.role_start :] if execution.role == "assistant" else "",
        **fields,
    )


def observe(execution: Execution, primitive: str, prompt: str) -> None:
    """Show the lint this run's first prompt; then stop recording where text came from."""
    if execution.probe is not None:
        execution.probe.observe(execution.backend.name, primitive, prompt, execution.marks)
        execution.probe, execution.marks = None, []


def _check_chat_shape(execution: Execution) -> None:
    """A chat-only model sees messages: text outside a role, or a gen outside an assistant
    turn, has no place in them and would be lost, so it is refused instead."""
    if execution.loose_text:
        raise UnsupportedFeatureError(
            execution.backend.name,
            "take text outside a role: it is a chat model",
            "wrap the text in lp.system(...), lp.user(...) or lp.assistant(...)",
        )
    if execution.role != "assistant":
        raise UnsupportedFeatureError(
            execution.backend.name,
            "generate outside an assistant turn: it is a chat model",
            "put the gen inside lp.assistant(...)",
        )


def _end_marker(execution: Execution) -> str:
    template = execution.backend.cached_chat_template()
    if template is None or execution.role is None:
        return ""
    return template.role_markers(execution.role)[1].strip()


def routing(execution: Execution, span: Span) -> contextlib.AbstractContextManager[None]:
    """Requests sent within: this program's routing key, and `span` as their trace parent."""
    return routed(Routing(execution.affinity, traceparent(span)))


async def send(
    execution: Execution,
    request: GenerateRequest,
    label: str | None,
    on_text: TextCallback | None = None,
    *,
    kind: Literal["gen", "select"] = "gen",
    span_name: str = "generate",
    **span_attributes: Any,
) -> Generation:
    """One backend request, recorded as a span and as a row of the cache report (`kind`:
    the primitive it counts for; a select decoded by the engine names its own span)."""
    sampling = request.sampling
    span = execution.tracer.start(
        "request",
        span_name,
        execution.span,
        backend=execution.tracer.root.attributes["backend"],
        operation="chat" if execution.backend.capabilities.chat_only else "text_completion",
        max_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=sampling.seed,
        constrained=request.constraint.kind if request.constraint else None,
        **span_attributes,
    )
    try:
        with routing(execution, span):
            generation = await execution.backend.generate(request, on_text)
    except BaseException as exc:
        span.finish(exc)
        raise
    token_usage(execution.backend).add(generation.prompt_tokens, generation.completion_tokens)
    cost = request_cost(execution.backend, generation)
    span.text = generation.text
    span.finish(
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
        cached_tokens=generation.cached_tokens,
        finish_reason=generation.finish_reason,
        **cost_attributes(cost),
    )
    execution.requests.append(
        CacheRow(kind, label, 1, generation.prompt_tokens, generation.cached_tokens, cost)
    )
    return generation


def generation_meta(generation: Generation, latency: float) -> dict[str, Any]:
    """What `get_meta_info` reports for a value the model generated in one request."""
    meta: dict[str, Any] = {
        "finish_reason": generation.finish_reason,
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "cached_tokens": generation.cached_tokens,
        "latency_s": latency,
    }
    if generation.logprobs is not None:
        meta.update(logprob_meta(generation.logprobs))
    meta.update(generation.extra)
    return meta
