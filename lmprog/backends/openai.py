"""lp.OpenAI: the OpenAI API or any OpenAI-compatible server, on the official `openai` SDK.

Completion models get the program as text, like the native backends. Chat models get messages:
a gen ends the assistant turn it sits in; text already written in that turn is sent as an
assistant prefill where the server can continue a final message (vLLM, llama.cpp), and refused
where it cannot (the OpenAI API). Constraints use what the server enforces, detected once:

| server   | completions                              | chat                                   |
| -------- | ---------------------------------------- | -------------------------------------- |
| openai   | none                                     | json_schema, choices (structured outputs) |
| vllm     | regex, json_schema, choices, grammar     | the same (`structured_outputs`)        |
| llamacpp | regex, json_schema, choices, grammar     | the same (`grammar`, `json_schema`)    |
| sglang   | regex, json_schema, choices, grammar     | the same (`regex`, `json_schema`, `ebnf`) |
| generic  | none                                     | json_schema (response_format)          |

Anything else raises UnsupportedFeatureError before the request. The SDK retries 429 (honouring
Retry-After), 5xx and connection errors with exponential backoff, up to `max_retries`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import httpx
import httpx2
import openai
import pydantic_core

from lmprog.backends.base import (
    Backend,
    Capabilities,
    GenerateRequest,
    Generation,
    TextCallback,
)
from lmprog.backends.http import JsonClient, Secret
from lmprog.backends.llamacpp import constraint_fields
from lmprog.backends.sglang import constraint_params
from lmprog.choices import ChoiceLogprobs, ChoicesMethod
from lmprog.constraints import Constraint, choices_constraint, schema_constraint
from lmprog.errors import (
    BackendError,
    BackendResponseError,
    BackendTimeoutError,
    BackendUnavailableError,
    UnsupportedFeatureError,
)
from lmprog.ir import SamplingParams
from lmprog.loop import close_with, running_or_lmprog_loop
from lmprog.prefix import shared_prefix_length
from lmprog.templates import ChatTemplate

Server = Literal["openai", "vllm", "llamacpp", "sglang", "generic"]

_ALL = frozenset({"regex", "json_schema", "choices", "grammar"})
_ENFORCED: dict[tuple[Server, bool], frozenset[str]] = {
    ("openai", False): frozenset(),
    ("openai", True): frozenset({"json_schema", "choices"}),
    ("vllm", False): _ALL,
    ("vllm", True): _ALL,
    ("llamacpp", False): _ALL,
    ("llamacpp", True): _ALL,
    ("sglang", False): _ALL,
    ("sglang", True): _ALL,
    ("generic", False): frozenset(),
    ("generic", True): frozenset({"json_schema"}),
}
_GRAMMARS: dict[Server, frozenset[str]] = {
    "vllm": frozenset({"gbnf", "lark"}),
    "llamacpp": frozenset({"gbnf"}),
    "sglang": frozenset({"gbnf"}),  # its `ebnf` field takes GBNF-style rules
}
_COMPLETION_MODELS = ("instruct", "davinci", "babbage", "text-")
_SELF_HOSTED: dict[Server, str] = {"vllm": "vLLM", "llamacpp": "llama-server", "sglang": "SGLang"}
_PATHS = {"chat": "/chat/completions", "completion": "/completions"}
# Idle connections are dropped after 2 s, before servers drop them (uvicorn and llama.cpp close
# idle keep-alive connections after 5 s): reusing one the server had just closed could leave a
# request waiting for an answer that never comes (seen with vLLM under a batch).
_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=2.0)


def _capabilities(server: Server, chat: bool) -> Capabilities:
    scoring = {"token_length_normalized", "greedy_token_selection"}
    if server == "vllm" and not chat:  # exact prompt logprobs: every method
        scoring.add("unconditional_likelihood_normalized")
    return Capabilities(
        constraints=_ENFORCED[(server, chat)],
        grammar_syntaxes=_GRAMMARS.get(server, frozenset()),
        choices_methods=frozenset(scoring),
        chat_only=chat,
        images=chat,
        streaming=True,
        logprobs=True,
        prefix_cache=server in ("vllm", "llamacpp", "sglang"),
    )


class OpenAI(Backend):
    """`model` at the OpenAI API, or at `base_url` (any OpenAI-compatible server).

    is_chat_model: None guesses: the OpenAI API serves chat models (but "*instruct*" ones);
    a server at `base_url` is used through its completions endpoint, which keeps the program's
    text byte-exact and its prefix cacheable. server: what the server enforces ("openai",
    "vllm", "llamacpp", "sglang", "generic"); None detects it on first use.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        is_chat_model: bool | None = None,
        *,
        server: Server | None = None,
        chat_template: str | ChatTemplate | None = None,
        timeout: float = 600.0,
        max_retries: int = 3,
        **client_kwargs: Any,
    ) -> None:
        self.model = model
        self.base_url = base_url.rstrip("/") if base_url else None
        if is_chat_model is None:
            is_chat_model = base_url is None and not any(m in model for m in _COMPLETION_MODELS)
        self.is_chat_model = is_chat_model
        self._server: Server | None = server or ("openai" if base_url is None else None)
        self.capabilities = _capabilities(self._server or "vllm", is_chat_model)
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        self.name = f"lp.OpenAI({model!r}{where})"
        self._template_choice = chat_template
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
        self._native_client: JsonClient | None = None
        self._detect_lock: asyncio.Lock | None = None

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

    async def server(self) -> Server:
        """Which kind of server this is, probed once: vLLM answers /version, llama.cpp /props."""
        if self._server is None:
            self._detect_lock = self._detect_lock or asyncio.Lock()
            async with self._detect_lock:
                if self._server is None:
                    self._server = await self._probe()
                    self.capabilities = _capabilities(self._server, self.is_chat_model)
        return self._server

    async def _probe(self) -> Server:
        assert self.base_url is not None
        root = self.base_url.removesuffix("/v1")
        async with httpx.AsyncClient(timeout=10) as http:
            probes = (("/get_server_info", "sglang"), ("/version", "vllm"), ("/props", "llamacpp"))
            for path, kind in probes:
                try:
                    response = await http.get(root + path)
                except httpx.HTTPError as exc:
                    raise _transport_error(self, exc) from exc
                if response.status_code == 200:
                    body = response.json()
                    if kind == "vllm" and isinstance(body, dict) and "version" in body:
                        return "vllm"
                    if kind == "llamacpp" and isinstance(body, dict) and "total_slots" in body:
                        return "llamacpp"
                    if kind == "sglang" and isinstance(body, dict):
                        return "sglang"
        return "generic"

    async def models(self) -> list[str]:
        """The model ids the server lists."""
        try:
            return [m.id async for m in self.client.models.list()]
        except openai.OpenAIError as exc:
            raise _sdk_error(self, exc) from exc

    async def _load_chat_template(self) -> ChatTemplate:
        """Chat models never see this template: it only lays out `state.text()` (ChatML).
        Completion models need the model's own: give it as chat_template=."""
        given = ChatTemplate.given(self._template_choice)
        if given is not None:
            return given
        if self.is_chat_model:
            return ChatTemplate.builtin("chatml")
        template = await self._server_template()
        if template is None:
            raise UnsupportedFeatureError(
                self.name,
                f"find the chat template of {self.model!r} to render roles as text",
                "pass chat_template= (a built-in name such as 'chatml' or Jinja source), or "
                "is_chat_model=True",
            )
        return template

    async def _server_template(self) -> ChatTemplate | None:
        """The model's own template, where the server tells it (llama.cpp's /props) or its
        model folder is readable from here (vLLM's /v1/models `root`)."""
        server = await self.server()
        if server == "llamacpp":
            assert self.base_url is not None
            async with httpx.AsyncClient(timeout=30) as http:
                props = (await http.get(self.base_url.removesuffix("/v1") + "/props")).json()
            source = props.get("chat_template")
            return ChatTemplate(source, name="server") if source else None
        if server == "vllm":
            try:
                listed = [m async for m in self.client.models.list()]
            except openai.OpenAIError as exc:
                raise _sdk_error(self, exc) from exc
            served = next((m for m in listed if m.id == self.model), None)
            root = getattr(served, "root", None)
            return ChatTemplate.from_model_dir(root) if root else None
        return None

    # ----- generation ----------------------------------------------------------------------

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        server = await self.server()
        self.check_constraint(request.constraint)
        if not self.is_chat_model:
            return await self._send("completion", self._completion_body(request, server), on_text)
        body = self._chat_body(request, server)
        if "response_format" in body and request.constraint.kind == "choices":  # type: ignore[union-attr]
            # The choice comes wrapped in a JSON object: unwrap it, then show it.
            generation = await self._send("chat", body, None)
            generation.text = json.loads(generation.text)["lmprog_choice"]
            if on_text is not None:
                on_text(generation.text)
            return generation
        if server == "llamacpp" and request.prefill:
            # llama-server repeats the prefill at the start of its answer: drop it.
            return await self._send("chat", body, on_text, echoed=request.prefill)
        return await self._send("chat", body, on_text)

    def _sampling(self, request: GenerateRequest) -> tuple[dict[str, Any], dict[str, Any]]:
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
        extra = {
            "top_k": sampling.top_k,
            "min_p": sampling.min_p,
            "min_tokens": sampling.min_tokens,
            "ignore_eos": sampling.ignore_eos,
            "stop_token_ids": list(sampling.stop_token_ids) if sampling.stop_token_ids else None,
        }
        extra = {k: v for k, v in extra.items() if v is not None}
        if extra and self._server not in ("vllm", "llamacpp", "sglang"):
            raise UnsupportedFeatureError(
                self.name, f"take {', '.join(sorted(extra))}", "leave them unset for this server"
            )
        return {k: v for k, v in standard.items() if v is not None}, extra

    def _completion_body(self, request: GenerateRequest, server: Server) -> dict[str, Any]:
        standard, extra = self._sampling(request)
        if request.images:
            raise UnsupportedFeatureError(self.name, "take images through completions")
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "max_tokens": request.sampling.max_new_tokens,
            **standard,
        }
        if request.return_logprob or request.top_logprobs_num:
            body["logprobs"] = max(request.top_logprobs_num, 1)
        extra.update(_constraint_extra(request.constraint, server))
        body["extra_body"] = extra
        return body

    def _chat_body(self, request: GenerateRequest, server: Server) -> dict[str, Any]:
        standard, extra = self._sampling(request)
        messages = [_message(m, request) for m in request.messages]
        if request.prefill:
            if server not in ("vllm", "llamacpp"):
                raise UnsupportedFeatureError(
                    self.name,
                    "continue an assistant turn that already has text",
                    "start the gen at the beginning of lp.assistant(...), one gen per turn",
                )
            messages.append({"role": "assistant", "content": request.prefill})
            if server == "vllm":
                extra.update(continue_final_message=True, add_generation_prompt=False)
        body: dict[str, Any] = {
            "messages": messages,
            "max_completion_tokens" if server == "openai" else "max_tokens": (
                request.sampling.max_new_tokens
            ),
            **standard,
        }
        if request.return_logprob or request.top_logprobs_num:
            body["logprobs"] = True
            if request.top_logprobs_num:
                body["top_logprobs"] = request.top_logprobs_num
        constraint = request.constraint
        if constraint is not None and server in ("openai", "generic"):
            body["response_format"] = _response_format(constraint)
        else:
            extra.update(_constraint_extra(constraint, server))
        body["extra_body"] = extra
        return body

    async def _send(
        self,
        kind: Literal["chat", "completion"],
        body: dict[str, Any],
        on_text: TextCallback | None,
        echoed: str = "",
    ) -> Generation:
        """Send one request; `echoed` is text the server repeats before its answer."""
        if on_text is None:
            generation = _generation(await self._create(kind, body), kind)
        else:
            generation = await self._stream(kind, body, _Skip(echoed, on_text))
        if echoed:
            if not generation.text.startswith(echoed):
                raise BackendResponseError(
                    f"{self.name} did not continue the assistant prefill {echoed[-40:]!r}"
                )
            generation.text = generation.text[len(echoed) :]
        return generation

    async def _stream(self, kind: str, body: dict[str, Any], on_text: TextCallback) -> Generation:
        pieces: list[str] = []
        finish: str | None = None
        usage: Any = None
        async for chunk in self._create_stream(kind, body):
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                piece = delta.get("content") if kind == "chat" else choice.get("text")
                if piece:
                    pieces.append(piece)
                    on_text(piece)
                finish = choice.get("finish_reason") or finish
        if finish is None:
            raise BackendResponseError(
                f"{self.name}'s stream ended before the answer did (no finish_reason); "
                f"got {''.join(pieces)[:80]!r}"
            )
        return Generation("".join(pieces), finish, *_usage(usage))

    # ----- transport: lmprog's JSON client for self-hosted engines, else the SDK -----------

    def _direct(self) -> bool:
        """vLLM, llama.cpp and SGLang servers are sent plain JSON by lmprog's own client: the
        SDK's request building and response parsing were 4/5 of the client's time per request
        against a fast server. The OpenAI API, other servers, and SDK options given as
        keyword arguments keep the SDK."""
        return self._server in _SELF_HOSTED and not self._sdk_options

    def _api(self) -> JsonClient:
        if self._api_client is None:
            assert self.base_url is not None and self._server is not None
            self._api_client = JsonClient(
                self.base_url,
                _SELF_HOSTED[self._server],
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
            response = await self._endpoint(kind).create(**body)
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
            stream = await self._endpoint(kind).create(**body, **options, stream=True)
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
        """vLLM and SGLang share one prefix cache between requests: compute the prefix once."""
        if self.is_chat_model or await self.server() not in ("vllm", "sglang"):
            return
        body = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0}
        await self._create("completion", body)

    # ----- select ----------------------------------------------------------------------------

    async def score_choices(
        self, context: GenerateRequest, choices: tuple[str, ...], method: ChoicesMethod
    ) -> list[ChoiceLogprobs]:
        """Prompt logprobs where the server returns them (vLLM completions: exact scores);
        elsewhere the server generates one of the choices under a constraint, or, on chat
        models with structured outputs but no choice constraint (the OpenAI API and most
        hosted models), a JSON object whose one field is an enum of the choices. The pick is
        reported as the only choice with a score, and the path taken in its `path`."""
        server = await self.server()
        if server == "vllm" and not self.is_chat_model:
            return await self._prompt_logprobs(context, choices, method)
        self.check_choices_method(method)
        enforced = self.capabilities.constraints
        if "choices" in enforced:
            constraint, path = choices_constraint(list(choices)), "enforced by server"
        elif "json_schema" in enforced and self.is_chat_model:
            constraint, path = schema_constraint(_choice_schema(choices)), "json enum"
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

    async def _prompt_logprobs(
        self, context: GenerateRequest, choices: tuple[str, ...], method: ChoicesMethod
    ) -> list[ChoiceLogprobs]:
        """Exact scores from vLLM's prompt logprobs: two requests at once, whatever the choices.

        Every prompt+choice goes as text in one scoring request, whose prompt logprobs name the
        token ids the server read; the prompt alone is tokenized beside it, and a choice's
        tokens are those after the ones it shares with the prompt (a word straddling the
        boundary is settled the way the model reads it).
        """
        prompt_ids, fulls = await asyncio.gather(
            self._tokenize(context.prompt),
            self._read_prompts([context.prompt + choice for choice in choices]),
        )
        scored, own_ids = [], []
        for choice, full in zip(choices, fulls, strict=True):
            ids = [prompt_ids[0] if prompt_ids else -1] + [token for token, _, _ in full[1:]]
            start = max(1, shared_prefix_length(prompt_ids, ids))  # the first has no logprob
            own = full[start:]
            own_ids.append([token for token, _, _ in own])
            scored.append(
                ChoiceLogprobs(
                    choice, tuple(lp for _, lp, _ in own), tuple(piece for _, _, piece in own)
                )
            )
        if method.requires_unconditional_logprobs:
            bos = (await self._tokenize(""))[:1]
            alone = await self._read_prompts([bos + ids for ids in own_ids])
            scored = [
                ChoiceLogprobs(c.choice, c.token_logprobs, c.tokens, tuple(lp for _, lp, _ in a))
                for c, a in zip(scored, (read[len(bos) :] for read in alone), strict=True)
            ]
        return scored

    async def _read_prompts(
        self, prompts: list[str] | list[list[int]]
    ) -> list[list[tuple[int, float, str]]]:
        """(token id, logprob, piece) of every token of each prompt (text or token ids) as the
        server read it, teacher-forced, in one request. The first token has no logprob: its
        entry is a placeholder (-1, 0.0, "")."""
        response = await self._create("completion", _scoring_body(self.model, prompts))
        results: list[list[tuple[int, float, str]]] = [[] for _ in prompts]
        try:
            for choice in response["choices"]:
                entries = choice.get("prompt_logprobs")
                if entries is None:
                    raise BackendResponseError(f"{self.name} returned no prompt logprobs")
                read = [(-1, 0.0, "")]
                for entry in entries[1:]:
                    ((token, info),) = entry.items()  # prompt_logprobs=0: the read token only
                    read.append((int(token), float(info["logprob"]), str(info["decoded_token"])))
                results[choice["index"]] = read
        except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
            raise BackendResponseError(
                f"{self.name} sent prompt logprobs lmprog could not read: {exc!r}"
            ) from exc
        return results

    async def _tokenize(self, text: str) -> list[int]:
        assert self.base_url is not None
        body = {"model": self.model, "prompt": text, "add_special_tokens": True}
        reply = await self._native().post("/tokenize", body)
        return [int(t) for t in reply["tokens"]]

    def _native(self) -> JsonClient:
        """vLLM's own endpoints beside the OpenAI ones (/tokenize)."""
        if self._native_client is None:
            assert self.base_url is not None
            root = self.base_url.removesuffix("/v1")
            self._native_client = JsonClient(root, "vLLM", 600.0, self._api_key)
        return self._native_client

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
        for client in (self._api_client, self._native_client):
            if client is not None:
                await client.aclose()


