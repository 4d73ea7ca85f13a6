"""lp.OpenAI: the OpenAI API or any OpenAI-compatible server.

Completion models get the program as text, like the native backends. Chat models get messages:
a gen ends the assistant turn it sits in; text already written in that turn is sent as an
assistant prefill where the server can continue a final message, and refused where it cannot.
What the server enforces and accepts is its `Dialect` (lmprog.backends.dialect), declared by
the server's own module and detected once (lmprog.backends.detect); this module never branches
on which server it is. Anything the dialect does not enforce raises UnsupportedFeatureError
before the request.

Self-hosted engines are sent plain JSON by lmprog's client; the OpenAI API and other servers go
through the official SDK, which retries 429 (honouring Retry-After), 5xx and connection errors
with exponential backoff, up to `max_retries`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

import httpx2
import openai
import pydantic_core

from lmprog.backends.base import (
    Backend,
    Capabilities,
    GenerateRequest,
    Generation,
    TextCallback,
    ToolCallParsing,
    current_routing,
)
from lmprog.backends.dialect import (
    CHOICE_FIELD,
    OPENAI_API,
    SAMPLING_EXTRAS,
    Dialect,
    response_format,
)
from lmprog.backends.http import JsonClient, Secret
from lmprog.choices import ChoiceLogprobs, ChoicesMethod
from lmprog.constraints import choices_constraint, schema_constraint
from lmprog.errors import (
    BackendError,
    BackendResponseError,
    BackendTimeoutError,
    BackendUnavailableError,
    UnsupportedFeatureError,
)
from lmprog.ir import SamplingParams
from lmprog.loop import close_with, running_or_lmprog_loop
from lmprog.templates import ChatTemplate

_COMPLETION_MODELS = ("instruct", "davinci", "babbage", "text-")
_PATHS = {"chat": "/chat/completions", "completion": "/completions"}
# Idle connections are dropped after 2 s, before servers drop them (uvicorn and llama.cpp close
# idle keep-alive connections after 5 s): reusing one the server had just closed could leave a
# request waiting for an answer that never comes (seen with vLLM under a batch).
_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=2.0)


class OpenAI(Backend):
    """`model` at the OpenAI API, or at `base_url` (any OpenAI-compatible server).

    model_name= is SGLang's spelling of model=. is_chat_model: None guesses: the OpenAI API
    serves chat models (but "*instruct*" ones); a server at `base_url` is used through its
    completions endpoint, which keeps the program's text byte-exact and its prefix cacheable.
    server: the server's kind ("openai", "vllm", "llamacpp", "sglang", "generic", ... as
    `lmprog.backends.detect` lists them) or its Dialect; None detects it on first use.
    """

    template_hint = "is_chat_model=True"

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        is_chat_model: bool | None = None,
        *,
        model_name: str | None = None,
        server: str | Dialect | None = None,
        chat_template: str | ChatTemplate | None = None,
        timeout: float = 600.0,
        max_retries: int = 3,
        **client_kwargs: Any,
    ) -> None:
        if model_name is not None:  # SGLang's keyword
            if model is not None and model != model_name:
                raise TypeError("give the model once: model= or model_name= (SGLang's keyword)")
            model = model_name
        if model is None:
            raise TypeError("lp.OpenAI needs a model: model= (or SGLang's model_name=)")
        self.model = model
        self.base_url = base_url.rstrip("/") if base_url else None
        if is_chat_model is None:
            is_chat_model = base_url is None and not any(m in model for m in _COMPLETION_MODELS)
        self.is_chat_model = is_chat_model
        if server is None and base_url is None:
            server = OPENAI_API
        self._dialect: Dialect | None = _dialect_of(server) if server is not None else None
        # Until detection, assume what the most capable servers take; checked again after.
        self.capabilities = (self._dialect or BEFORE_DETECTION).capabilities(is_chat_model)
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        self.name = f"lp.OpenAI({model!r}{where})"
        self.chat_template_choice = chat_template
        self._api_key = Secret(api_key or ("EMPTY" if base_url else None))
        self._client_args: dict[str, Any] = {
            "base_url": self.base_url,
            "timeout": timeout,
            "max_retries": max_retries,
            **client_kwargs,
        }
        self._sdk_options = bool(client_kwargs)
        self._client: openai.AsyncOpenAI | None = None
        self._api_client: JsonClient | None = None
        self._root_client: JsonClient | None = None
        self._detect_lock: asyncio.Lock | None = None
        self._tool_calls: ToolCallParsing | None = None

    def __repr__(self) -> str:
        return f"<lmprog {self.name}>"  # never the key

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The SDK client, made on lmprog's loop the first time it is needed."""
        if self._client is None:
            # aiohttp under the SDK: twice the requests/s of its default httpx2 pool
            self._client = openai.AsyncOpenAI(
                api_key=self._api_key.reveal(),
                http_client=openai.DefaultAioHttpClient(limits=_LIMITS),
                **self._client_args,
            )
            close_with(self, running_or_lmprog_loop(), self._client.close)
        return self._client

    # ----- what the server is --------------------------------------------------------------

    async def dialect(self) -> Dialect:
        """What the server accepts, detected once (lmprog.backends.detect)."""
        if self._dialect is None:
            self._detect_lock = self._detect_lock or asyncio.Lock()
            async with self._detect_lock:
                if self._dialect is None:
                    # detect lists every server module, vLLM's among them, which builds on
                    # this one: imported here, not at the top
                    from lmprog.backends.detect import detect

                    assert self.base_url is not None
                    dialect = await detect(self.base_url.removesuffix("/v1"), self.name)
                    self.capabilities = dialect.capabilities(self.is_chat_model)
                    self._dialect = dialect
        return self._dialect

    async def detected_capabilities(self) -> Capabilities:
        await self.dialect()
        return self.capabilities

    async def tool_call_parsing(self) -> ToolCallParsing:
        """Chat requests to a server that parses tool calls (its dialect says, asked once)."""
        if not self.is_chat_model:
            return "no"
        if self._tool_calls is None:
            self._tool_calls = await (await self.dialect()).tool_calls(self)
        return self._tool_calls

    async def server(self) -> str:
        """Which kind of server this is ("vllm", "llamacpp", "generic", ...)."""
        return (await self.dialect()).kind

    async def models(self) -> list[str]:
        """The model ids the server lists."""
        try:
            return [m.id async for m in self.client.models.list()]
        except openai.OpenAIError as exc:
            raise _sdk_error(self, exc) from exc

    async def ping(self) -> None:
        """The server answers, and serves this model (llama-server serves any name)."""
        dialect = await self.dialect()
        served = await self.models()
        if dialect.serves_any_model or self.model in served:
            return
        shown = ", ".join(served[:10]) + (" ..." if len(served) > 10 else "")
        raise BackendError(f"{self.name}: the server does not serve {self.model!r}; it has {shown}")

    async def server_info(self) -> dict[str, Any]:
        dialect = await self.dialect()
        return {"server": dialect.kind, "label": dialect.label, "models": await self.models()}

    async def _model_chat_template(self) -> ChatTemplate | None:
        """Chat models never see this template: it only lays out `state.text()` (ChatML).
        Completion models need the model's own, where the server tells it."""
        if self.is_chat_model:
            return ChatTemplate.builtin("chatml")
        dialect = await self.dialect()
        return await dialect.chat_template(self)

    # the dialect's view of the server (lmprog.backends.dialect.Server)

    async def get(self, path: str) -> Any:
        return await self._root().get(path)

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        return await self._root().post(path, body)

    def _root(self) -> JsonClient:
        """The server's own endpoints beside the OpenAI ones (/props, /tokenize, ...)."""
        if self._root_client is None:
            assert self.base_url is not None
            root = self.base_url.removesuffix("/v1")
            label = self._dialect.label if self._dialect else self.name
            self._root_client = JsonClient(root, label, self._client_args["timeout"], self._api_key)
        return self._root_client

    # ----- generation ----------------------------------------------------------------------

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        dialect = await self.dialect()
        self._check_generates(dialect)
        self.check_constraint(request.constraint)
        if (request.return_logprob or request.top_logprobs_num) and not dialect.logprobs:
            raise UnsupportedFeatureError(
                self.name, f"return logprobs ({dialect.label} ignores the request)"
            )
        cut_at = () if dialect.trims_stop else request.sampling.stop or ()
        if not self.is_chat_model:
            body = self._completion_body(request, dialect)
            return await self._send("completion", body, on_text, cut_at=tuple(cut_at))
        body = self._chat_body(request, dialect)
        if request.tools:
            if await self.tool_call_parsing() == "no":
                raise UnsupportedFeatureError(
                    self.name,
                    f"parse tool calls ({dialect.label} here does not)",
                    'use gen(..., tool_path="constrained")',
                )
            generation = await self._send("chat", body, None)  # a call is not streamed
            if on_text is not None and generation.text:
                on_text(generation.text)
            return generation
        if "response_format" in body and request.constraint.kind == "choices":  # type: ignore[union-attr]
            # The choice comes wrapped in a JSON object: unwrap it, then show it.
            generation = await self._send("chat", body, None)
            generation.text = json.loads(generation.text)[CHOICE_FIELD]
            if on_text is not None:
                on_text(generation.text)
            return generation
        echoed = request.prefill if dialect.echoes_prefill else ""
        return await self._send("chat", body, on_text, echoed=echoed, cut_at=tuple(cut_at))

    def _check_generates(self, dialect: Dialect) -> None:
        if not dialect.generates:
            raise UnsupportedFeatureError(
                self.name,
                f"generate text: {dialect.label} serves embeddings only",
                "use it with lp.embed(texts, backend=...)",
            )

    def _sampling(
        self, request: GenerateRequest, dialect: Dialect
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Standard OpenAI parameters, and the extras only some servers accept."""
        sampling = request.sampling
        standard = {
            "model": self.model,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stop": list(sampling.stop) if sampling.stop else None,
            "seed": sampling.seed,
            "frequency_penalty": sampling.frequency_penalty,
            "presence_penalty": sampling.presence_penalty,
        }
        extra = {name: getattr(sampling, name) for name in SAMPLING_EXTRAS}
        extra = {k: list(v) if isinstance(v, tuple) else v for k, v in extra.items() if v}
        refused = sorted(set(extra) - dialect.sampling_extras)
        if refused:
            raise UnsupportedFeatureError(
                self.name,
                f"honour {', '.join(refused)} ({dialect.label} ignores or rejects them)",
                "leave them unset for this server",
            )
        return {k: v for k, v in standard.items() if v is not None}, {
            **dialect.sampling_fields(sampling),
            **extra,
        }

    def _completion_body(self, request: GenerateRequest, dialect: Dialect) -> dict[str, Any]:
        standard, extra = self._sampling(request, dialect)
        if request.images:
            raise UnsupportedFeatureError(self.name, "take images through completions")
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "max_tokens": request.sampling.max_new_tokens,
            **standard,
        }
        if request.return_logprob or request.top_logprobs_num:
            body["logprobs"] = max(request.top_logprobs_num, 1)
        if request.constraint is not None:
            extra.update(dialect.constraint_fields(request.constraint, chat=False))
        body["extra_body"] = extra
        return body

    def _chat_body(self, request: GenerateRequest, dialect: Dialect) -> dict[str, Any]:
        standard, extra = self._sampling(request, dialect)
        messages = [_message(m, request) for m in request.messages]
        if request.prefill:
            if dialect.continue_fields is None:
                raise UnsupportedFeatureError(
                    self.name,
                    "continue an assistant turn that already has text",
                    "start the gen at the beginning of lp.assistant(...), one gen per turn",
                )
            messages.append({"role": "assistant", "content": request.prefill})
            extra.update(dialect.continue_fields)
        body: dict[str, Any] = {
            "messages": messages,
            dialect.max_tokens_key: request.sampling.max_new_tokens,
            **standard,
        }
        if request.return_logprob or request.top_logprobs_num:
            body["logprobs"] = True
            if request.top_logprobs_num:
                body["top_logprobs"] = request.top_logprobs_num
        if request.tools:
            body.update(tools=list(request.tools), tool_choice=request.tool_choice)
            body["parallel_tool_calls"] = False  # a gen makes one call
        if request.constraint is not None:
            fields = dialect.constraint_fields(request.constraint, chat=True)
            body.update({k: v for k, v in fields.items() if k == "response_format"})
            extra.update({k: v for k, v in fields.items() if k != "response_format"})
        body["extra_body"] = extra
        return body

    async def _send(
        self,
        kind: Literal["chat", "completion"],
        body: dict[str, Any],
        on_text: TextCallback | None,
        echoed: str = "",
        cut_at: tuple[str, ...] = (),
    ) -> Generation:
        """Send one request; `echoed` is text the server repeats before its answer, `cut_at`
        the stop strings it leaves in the text."""
        cut = _StopCut(cut_at, on_text) if on_text is not None and cut_at else None
        if on_text is None:
            generation = _generation(await self._create(kind, body), kind)
        else:
            generation = await self._stream(kind, body, _Skip(echoed, cut or on_text))
        if echoed:
            if not generation.text.startswith(echoed):
                raise BackendResponseError(
                    f"{self.name} did not continue the assistant prefill {echoed[-40:]!r}"
                )
            generation.text = generation.text[len(echoed) :]
        if cut_at:
            generation.text = generation.text[: _first_stop(generation.text, cut_at)]
            if cut is not None:
                cut.flush()
        return generation

    async def _stream(self, kind: str, body: dict[str, Any], on_text: TextCallback) -> Generation:
        pieces: list[str] = []
        entries: list[dict[str, Any]] = []
        finish: str | None = None
        usage: Any = None
        async for chunk in self._create_stream(kind, body):
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                piece = delta.get("content") if kind == "chat" else choice.get("text")
                added = _logprobs(choice.get("logprobs")) or []
                entries += added
                if piece or added:
                    pieces.append(piece or "")
                    on_text(piece or "", added)
                finish = choice.get("finish_reason") or finish
        if finish is None:
            raise BackendResponseError(
                f"{self.name}'s stream ended before the answer did (no finish_reason); "
                f"got {''.join(pieces)[:80]!r}"
            )
        return Generation("".join(pieces), finish, *_usage(usage), logprobs=entries or None)

    # ----- transport: lmprog's JSON client for self-hosted engines, else the SDK -----------

    def _direct(self) -> bool:
        """Self-hosted engines are sent plain JSON by lmprog's own client: the SDK's request
        building and response parsing were 4/5 of the client's time per request against a
        fast server. The OpenAI API, other servers, and SDK options given as keyword
        arguments keep the SDK."""
        return self._dialect is not None and self._dialect.self_hosted and not self._sdk_options

    def _api(self) -> JsonClient:
        if self._api_client is None:
            assert self.base_url is not None and self._dialect is not None
            self._api_client = JsonClient(
                self.base_url,
                self._dialect.label,
                self._client_args["timeout"],
                self._api_key,
                self._client_args["max_retries"],
            )
        return self._api_client

    async def _create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """One request to /completions or /chat/completions; the answer as JSON."""
        if self._direct():
            answer = await self._api().post(_PATHS[kind], _flat(body))
            if not isinstance(answer, dict):
                raise BackendResponseError(f"{self.name} answered {str(answer)[:200]!r}")
            return answer
        with self._sdk_errors():
            response = await self._endpoint(kind).create(**body, **_routing_headers())
        return response.model_dump()  # type: ignore[no-any-return]

    async def _create_stream(
        self, kind: str, body: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """The chunks of one streamed request, as JSON."""
        options = {"stream_options": {"include_usage": True}}
        if self._direct():
            events = self._api().stream_events(
                _PATHS[kind], {**_flat(body), **options, "stream": True}
            )
            async for event in events:
                yield event
            return
        with self._sdk_errors():
            stream = await self._endpoint(kind).create(
                **body, **options, **_routing_headers(), stream=True
            )
            async for chunk in stream:
                yield chunk.model_dump()

    def _endpoint(self, kind: str) -> Any:
        return self.client.chat.completions if kind == "chat" else self.client.completions

    @contextlib.contextmanager
    def _sdk_errors(self) -> Iterator[None]:
        """The SDK's failures as lmprog's errors."""
        try:
            yield
        except openai.OpenAIError as exc:
            raise _sdk_error(self, exc) from exc
        except ValueError as exc:  # the SDK's JSON decoding of a body that is not JSON
            raise BackendResponseError(
                f"{self.name} sent a body that is not the JSON it should be: {exc}"
            ) from exc

    async def warm(self, prompt: str) -> None:
        """Servers with one prefix cache for all requests: compute the prefix once."""
        if self.is_chat_model or not (await self.dialect()).shared_cache:
            return
        body = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0}
        await self._create("completion", body)

    # ----- select ----------------------------------------------------------------------------

    async def score_choices(
        self, context: GenerateRequest, choices: tuple[str, ...], method: ChoicesMethod
    ) -> list[ChoiceLogprobs]:
        """The dialect's exact scores where it has them (vLLM's prompt logprobs); elsewhere
        the server generates one of the choices under a constraint, or, on chat models with
        structured outputs but no choice constraint (most hosted models), a JSON object whose
        one field is an enum of the choices. The pick is reported as the only choice with a
        score, and the path taken in its `path`."""
        dialect = await self.dialect()
        self._check_generates(dialect)
        if not self.is_chat_model:
            exact = await dialect.score_choices(self, context, choices, method)
            if exact is not None:
                return exact
        self.check_choices_method(method)
        enforced = self.capabilities.constraints
        if "choices" in enforced:
            constraint, path = choices_constraint(list(choices)), "enforced by server"
        elif "json_schema" in enforced and self.is_chat_model:
            wrapped = response_format(choices_constraint(list(choices)))
            constraint = schema_constraint(wrapped["json_schema"]["schema"])
            path = "json enum"
        else:
            raise UnsupportedFeatureError(
                self.name,
                "constrain or score select() choices",
                "use a vLLM or llama.cpp server, or a chat model with structured outputs",
            )
        # JSON grammars allow whitespace between tokens, and small models fill it
        room = max(len(c) for c in choices) + (160 if path == "json enum" else 8)
        request = GenerateRequest(
            prompt=context.prompt,
            sampling=SamplingParams(max_new_tokens=room, temperature=0),
            constraint=constraint,
            messages=context.messages,
            prefill=context.prefill,
            images=context.images,
        )
        text = (await self.generate(request)).text
        picked = _enum_pick(text, choices) if path == "json enum" else text
        return [
            ChoiceLogprobs(c, (0.0 if c == picked else float("-inf"),), (c,), path=path)
            for c in choices
        ]

    # ----- embeddings --------------------------------------------------------------------------

    async def aembed(self, texts: list[str]) -> list[list[float]]:
        try:
            response = await self.client.embeddings.create(model=self.model, input=texts)
        except openai.OpenAIError as exc:
            raise _sdk_error(self, exc) from exc
        return [list(item.embedding) for item in sorted(response.data, key=lambda d: d.index)]

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        for client in (self._api_client, self._root_client):
            if client is not None:
                await client.aclose()


# Before detection: what the most capable servers take, so that a program checks against
# something; the real capabilities replace these on first use.
BEFORE_DETECTION = Dialect(
    kind="undetected",
    label="a server not yet probed",
    completion_constraints=frozenset({"regex", "json_schema", "choices", "grammar"}),
    chat_constraints=frozenset({"regex", "json_schema", "choices", "grammar"}),
    grammar_syntaxes=frozenset({"gbnf", "lark"}),
    unconditional_scores=True,
    native_tools=True,
)


def _dialect_of(server: str | Dialect) -> Dialect:
    if isinstance(server, Dialect):
        return server
    from lmprog.backends.detect import by_kind  # see OpenAI.dialect

    return by_kind(server)


# ----- request and response shapes ------------------------------------------------------------


class _Skip:
    """Passes streamed text on, minus the first `count` characters (an echoed prefill)."""

    def __init__(self, echoed: str, on_text: TextCallback) -> None:
        self._left = len(echoed)
        self._on_text = on_text

    def __call__(self, piece: str, logprobs: Sequence[dict[str, Any]] = ()) -> None:
        if self._left:
            dropped = min(self._left, len(piece))
            piece, self._left = piece[dropped:], self._left - dropped
        if piece or logprobs:
            self._on_text(piece, logprobs)


class _StopCut:
    """Passes streamed text on up to the first stop string (which the server left in), holding
    back the few characters that might be the start of one until the next piece says."""

    def __init__(self, stops: tuple[str, ...], on_text: TextCallback) -> None:
        self._stops = stops
        self._hold = max(len(s) for s in stops) - 1
        self._on_text = on_text
        self._pending = ""
        self._stopped = False

    def __call__(self, piece: str, logprobs: Sequence[dict[str, Any]] = ()) -> None:
        if self._stopped:
            return
        self._pending += piece
        at = _first_stop(self._pending, self._stops)
        if at < len(self._pending):
            self._stopped = True
            self._emit(self._pending[:at], logprobs)
            return
        ready = max(len(self._pending) - self._hold, 0)
        self._emit(self._pending[:ready], logprobs)
        self._pending = self._pending[ready:]

    def flush(self) -> None:
        if not self._stopped:
            self._emit(self._pending)
        self._pending = ""

    def _emit(self, text: str, logprobs: Sequence[dict[str, Any]] = ()) -> None:
        if text or logprobs:
            self._on_text(text, logprobs)


def _first_stop(text: str, stops: tuple[str, ...]) -> int:
    """Where the earliest stop string starts in `text` (its length if none does)."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found, default=len(text))


