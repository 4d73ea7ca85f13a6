"""select: one of a fixed list of choices, scored (by logprobs) or decoded under a constraint."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from lmprog.backends.base import GenerateRequest
from lmprog.cache_report import CacheRow
from lmprog.choices import ChoiceLogprobs
from lmprog.constraints import choices_constraint
from lmprog.errors import ConstraintError
from lmprog.execution.request import build_request, observe, routing, send
from lmprog.execution.thinking import attach_reasoning
from lmprog.ir import SamplingParams, Select

if TYPE_CHECKING:
    from lmprog.execution.core import Execution


async def select(execution: Execution, node: Select) -> None:
    """Pick one of the choices: scored by the backend, or decoded under a choice constraint."""
    started = time.perf_counter()
    context = build_request(execution, execution.defaults)
    observe(execution, node.describe(), context.prompt)
    if node.method.decodes:
        scored = await _decode_choice(execution, context, node)
    else:
        scored = await _score(execution, context, node)
    path = scored[0].path if scored else None
    execution.span.attributes.update(
        {"variable": node.name, "constraint": f"one of {len(node.choices)} choices",
         "constraint_path": path}
    )  # fmt: skip
    index = node.method.decide(scored, node.temperature)
    choice = node.choices[index]
    execution.append(choice, "gen", node.name)
    if node.name is not None:
        value = choice
        if node.python_type is not None:
            value = choices_constraint(node.choices, node.python_type).parse(choice)
        execution.variables[node.name] = value
        execution.meta[node.name] = {
            **node.method.meta_info(scored),
            "constraint_path": path,
            "latency_s": time.perf_counter() - started,
        }
        attach_reasoning(execution, node.name)


async def _score(
    execution: Execution, context: GenerateRequest, node: Select
) -> list[ChoiceLogprobs]:
    """The backend scores every choice: a request of its own kind, without token counts."""
    span = execution.tracer.start(
        "request", "score_choices", execution.span,
        backend=execution.tracer.root.attributes["backend"], choices=len(node.choices),
    )  # fmt: skip
    try:
        with routing(execution, span):
            scored = await execution.backend.score_choices(context, node.choices, node.method)
    except BaseException as exc:
        span.finish(exc)
        raise
    span.finish()
    execution.requests.append(CacheRow("select", node.name, 1, None, None))
    return scored


async def _decode_choice(
    execution: Execution, context: GenerateRequest, node: Select
) -> list[ChoiceLogprobs]:
    """lp.constrained_decoding: one generation under a choice constraint picks the choice."""
    request = dataclasses.replace(
        context,
        sampling=SamplingParams(
            max_new_tokens=max(len(c) for c in node.choices) + 8,
            temperature=node.temperature,
        ),
        constraint=choices_constraint(list(node.choices)),
    )
    generation = await send(
        execution, request, node.name, kind="select", span_name="score_choices",
        choices=len(node.choices),
    )  # fmt: skip
    picked = generation.text
    if picked not in node.choices:
        raise ConstraintError(
            f"the engine decoded {picked[:80]!r} under a constraint to {len(node.choices)} "
            "choices, and it is none of them"
        )
    path = execution.backend.capabilities.enforcement
    scored = [
        ChoiceLogprobs(c, (0.0 if c == picked else float("-inf"),), (c,), path=path)
        for c in node.choices
    ]
    return scored
