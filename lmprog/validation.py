"""`gen(..., fallback="validate", max_attempts=K)`: generate, validate, retry — only where the
user asked for it and the backend cannot enforce the constraint itself.

Each attempt streams (where the backend can), and is abandoned the moment its text can no
longer become valid (a regex that cannot match any more, JSON that broke its schema), so a
bad attempt costs a few tokens, not `max_tokens`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import regex

from lmprog.backends.base import GenerateRequest, Generation, TextCallback
from lmprog.constraints import Constraint
from lmprog.errors import ConstraintError
from lmprog.partial import partial_reader

Feasible = Callable[[str], bool]
Send = Callable[[GenerateRequest, TextCallback | None], Awaitable[Generation]]
VALIDATABLE = frozenset({"regex", "json_schema", "choices"})  # grammars need a parser


async def generate_validated(
    send: Send,
    streaming: bool,
    request: GenerateRequest,
    constraint: Constraint,
    max_attempts: int,
    parse: Callable[[Generation], Any],
) -> tuple[Generation, Any, int]:
    """Up to `max_attempts` unconstrained generations (each through `send`, streamed when
    `streaming`) until one parses under `constraint`: the generation, its value, and how many
    attempts it took. Raises ConstraintError naming every failure when none does."""
    feasible = prefix_check(constraint)
    failures: list[str] = []
    for attempt in range(max_attempts):
        seed = request.sampling.seed
        sampling = replace(request.sampling, seed=None if seed is None else seed + attempt)
        free = replace(request, constraint=None, sampling=sampling)
        generation = await _watched(send, streaming, free, feasible)
        if generation.finish_reason == "abandoned":
            failures.append(f"stopped early at {generation.text[-60:]!r}")
            continue
        try:
            return generation, parse(generation), attempt + 1
        except ConstraintError as exc:
            failures.append(str(exc))
    listed = "; ".join(f"{i + 1}: {why}" for i, why in enumerate(failures))
    raise ConstraintError(
        f"no output met {constraint.description} in {max_attempts} attempts ({listed}); "
        "raise max_attempts, sample with temperature > 0, or use a backend that enforces it"
    )


async def _watched(
    send: Send, streaming: bool, request: GenerateRequest, feasible: Feasible
) -> Generation:
    """One generation, cancelled as soon as its text stops being a feasible prefix."""
    if not streaming:
        return await send(request, None)
    text: list[str] = []

    def watch(piece: str, logprobs: Sequence[dict[str, Any]] = ()) -> None:
        text.append(piece)
        if not task.done() and not feasible("".join(text)):
            task.cancel()

    task = asyncio.ensure_future(send(request, watch))
    try:
        await asyncio.wait({task})
    finally:
        if not task.done():
            task.cancel()
    if task.cancelled():
        return Generation("".join(text), finish_reason="abandoned")
    return task.result()


def prefix_check(constraint: Constraint) -> Feasible:
    """Whether a text can still grow into output that meets `constraint`."""
    if constraint.kind == "json_schema":
        return partial_reader(constraint).feasible
    if constraint.kind == "regex":
        assert constraint.pattern is not None
        compiled = regex.compile(constraint.check_pattern or constraint.pattern)

        def could_match(text: str) -> bool:
            try:
                return compiled.fullmatch(text, partial=True, timeout=0.1) is not None
            except TimeoutError:
                return True  # undecided: the full check after the attempt settles it

        return could_match
    if constraint.kind == "choices":
        return lambda text: any(choice.startswith(text) for choice in constraint.choices)
    raise ConstraintError(
        f"lmprog cannot validate a {constraint.kind} constraint after generation; "
        "use a backend that enforces it (lp.Local, lp.LlamaCpp)"
    )