def _message(message: dict[str, Any], request: GenerateRequest) -> dict[str, Any]:
    content = message["content"]
    if content is None or isinstance(content, str):  # None: an assistant turn that only calls
        calls: dict[str, Any] = {
            k: message[k] for k in ("tool_calls", "tool_call_id") if k in message
        }
        return {"role": message["role"], "content": content, **calls}
    parts = []
    for part in content:
        if part["type"] == "image":
            image = request.images[part["image_index"]]
            data = base64.b64encode(image.data).decode()
            parts.append(
                {"type": "image_url", "image_url": {"url": f"data:{image.mime_type};base64,{data}"}}
            )
        else:
            parts.append({"type": "text", "text": part["text"]})
    return {"role": message["role"], "content": parts}


def _routing_headers() -> dict[str, Any]:
    """The SDK's `extra_headers` for the program sending this request (a router reads them)."""
    routing = current_routing()
    return {"extra_headers": routing.headers()} if routing is not None else {}


def _flat(body: dict[str, Any]) -> dict[str, Any]:
    """An SDK call's keyword arguments as the JSON body it sends (extra_body merged in)."""
    flat = {k: v for k, v in body.items() if k != "extra_body"}
    flat.update(body.get("extra_body") or {})
    return flat


def _usage(usage: Any) -> tuple[int | None, int | None, int | None]:
    if not isinstance(usage, dict):
        return None, None, None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return usage.get("prompt_tokens"), usage.get("completion_tokens"), cached