class VLLM(OpenAI):
    """A vLLM server, through its completions API: regex/json/choice/grammar enforced with
    `structured_outputs`, `select` scored exactly from prompt logprobs, prefix caching.

    model: the served model (default: the only one `/v1/models` lists). chat_template: a
    built-in name or Jinja source; by default the one in the model's files when the server's
    model folder is readable from here.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        model: str | None = None,
        *,
        chat_template: str | ChatTemplate | None = None,
        timeout: float = 600.0,
        api_key: str | None = None,
        **client_kwargs: Any,
    ) -> None:
        base = url.rstrip("/")
        super().__init__(
            model or "",
            base_url=base if base.endswith("/v1") else base + "/v1",
            api_key=api_key,
            is_chat_model=False,
            server="vllm",
            chat_template=chat_template,
            timeout=timeout,
            **client_kwargs,
        )
        self.name = f"lp.VLLM({url!r})"

    async def _resolve_model(self) -> None:
        """With no model= given, use the one model the server serves."""
        if self.model:
            return
        listed = await self.models()
        if len(listed) != 1:
            raise BackendError(f"{self.name} serves {listed}: pass model= to pick one")
        self.model = listed[0]

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        await self._resolve_model()
        return await super().generate(request, on_text)

    async def score_choices(
        self, context: GenerateRequest, choices: tuple[str, ...], method: ChoicesMethod
    ) -> list[ChoiceLogprobs]:
        await self._resolve_model()
        return await super().score_choices(context, choices, method)

    async def warm(self, prompt: str) -> None:
        await self._resolve_model()
        await super().warm(prompt)

    async def _load_chat_template(self) -> ChatTemplate:
        await self._resolve_model()
        return await super()._load_chat_template()


# ----- request and response shapes ------------------------------------------------------------


class _Skip:
    """Passes streamed text on, minus the first `count` characters (an echoed prefill)."""

    def __init__(self, echoed: str, on_text: TextCallback) -> None:
        self._left = len(echoed)
        self._on_text = on_text

    def __call__(self, piece: str) -> None:
        if self._left:
            dropped = min(self._left, len(piece))
            piece, self._left = piece[dropped:], self._left - dropped
        if piece:
            self._on_text(piece)


def _constraint_extra(constraint: Constraint | None, server: Server) -> dict[str, Any]:
    """The request fields that make `server` enforce `constraint` (empty if none)."""
    if constraint is None:
        return {}
    if server == "vllm":
        if constraint.kind == "regex":
            return {"structured_outputs": {"regex": constraint.pattern}}
        if constraint.kind == "choices":
            return {"structured_outputs": {"choice": list(constraint.choices)}}
        if constraint.kind == "json_schema":
            return {"structured_outputs": {"json": constraint.schema}}
        return {"structured_outputs": {"grammar": constraint.grammar}}
    if server == "llamacpp":
        return constraint_fields(constraint)
    if server == "sglang":
        return constraint_params(constraint)
    raise AssertionError(f"{server} enforces no constraint through request extras")


def _response_format(constraint: Constraint) -> dict[str, Any]:
    """OpenAI structured outputs: the schema itself, or a wrapper object for choices (the
    API needs an object at the top level)."""
    if constraint.kind == "choices":
        schema = {
            "type": "object",
            "properties": {"lmprog_choice": {"type": "string", "enum": list(constraint.choices)}},
            "required": ["lmprog_choice"],
            "additionalProperties": False,
        }
    else:
        assert constraint.schema is not None
        schema = constraint.schema
    return {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": _strict_ok(schema)},
    }


def _strict_ok(schema: dict[str, Any]) -> bool:
    """OpenAI's strict mode needs every object closed and every property required."""
    if schema.get("type") == "object":
        properties = schema.get("properties", {})
        if schema.get("additionalProperties", True) is not False:
            return False
        if set(schema.get("required", [])) != set(properties):
            return False
        return all(_strict_ok(p) for p in properties.values())
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        return _strict_ok(schema["items"])
    return not any(k in schema for k in ("anyOf", "oneOf", "allOf", "$ref", "$defs"))


