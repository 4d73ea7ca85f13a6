"""A backend wrapper that counts one program's generated tokens (forks included).

Each input of `lmprog run` gets its own wrapper around the run's backend, so its result line
can say how many tokens it generated, and the progress bar can show tokens per second.
"""

from __future__ import annotations

from lmprog.backends.base import Backend, GenerateRequest, Generation, TextCallback
from lmprog.choices import ChoiceLogprobs, ChoicesMethod
from lmprog.constraints import Constraint
from lmprog.templates import ChatTemplate


class Metered(Backend):
    """`inner`, with the completion tokens of every generation summed (None once one
    generation's count is unknown: an unknown count must not read as 0)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities
        self.image_marker = inner.image_marker
        self.completion_tokens: int | None = 0

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        generation = await self.inner.generate(request, on_text)
        if self.completion_tokens is not None:
            count = generation.completion_tokens
            self.completion_tokens = None if count is None else self.completion_tokens + count
        return generation

    async def score_choices(
        self, context: GenerateRequest, choices: tuple[str, ...], method: ChoicesMethod
    ) -> list[ChoiceLogprobs]:
        return await self.inner.score_choices(context, choices, method)

    async def warm(self, prompt: str) -> None:
        await self.inner.warm(prompt)

    async def chat_template(self) -> ChatTemplate:
        return await self.inner.chat_template()

    async def _load_chat_template(self) -> ChatTemplate:
        return await self.inner.chat_template()

    def cached_chat_template(self) -> ChatTemplate | None:
        return self.inner.cached_chat_template()

    async def concurrency_hint(self) -> int:
        return await self.inner.concurrency_hint()

    def check_constraint(self, constraint: Constraint | None) -> None:
        self.inner.check_constraint(constraint)

    def check_choices_method(self, method: ChoicesMethod) -> None:
        self.inner.check_choices_method(method)

    def check_images(self) -> None:
        self.inner.check_images()
