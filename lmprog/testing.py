"""A scripted backend for fast unit tests of programs and of lmprog's executor.

THIS IS A TEST DOUBLE, not a model: it answers from a Python function you give it. Use it to
test control flow, ordering, concurrency and error handling without an engine; prove a real
backend with a real engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from lmprog.backends.base import Backend, Capabilities, GenerateRequest, Generation, TextCallback
from lmprog.choices import ALL_METHODS, ChoiceLogprobs, ChoicesMethod

Responder = Callable[[GenerateRequest], str]
Scorer = Callable[[str, str], float]


class ScriptedBackend(Backend):
    """Answers each gen with `respond(request)`; scores each select choice with
    `score(prompt, choice)` (default: prefers the choice that appears last in the prompt).

    It records every request in `.requests`, tracks `.max_in_flight`, waits `delay` seconds per
    request, truncates at stop strings like a server, and streams its answer in 3-char pieces.
    `fail(request)` may return an exception to raise instead of answering.
    """

    capabilities = Capabilities(
        constraints=frozenset({"regex", "json_schema", "choices", "grammar"}),
        grammar_syntaxes=frozenset({"gbnf", "lark"}),
        choices_methods=ALL_METHODS,
        images=True,
        streaming=True,
        logprobs=True,
    )
    image_marker = "<image>"

    def __init__(
        self,
        respond: Responder | None = None,
        *,
        score: Scorer | None = None,
        delay: float = 0.0,
        fail: Callable[[GenerateRequest], BaseException | None] | None = None,
        chat_template: str = "chatml",
    ) -> None:
        self.name = "ScriptedBackend (test double)"
        self._respond = respond or (lambda request: "ok")
        self._score = score or _last_mentioned
        self._delay = delay
        self._fail = fail
        self.chat_template_choice = chat_template
        self.requests: list[GenerateRequest] = []
        self.warmed: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0


    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self._delay:
                await asyncio.sleep(self._delay)
            error = self._fail(request) if self._fail else None
            if error is not None:
                raise error
            text, finish = _apply_stops(self._respond(request), request.sampling.stop or ())
            if on_text is not None:
                for start in range(0, len(text), 3):
                    on_text(text[start : start + 3])
                    await asyncio.sleep(0)
            return Generation(
                text=text,
                finish_reason=finish,
                prompt_tokens=len(request.prompt.split()),
                completion_tokens=len(text.split()),
            )
        finally:
            self.in_flight -= 1

    async def warm(self, prompt: str) -> None:
        self.warmed.append(prompt)

    async def score_choices(
        self, context: GenerateRequest, choices: tuple[str, ...], method: ChoicesMethod
    ) -> list[ChoiceLogprobs]:
        if self._delay:
            await asyncio.sleep(self._delay)
        scored = []
        for choice in choices:
            value = self._score(context.prompt, choice)
            unconditional: Any = (0.0,) if method.requires_unconditional_logprobs else None
            scored.append(ChoiceLogprobs(choice, (value,), (choice,), unconditional))
        return scored


def _apply_stops(text: str, stops: tuple[str, ...]) -> tuple[str, str]:
    cut = min((text.index(s) for s in stops if s in text), default=None)
    return (text, "stop") if cut is None else (text[:cut], "stop")


def _last_mentioned(prompt: str, choice: str) -> float:
    return float(prompt.rfind(choice))