def _generation(response: dict[str, Any], kind: str) -> Generation:
    try:
        choice = response["choices"][0]
        text = choice["message"]["content"] if kind == "chat" else choice["text"]
        return Generation(
            text or "",
            choice.get("finish_reason"),
            *_usage(response.get("usage")),
            logprobs=_logprobs(choice.get("logprobs")),
            tool_calls=(choice["message"].get("tool_calls") or []) if kind == "chat" else [],
        )
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise BackendResponseError(
            f"the server answered without a usable choice ({exc!r}): {str(response)[:200]}"
        ) from exc


def _logprobs(logprobs: Any) -> list[dict[str, Any]] | None:
    """Both shapes: chat's `content[i] = {token, logprob, top_logprobs}` (also what
    llama-server returns on completions) and the legacy completions lists."""
    if not isinstance(logprobs, dict):
        return None
    content = logprobs.get("content")
    if content:
        return [
            {
                "token": item["token"],
                "logprob": item["logprob"],
                **({"id": item["id"]} if "id" in item else {}),  # llama-server adds ids
                **(
                    {"top_logprobs": [_entry(top) for top in item["top_logprobs"]]}
                    if item.get("top_logprobs")
                    else {}
                ),
            }
            for item in content
        ]
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    return [
        {
            "token": token,
            "logprob": value,
            **({"top_logprobs": _ranked(top)} if top else {}),
        }
        for token, value, top in zip(tokens, values, tops, strict=False)
    ]