def _message(message: dict[str, Any], request: GenerateRequest) -> dict[str, Any]:
    content = message["content"]
    if isinstance(content, str):
        return {"role": message["role"], "content": content}
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


def _scoring_body(model: str, prompts: list[str] | list[list[int]]) -> dict[str, Any]:
    """A completions request that only reads its prompts (vLLM's prompt logprobs)."""
    return {
        "model": model,
        "prompt": prompts,
        "max_tokens": 1,
        "temperature": 0.0,
        "extra_body": {"prompt_logprobs": 0},
    }


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
        return [{"token": item["token"], "logprob": item["logprob"]} for item in content]
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    return [{"token": t, "logprob": v} for t, v in zip(tokens, values, strict=False)]


def _transport_error(backend: Backend, exc: httpx.HTTPError) -> BackendError:
    if isinstance(exc, httpx.TimeoutException):
        return BackendTimeoutError(f"{backend.name} did not answer in time")
    return BackendUnavailableError(
        f"cannot reach {backend.name} ({type(exc).__name__}); is the server running and the "
        "base_url right?"
    )


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


def _choice_schema(choices: tuple[str, ...]) -> dict[str, Any]:
    """`{"choice": one of choices}`: structured outputs want an object at the top level."""
    return {
        "type": "object",
        "properties": {"choice": {"type": "string", "enum": list(choices)}},
        "required": ["choice"],
        "additionalProperties": False,
    }


def _enum_pick(text: str, choices: tuple[str, ...]) -> str:
    """The choice in `{"choice": ...}`, read as soon as its string is complete: small models
    pad structured output with whitespace and may run out of tokens before the closing `}`."""
    try:
        picked = pydantic_core.from_json(text, allow_partial=True).get("choice")
    except (ValueError, AttributeError):
        picked = None
    if picked not in choices:
        raise BackendResponseError(f"the server's JSON enum answer names no choice: {text[:120]!r}")
    return str(picked)
