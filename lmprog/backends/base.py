"""The backend contract: capabilities as plain flags, and a few async methods.

The executor lowers every primitive by these flags alone; a backend never sees program
structure, only requests. Anything a backend cannot honour is refused by `check` before a
request is sent (`UnsupportedFeatureError`), never silently dropped.
"""

from __future__ import annotations

import abc
import contextvars
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from lmprog.choices import ChoiceLogprobs, ChoicesMethod
from lmprog.constraints import Constraint
from lmprog.errors import UnsupportedFeatureError
from lmprog.ir import SamplingParams
from lmprog.pricing import Price
from lmprog.templates import ChatTemplate
from lmprog.usage import TokenUsage, token_usage


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do. Constraint kinds it enforces are listed by name."""

    constraints: frozenset[str] = frozenset()  # of "regex", "json_schema", "choices", "grammar"
    grammar_syntaxes: frozenset[str] = frozenset()  # of "gbnf", "lark"
    choices_methods: frozenset[str] = frozenset()  # ChoicesMethod.name values it can score
    chat_only: bool = False  # sees messages, not text: gens only inside assistant turns
    continues_turns: bool = True  # a gen can follow text in an assistant turn (its prefill)
    images: bool = False
    streaming: bool = True
    logprobs: bool = False
    prefix_cache: bool = False
    native_tools: bool = False  # takes `tools` and answers `tool_calls` (chat servers that can)
    enforcement: str = "enforced by server"  # how its constraints hold (meta "constraint_path")


@dataclass(frozen=True)
class ImagePart:
    data: bytes = field(repr=False)
    mime_type: str


@dataclass(frozen=True)
class GenerateRequest:
    """One completion: the whole prompt text so far, how to sample, what to enforce."""

    prompt: str
    sampling: SamplingParams
    constraint: Constraint | None = None
    images: tuple[ImagePart, ...] = ()
    return_logprob: bool = False
    top_logprobs_num: int = 0
    messages: tuple[dict[str, Any], ...] = ()  # finished turns, OpenAI-style
    prefill: str = ""  # the open assistant turn's text so far (chat backends continue it)
    tools: tuple[dict[str, Any], ...] = ()  # OpenAI function entries, for a native tool call
    tool_choice: str | None = None  # "auto", "required" or "none", with `tools`


@dataclass
class Generation:
    """What came back: text plus whatever accounting the engine reported."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    logprobs: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # a native call's, raw


# Whether a server parses tool calls itself: "yes"; "if configured" where that depends on how it
# was started (a tool-call parser), which lmprog cannot see, so only gen(tool_path="native")
# uses it; "no".
ToolCallParsing = Literal["yes", "if configured", "no"]


class TextCallback(Protocol):
    """Where a streaming backend sends each new piece of text, with the logprob entries of
    the tokens it adds (as `Generation.logprobs` has them) where the request asked for them
    and the engine streams them."""

    def __call__(self, piece: str, logprobs: Sequence[dict[str, Any]] = ()) -> None: ...


# ----- the retry hook: a backend reports each request it sends again; whoever runs it (a
# budget) may charge or refuse the retry. The transport never imports that policy.

_on_retry: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "lmprog_on_retry", default=None
)


def note_retry() -> None:
    """Called by a backend before it sends a request again. The hook set for the current
    context (`retries_charged_to`) runs first, and may raise to stop the retry."""
    hook = _on_retry.get()
    if hook is not None:
        hook()


@contextmanager
def retries_charged_to(hook: Callable[[], None]) -> Iterator[None]:
    """Within the block, every retry a backend makes calls `hook` first."""
    token = _on_retry.set(hook)
    try:
        yield
    finally:
        _on_retry.reset(token)


# ----- routing: what a request tells a router in front of several engines. The executor sets
# it around each request of a program; the transports (lmprog's JSON client, the OpenAI SDK)
# send it as headers. A context variable rather than a request field, because the transport
# sits under the backend's own request building and a prefix warm-up has no request.

