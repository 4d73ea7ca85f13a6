"""A backend wrapper that counts one program's generated tokens (forks included).

Each input of `lmprog run` gets its own wrapper around the run's backend, so its result line
can say how many tokens it generated, and the progress bar can show tokens per second.
"""

from __future__ import annotations

from lmprog.backends.base import (
    Backend,
    GenerateRequest,
    Generation,
    TextCallback,
    WrappedBackend,
)


class Metered(WrappedBackend):
    """`inner`, with the completion tokens of every generation summed (None once one
    generation's count is unknown: an unknown count must not read as 0)."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.completion_tokens: int | None = 0

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        generation = await self.inner.generate(request, on_text)
        if self.completion_tokens is not None:
            count = generation.completion_tokens
            self.completion_tokens = None if count is None else self.completion_tokens + count
        return generation
