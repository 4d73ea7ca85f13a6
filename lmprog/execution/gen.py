"""gen: the value the model generates, plain, validated, n>1, streamed, or served from text
the model wrote ahead (API speculative execution, see lmprog/speculation.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lmprog.backends.base import GenerateRequest, Generation
from lmprog.errors import ConstraintError, LmprogError, UnsupportedFeatureError
from lmprog.execution.request import build_request, generation_meta, observe, send
from lmprog.execution.thinking import attach_reasoning
from lmprog.execution.turns import record_call
from lmprog.ir import Gen, SamplingParams
from lmprog.logprobs import StreamedLogprobs
from lmprog.tool_messages import new_call_id
from lmprog.tools import ANSWER_FIELD, run_tool
from lmprog.validation import VALIDATABLE, generate_validated

if TYPE_CHECKING:
    from lmprog.execution.core import Execution


def validates(execution: Execution, node: Gen) -> bool:
    """Whether `node` takes the opt-in generate-validate-retry path on this backend."""
    if not node.validate_attempts or node.constraint is None:
        return False
    if node.constraint.kind not in VALIDATABLE:
        return False  # check_constraint then says what would work
    try:
        execution.backend.check_constraint(node.constraint)
    except UnsupportedFeatureError:
        return True
    return False


async def gen(execution: Execution, node: Gen) -> None:
    """A gen the model writes into the text, under its constraint if it has one (a tool gen
    off the native path writes its call): plain, validated, n>1, streamed or speculative."""
    sampling = node.sampling.merged_over(execution.defaults)
    validating = validates(execution, node)
    # dtype=str: the quotes are written here and the engine generates what is between
    # them, stopping at the closing quote (a model may end with '",'; see dtype_constraint)
    quote = '"' if node.constraint is not None and node.constraint.quoted else ""
    if quote and not validating:
        execution.append(quote, "gen", node.name)
        stops = (*(sampling.stop or ()), quote)
        sampling = sampling.replaced(stop=tuple(dict.fromkeys(stops)))
    else:
        quote = ""
    if execution.speculation is not None:
        if execution.speculation.eligible(node, sampling):
            if await _speculative_gen(execution, node, sampling):
                return
        else:
            execution.speculation.discard()
    request = build_request(
        execution,
        sampling,
        constraint=node.constraint,
        return_logprob=node.return_logprob,
        top_logprobs_num=node.top_logprobs_num,
    )
    observe(execution, node.describe(), request.prompt)
    started = time.perf_counter()
    gen_start = execution.text_len
    path = execution.backend.capabilities.enforcement if node.constraint else None
    if validating:
        assert node.constraint is not None
        values = []
        generations = []
        for i in range(node.n):
            generation, parsed, attempts = await generate_validated(
                lambda r, on_text: send(execution, r, node.name, on_text),
                execution.backend.capabilities.streaming,
                _reseeded(request, i * node.validate_attempts),
                node.constraint,
                node.validate_attempts,
                lambda g: _parse(node, g),
            )
            generations.append(generation)
            values.append(parsed)
        path = f"validated after {attempts} attempt{'s' * (attempts > 1)}"
        execution.append(generations[0].text, "gen", node.name)
        value: Any = values if node.n > 1 else values[0]
        generation = generations[0]
    elif node.n > 1:
        generations = await asyncio.gather(
            *(send(execution, _reseeded(request, i), node.name) for i in range(node.n))
        )
        values = [_parse(node, g, quote) for g in generations]
        execution.append(generations[0].text + _closing(generations[0], quote), "gen", node.name)
        value = values
        generation = generations[0]
    else:
        streamed: list[str] = []
        so_far = StreamedLogprobs()

        def on_text(piece: str, logprobs: Sequence[dict[str, Any]] = ()) -> None:
            streamed.append(piece)
            so_far.add(logprobs)
            # SGLang's per-chunk meta_info: the tokens generated so far (from their
            # logprobs, else one per piece: engines stream token by token)
            meta = {
                "completion_tokens": len(so_far.tokens) or len(streamed),
                "finish_reason": None,
            }
            if node.return_logprob or node.top_logprobs_num:
                meta.update(so_far.meta())
            execution.append(piece, "gen", node.name, meta)

        generation = await send(
            execution, request, node.name, on_text if execution.stream else None
        )
        value = _parse(node, generation, quote)
        if streamed:
            _check_stream(streamed, generation)
        else:
            execution.append(generation.text, "gen", node.name)
        execution.append(_closing(generation, quote), "gen", node.name)
    if node.tools and node.n == 1 and node.constraint is not None:
        if ANSWER_FIELD in value:  # tool_choice="auto": the model answered in text
            value = value[ANSWER_FIELD]
        else:
            value = await run_tool(node.tools, value, new_call_id())
            record_call(execution, gen_start, value)
    execution.span.attributes.update(
        {"variable": node.name, "constraint": _described(node), "constraint_path": path}
    )
    if node.name is not None:
        execution.variables[node.name] = value
        meta = generation_meta(generation, time.perf_counter() - started)
        if node.constraint is not None:
            meta.update(constraint=node.constraint.description, constraint_path=path)
        execution.meta[node.name] = meta
        attach_reasoning(execution, node.name)


async def _speculative_gen(execution: Execution, node: Gen, sampling: SamplingParams) -> bool:
    """Serve `node` from text the model wrote ahead (one request for several gens, see
    lmprog/speculation.py); False when it needs a request of its own after all."""
    speculation = execution.speculation
    assert speculation is not None
    started = time.perf_counter()
    served = speculation.serve(sampling)
    generation: Generation | None = None
    if served is None:
        request = build_request(execution, speculation.request_sampling(sampling))
        # a chat model that cannot continue a turn's text writes the turn from its start;
        # the text the program put there must then be what the model wrote first
        capabilities = await execution.backend.detected_capabilities()
        prefill = "" if capabilities.continues_turns else request.prefill
        if prefill:
            request = dataclasses.replace(request, prefill="")
        observe(execution, node.describe(), request.prompt)
        generation = await send(execution, request, node.name)
        speculation.begin(generation.text, sampling, generation.finish_reason)
        speculation.consume(prefill)
        served = speculation.serve(sampling)
        if served is None:
            return False
    execution.append(served.value, "gen", node.name)
    if node.name is not None:
        execution.variables[node.name] = served.value
        counts = generation_meta(generation, 0.0) if generation else {"completion_tokens": None}
        execution.meta[node.name] = {
            **counts,
            "finish_reason": "stop",
            "speculative": "requested" if generation else "served from the text ahead",
            "latency_s": time.perf_counter() - started,
        }
    execution.span.attributes.update({"variable": node.name, "speculative": generation is None})
    return True


def _parse(node: Gen, generation: Generation, quote: str = "") -> Any:
    """The value of `generation` under the gen's constraint (`quote`: the quotes the
    executor wrote around it, for dtype=str)."""
    if node.constraint is None:
        return generation.text
    try:
        if node.constraint.kind == "grammar" and generation.finish_reason == "length":
            raise ConstraintError("the output may be incomplete under the grammar")
        text = quote + generation.text + _closing(generation, quote)
        return node.constraint.parse(text)
    except ConstraintError as exc:
        if generation.finish_reason == "length":
            raise ConstraintError(
                f"{exc}; generation stopped at the token limit before the output was "
                "complete: raise max_tokens"
            ) from exc
        raise


def _reseeded(request: GenerateRequest, index: int) -> GenerateRequest:
    seed = request.sampling.seed
    sampling = request.sampling.replaced(seed=None if seed is None else seed + index)
    return dataclasses.replace(request, sampling=sampling)


def _closing(generation: Generation, quote: str) -> str:
    """The closing quote of a dtype=str gen, unless the token limit cut the string short."""
    return quote if quote and generation.finish_reason != "length" else ""


def _check_stream(pieces: list[str], generation: Generation) -> None:
    streamed = "".join(pieces)
    if streamed != generation.text:
        raise LmprogError(
            f"the backend streamed {streamed[:80]!r} but returned {generation.text[:80]!r}"
        )


def _described(node: Gen) -> str | None:
    if node.tools:
        return "a tool call"
    return node.constraint.description if node.constraint else None