ROUTING_KEY_HEADERS = ("X-SMG-Routing-Key", "x-session-id")  # SGLang's router, vLLM's router
SESSION_TOKEN_HEADER = "x-session-token"  # llm-d: the scheduler's token, sent back as it came


@dataclass
class Affinity:
    """One program's routing identity: every request of the program (its turns, its forks'
    warm-up and branches, its select scoring) carries `key`, so a router keeps the program on
    the worker that holds its prefix. `session_token` is the last one a router answered with."""

    key: str
    session_token: str | None = None


@dataclass(frozen=True)
class Routing:
    """What one request tells a router: its program's affinity and its W3C trace context."""

    affinity: Affinity
    traceparent: str = ""

    def headers(self) -> dict[str, str]:
        headers = dict.fromkeys(ROUTING_KEY_HEADERS, self.affinity.key)
        if self.affinity.session_token:
            headers[SESSION_TOKEN_HEADER] = self.affinity.session_token
        if self.traceparent:
            headers["traceparent"] = self.traceparent
        return headers

    def observe(self, answered: Mapping[str, str]) -> None:
        """Keep the session token a router answered with (`answered`: the reply's headers)."""
        token = answered.get(SESSION_TOKEN_HEADER)
        if token:
            self.affinity.session_token = token


_routing: contextvars.ContextVar[Routing | None] = contextvars.ContextVar(
    "lmprog_routing", default=None
)


def current_routing() -> Routing | None:
    """The routing of the request being sent now, if a program sends it."""
    return _routing.get()


@contextmanager
def routed(routing: Routing) -> Iterator[None]:
    """Within the block, every request a backend sends carries `routing`."""
    token = _routing.set(routing)
    try:
        yield
    finally:
        _routing.reset(token)