def _entry(item: dict[str, Any]) -> dict[str, Any]:
    return {"token": item["token"], "logprob": item["logprob"], "id": item.get("id")}


def _ranked(top: dict[str, float]) -> list[dict[str, Any]]:
    """The legacy completions' `{token: logprob}` alternatives, most likely first."""
    ranked = sorted(top.items(), key=lambda pair: -pair[1])
    return [{"token": token, "logprob": value} for token, value in ranked]


def _sdk_error(backend: Backend, exc: openai.OpenAIError) -> BackendError:
    """The SDK's errors as lmprog's, with the server's message but never a credential."""
    if isinstance(exc, openai.APITimeoutError):
        return BackendTimeoutError(f"{backend.name} did not answer in time (after retries)")
    if isinstance(exc, openai.APIConnectionError):
        return BackendUnavailableError(
            f"cannot reach {backend.name} (after retries): {exc.__cause__ or exc}; is the server "
            "running and the base_url right?"
        )
    if isinstance(exc, openai.APIStatusError):
        return BackendResponseError(
            f"{backend.name} answered HTTP {exc.status_code}: {_status_message(exc)}",
            exc.status_code,
        )
    return BackendResponseError(f"{backend.name} sent a response lmprog could not use: {exc}")


def _status_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])[:500]
        if "message" in body:
            return str(body["message"])[:500]
    return str(exc.message)[:500]


def _enum_pick(text: str, choices: tuple[str, ...]) -> str:
    """The choice in `{"choice": ...}`, read as soon as its string is complete: small models
    pad structured output with whitespace and may run out of tokens before the closing `}`."""
    try:
        picked = pydantic_core.from_json(text, allow_partial=True).get(CHOICE_FIELD)
    except (ValueError, AttributeError):
        picked = None
    if picked not in choices:
        raise BackendResponseError(f"the server's JSON enum answer names no choice: {text[:120]!r}")
    return str(picked)