class Backend(abc.ABC):
    """Base of every backend. Subclasses set `name` and `capabilities` and implement the
    async methods; `check` and the template lookup come for free."""

    name: str = "backend"
    capabilities: Capabilities = Capabilities()
    image_marker: str = ""  # text the engine expects where an image sits in the prompt
    chat_template_choice: str | ChatTemplate | None = None  # what chat_template= gave
    template_hint: str = ""  # how else a user gives this backend a template
    # what its tokens cost (lp.Price); None: the price table's, for a hosted model (lmprog.budget)
    price: Price | None = None
    _template: ChatTemplate | None = None

    @abc.abstractmethod
    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        """Complete `request.prompt`. With `on_text`, stream: call it with each new piece."""

    async def score_choices(
        self, context: GenerateRequest, choices: tuple[str, ...], method: ChoicesMethod
    ) -> list[ChoiceLogprobs]:
        """Token logprobs of each choice as a continuation of `context` (its prompt, or its
        messages for chat models)."""
        raise UnsupportedFeatureError(self.name, "score select choices")

    async def chat_template(self) -> ChatTemplate:
        """The template that turns roles into text: the one `chat_template=` gave, else the
        model's own (found once)."""
        if self._template is None:
            template = ChatTemplate.given(self.chat_template_choice)
            if template is None:
                template = await self._model_chat_template()
            if template is None:
                hint = f"; or {self.template_hint}" if self.template_hint else ""
                raise UnsupportedFeatureError(
                    self.name,
                    "find the model's chat template to render roles as text",
                    "pass chat_template= (a built-in name such as 'gemma3' or 'chatml', or "
                    f"Jinja source){hint}",
                )
            self._template = template
        return self._template

    async def detected_capabilities(self) -> Capabilities:
        """`capabilities` once the backend knows its server (lp.OpenAI asks on first use)."""
        return self.capabilities

    async def tool_call_parsing(self) -> ToolCallParsing:
        """Whether a gen(tools=...) may send the tools and read back the server's parsed
        `tool_calls` (lp.OpenAI asks its server first)."""
        return "yes" if self.capabilities.native_tools else "no"

    async def warm(self, prompt: str) -> None:  # noqa: B027 - only shared caches need it
        """Put `prompt` in the engine's prefix cache before several requests that share it go
        out at once. Engines whose cache is not shared between requests do nothing."""

    async def concurrency_hint(self) -> int:
        """How many programs run_batch keeps in flight unless told otherwise."""
        return 64

    # ----- optional server administration (refused unless the engine offers it) -----------

    async def ping(self) -> None:  # noqa: B027 - a backend with no server has nothing to reach
        """Raise a BackendError unless the engine can be used (checked before long runs)."""

    async def flush_cache(self) -> None:
        """Empty the engine's prefix cache (benchmarks that must start cold)."""
        raise UnsupportedFeatureError(
            self.name, "flush its prefix cache", "restart the server to start cold"
        )

    async def server_info(self) -> dict[str, Any]:
        """What the engine says about itself (model, version, launch arguments)."""
        raise UnsupportedFeatureError(
            self.name, "report server info", "query the server's own endpoints"
        )

    def cached_chat_template(self) -> ChatTemplate | None:
        return self._template

    @property
    def token_usage(self) -> TokenUsage:
        """Prompt and completion tokens of every request this backend served, as the engine
        reported them (SGLang's `backend.token_usage`; `.reset()` starts over)."""
        return token_usage(self)

    async def _model_chat_template(self) -> ChatTemplate | None:
        """The model's own template, where the engine or its files tell it (called once)."""
        return None

    async def aclose(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release connections; the backend may be used again afterwards."""

    def check_constraint(self, constraint: Constraint | None) -> None:
        if constraint is None:
            return
        if constraint.kind not in self.capabilities.constraints:
            raise UnsupportedFeatureError(
                self.name,
                f"enforce a {constraint.kind} constraint ({constraint.description})",
                "use a backend that enforces it, such as lp.LlamaCpp or lp.Local",
            )
        if (
            constraint.kind == "grammar"
            and constraint.grammar_syntax not in self.capabilities.grammar_syntaxes
        ):
            raise UnsupportedFeatureError(
                self.name,
                f"enforce a {constraint.grammar_syntax.upper()} grammar",
                f"write it as {' or '.join(sorted(self.capabilities.grammar_syntaxes)) or '-'}",
            )

    def check_choices_method(self, method: ChoicesMethod) -> None:
        if method.name not in self.capabilities.choices_methods:
            raise UnsupportedFeatureError(self.name, f"score select() with {method!r}")

    def check_images(self) -> None:
        if not self.capabilities.images:
            raise UnsupportedFeatureError(
                self.name, "take images", "start the server with a multimodal projector (mmproj)"
            )

    def __repr__(self) -> str:
        return f"<lmprog {self.name}>"


class WrappedBackend(Backend):
    """Passes everything to `inner`. Wrappers that add one thing (budgets, metering, batch
    scheduling) subclass it and override only the methods they change."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.image_marker = inner.image_marker

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """The inner backend's, read each time (lp.OpenAI learns its server's on first use)."""
        return self.inner.capabilities

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        return await self.inner.generate(request, on_text)

    async def score_choices(
        self, context: GenerateRequest, choices: tuple[str, ...], method: ChoicesMethod
    ) -> list[ChoiceLogprobs]:
        return await self.inner.score_choices(context, choices, method)

    async def warm(self, prompt: str) -> None:
        await self.inner.warm(prompt)

    async def tool_call_parsing(self) -> ToolCallParsing:
        return await self.inner.tool_call_parsing()

    async def detected_capabilities(self) -> Capabilities:
        return await self.inner.detected_capabilities()

    async def chat_template(self) -> ChatTemplate:
        return await self.inner.chat_template()

    def cached_chat_template(self) -> ChatTemplate | None:
        return self.inner.cached_chat_template()

    async def concurrency_hint(self) -> int:
        return await self.inner.concurrency_hint()

    async def ping(self) -> None:
        await self.inner.ping()

    async def flush_cache(self) -> None:
        await self.inner.flush_cache()

    async def server_info(self) -> dict[str, Any]:
        return await self.inner.server_info()

    def check_constraint(self, constraint: Constraint | None) -> None:
        self.inner.check_constraint(constraint)

    def check_choices_method(self, method: ChoicesMethod) -> None:
        self.inner.check_choices_method(method)

    def check_images(self) -> None:
        self.inner.check_images()
