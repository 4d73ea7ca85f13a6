"""lp.LlamaCpp: llama.cpp's `llama-server`, on its native `/completion` API.

Programs are sent as text with `cache_prompt`, so a program's successive calls reuse the slot's
prefix cache. `regex` (which the server ignores) is translated to the GBNF grammar it enforces;
`json_schema`/`type` use its JSON-schema support; `select` forces each choice with a literal
grammar and reads the token logprobs of the forced tokens.
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

from lmprog.backends.base import (
    Backend,
    Capabilities,
    GenerateRequest,
    Generation,
    TextCallback,
    ToolCallParsing,
)
from lmprog.backends.dialect import (
    ALL_CONSTRAINTS,
    Dialect,
    Launch,
    LaunchSpec,
    Probe,
    Server,
    engine_flags,
    find_binary,
)
from lmprog.backends.http import JsonClient, Secret
from lmprog.choices import ALL_METHODS, ChoiceLogprobs, ChoicesMethod
from lmprog.constraints import Constraint
from lmprog.errors import BackendError, BackendResponseError, UnsupportedFeatureError
from lmprog.gbnf import choices_to_gbnf, regex_to_gbnf
from lmprog.paths import cache_dir
from lmprog.prefix import split_choice
from lmprog.templates import ChatTemplate

_FINISH = {"eos": "stop", "word": "stop", "limit": "length", "none": None}


class LlamaCpp(Backend):
    """A llama.cpp `llama-server` (start one with backends/llamacpp/; see its README).

    chat_template: a built-in name ("gemma3", "chatml"), Jinja source, or a ChatTemplate;
    by default the one the server reports in `/props`. Requests that cannot have been
    answered (no connection, a dropped connection, 429/5xx) are retried `max_retries` times
    with exponential backoff (honouring Retry-After); a read timeout is not retried.
    """

    capabilities = Capabilities(
        constraints=frozenset({"regex", "json_schema", "choices", "grammar"}),
        grammar_syntaxes=frozenset({"gbnf"}),
        choices_methods=ALL_METHODS,
        images=True,
        streaming=True,
        logprobs=True,
        prefix_cache=True,
    )
    image_marker = "<__media__>"
    template_hint = "start llama-server with --chat-template-file"

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        *,
        chat_template: str | ChatTemplate | None = None,
        timeout: float = 600.0,
        api_key: str | None = None,
        max_retries: int = 3,
    ) -> None:
        self.url = url.rstrip("/")
        self.name = f"lp.LlamaCpp({self.url!r})"
        self._http = JsonClient(self.url, "llama-server", timeout, Secret(api_key), max_retries)
        self.chat_template_choice = chat_template
        self._props: dict[str, Any] | None = None
        self._props_lock: asyncio.Lock | None = None

    async def props(self) -> dict[str, Any]:
        """The server's `/props` (model, slots, chat template, modalities), fetched once."""
        if self._props is None:
            self._props_lock = self._props_lock or asyncio.Lock()
            async with self._props_lock:
                if self._props is None:
                    self._props = await self._http.get("/props")
        return self._props

    async def ping(self) -> None:
        await self.props()

    async def concurrency_hint(self) -> int:
        """One program per slot: more would push programs out of the slot holding their
        prefix, and the server would recompute it (measured in ENGINES.md)."""
        try:
            return int((await self.props()).get("total_slots") or 4)
        except BackendError:
            return 4  # the programs themselves will report the unreachable server

    async def _model_chat_template(self) -> ChatTemplate | None:
        props = await self.props()
        source = props.get("chat_template")
        if not source:
            return None
        # The server puts BOS in front of a text prompt itself, so the template must not.
        return ChatTemplate(source, eos_token=props.get("eos_token", ""), name="server")

    # ----- generation ---------------------------------------------------------------------

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        body = await self._body(request)
        minimum = request.sampling.min_tokens or 0
        if not minimum:
            return self._generation(await self._complete(body, on_text))
        # min_tokens: the server has no such field, so the first `minimum` tokens come from a
        # request that may not end (no end-of-sequence, no stop strings: SGLang's semantics),
        # and the rest from a continuation of exactly those tokens, which the slot has cached.
        if request.constraint is not None or request.images:
            raise UnsupportedFeatureError(
                self.name,
                "honour min_tokens with a constraint or images",
                "drop min_tokens= (the constraint already decides where the output ends)",
            )
        head = {**body, "n_predict": minimum, "ignore_eos": True, "return_tokens": True}
        head.pop("stop", None)
        first = await self._complete(head, on_text)
        limit = request.sampling.max_new_tokens
        left = -1 if limit is None else limit - minimum
        if left == 0:
            return self._generation(first)
        ids = [int(t) for t in first.get("tokens") or ()]
        rest = await self._complete(
            {**body, "prompt": [request.prompt, *ids], "n_predict": left}, on_text
        )
        return _joined(self._generation(first), self._generation(rest))

    async def _complete(self, body: dict[str, Any], on_text: TextCallback | None) -> Any:
        """One /completion request; streamed to `on_text` when given. The answer's body (for
        a stream: its last event, with the whole text and every token id)."""
        if on_text is None:
            return await self._http.post("/completion", body)
        pieces: list[str] = []
        tokens: list[int] = []
        probabilities: list[dict[str, Any]] = []
        final: dict[str, Any] = {}
        async for event in self._http.stream_events("/completion", {**body, "stream": True}):
            piece = event.get("content", "")
            added = event.get("completion_probabilities") or []
            probabilities += added
            if piece or added:
                pieces.append(piece)
                on_text(piece, added)
            tokens += event.get("tokens") or ()
            if event.get("stop"):
                final = event
        final["content"] = "".join(pieces)
        final["tokens"] = tokens
        if probabilities:
            final["completion_probabilities"] = probabilities
        return final

    async def _body(self, request: GenerateRequest) -> dict[str, Any]:
        sampling = request.sampling
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "n_predict": sampling.max_new_tokens if sampling.max_new_tokens is not None else -1,
            "cache_prompt": True,
        }
        optional = {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "min_p": sampling.min_p,
            "seed": sampling.seed,
            "frequency_penalty": sampling.frequency_penalty,
            "presence_penalty": sampling.presence_penalty,
            "ignore_eos": sampling.ignore_eos,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.stop_token_ids:
            raise UnsupportedFeatureError(
                self.name, "stop on token ids", "use stop= with the token's text"
            )
        if request.constraint is not None:
            body.update(constraint_fields(request.constraint))
        if request.return_logprob or request.top_logprobs_num:
            body["n_probs"] = max(request.top_logprobs_num, 1)
        if request.images:
            props = await self.props()
            if not props.get("modalities", {}).get("vision"):
                raise UnsupportedFeatureError(
                    self.name,
                    "take images: its model has no vision projector",
                    "start llama-server with --mmproj",
                )
            body["prompt"] = {
                "prompt_string": request.prompt,
                "multimodal_data": [base64.b64encode(i.data).decode() for i in request.images],
            }
        return body

    def _generation(self, data: dict[str, Any]) -> Generation:
        if not isinstance(data, dict) or "content" not in data:
            raise BackendResponseError(f"llama-server sent an unexpected body: {str(data)[:200]}")
        timings = data.get("timings") or {}
        prompt_n = timings.get("prompt_n")
        cached = timings.get("cache_n")
        probabilities = data.get("completion_probabilities")
        return Generation(
            text=data["content"],
            finish_reason=_FINISH.get(data.get("stop_type", "none"), data.get("stop_type")),
            prompt_tokens=(prompt_n + cached)
            if prompt_n is not None and cached is not None
            else data.get("tokens_evaluated"),
            completion_tokens=data.get("tokens_predicted"),
            cached_tokens=cached,
            logprobs=probabilities,
            extra={"stopping_word": data.get("stopping_word") or None},
        )

    # ----- select -------------------------------------------------------------------------

    async def score_choices(
        self, context: GenerateRequest, choices: tuple[str, ...], method: ChoicesMethod
    ) -> list[ChoiceLogprobs]:
        """Teacher-force each choice's tokens after the prompt and read their logprobs.

        The server reports raw (pre-grammar) logprobs of the tokens it takes, but a string
        grammar lets it take a non-canonical tokenization (" " + "paris" instead of " paris"),
        so each choice is forced token by token: prompt+choice is tokenized as a whole, the
        tokens it shares with the prompt are sent as the context (this also settles a word
        that straddles the boundary), and a token-id grammar forces the rest. The tokenizations
        go out together; the forced choices one after another, so they all reuse the slot that
        holds the prompt.
        """
        prompt = context.prompt
        tokenized = await asyncio.gather(
            self._tokenize(prompt), *(self._tokenize(prompt + choice) for choice in choices)
        )
        prompt_ids = [i for i, _ in tokenized[0]]
        scored = []
        for choice, full in zip(choices, tokenized[1:], strict=True):
            before, own = split_choice(prompt_ids, full, token_id=lambda entry: entry[0])
            ids = [i for i, _ in own]
            logprobs = await self._forced([i for i, _ in before], ids)
            unconditional = None
            if method.requires_unconditional_logprobs:
                unconditional = await self._unconditional(ids)
            pieces = tuple(piece for _, piece in own)
            scored.append(ChoiceLogprobs(choice, logprobs, pieces, unconditional))
        return scored

    async def _tokenize(self, text: str) -> list[tuple[int, str]]:
        """(id, piece) pairs as the server tokenizes a text prompt (BOS included if it adds
        one). A piece that is not whole UTF-8 comes back as byte values."""
        data = await self._http.post(
            "/tokenize", {"content": text, "add_special": True, "with_pieces": True}
        )
        return [
            (int(t["id"]), t["piece"] if isinstance(t["piece"], str) else bytes(t["piece"]).hex())
            for t in data["tokens"]
        ]

    async def _forced(self, context: list[int], ids: list[int]) -> tuple[float, ...]:
        """Logprob of each of `ids` following `context` (token ids, used as given)."""
        if not ids:
            return ()
        body = {
            "prompt": context,
            "grammar": "root ::= " + " ".join(f"<[{i}]>" for i in ids),
            "n_predict": len(ids),
            "temperature": 0.0,
            "n_probs": 1,
            "cache_prompt": True,
        }
        data = await self._http.post("/completion", body)
        taken = data.get("completion_probabilities") or []
        if [p.get("id") for p in taken] != ids:
            raise BackendResponseError(
                f"llama-server did not follow the forced tokens {ids} (took "
                f"{[p.get('id') for p in taken]})"
            )
        return tuple(float(p["logprob"]) for p in taken)

    async def _unconditional(self, ids: list[int]) -> tuple[float, ...]:
        """Logprobs of `ids` with no prompt: after BOS, or (no BOS) the first counts as 0."""
        bos = [i for i, _ in await self._tokenize("")]
        if bos:
            return await self._forced(bos, ids)
        return (0.0, *await self._forced(ids[:1], ids[1:]))

    async def aclose(self) -> None:
        await self._http.aclose()


def _joined(first: Generation, rest: Generation) -> Generation:
    """A generation made of two requests, the second continuing the first."""
    return Generation(
        text=first.text + rest.text,
        finish_reason=rest.finish_reason,
        prompt_tokens=first.prompt_tokens,
        completion_tokens=(first.completion_tokens or 0) + (rest.completion_tokens or 0),
        cached_tokens=first.cached_tokens,
        logprobs=(first.logprobs or []) + (rest.logprobs or []) if first.logprobs else None,
        extra=rest.extra,
    )


def constraint_fields(constraint: Constraint) -> dict[str, Any]:
    """The request fields that make llama-server enforce `constraint` (native and OpenAI API)."""
    if constraint.kind == "regex":
        assert constraint.pattern is not None
        return {"grammar": regex_to_gbnf(constraint.pattern)}
    if constraint.kind == "choices":
        return {"grammar": choices_to_gbnf(constraint.choices)}
    if constraint.kind == "json_schema":
        return {"json_schema": constraint.schema}
    assert constraint.grammar is not None
    return {"grammar": constraint.grammar}


# ----- launching (lp.Runtime) -----------------------------------------------------------------


def llama_server_binary() -> Path:
    """$LMPROG_LLAMA_SERVER, else the newest build in the cache, else `llama-server` on PATH."""
    return find_binary(
        "llama-server",
        "LMPROG_LLAMA_SERVER",
        sorted(cache_dir().glob("llama.cpp/*/bin/llama-server"))[-1:],
        "no llama-server binary: build one with `bash backends/llamacpp/build.sh` (from the "
        "lmprog repository)",
    )


def launch(spec: LaunchSpec) -> Launch:
    """llama-server on a GGUF file, `slots` parallel slots, full prefix reuse on SWA models."""
    model = spec.model_path()
    if not model.is_file():
        raise FileNotFoundError(f"lp.Runtime: no model file at {model}")
    command = [
        str(llama_server_binary()),
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(spec.port),
        "--parallel",
        str(spec.slots),
        "--ctx-size",
        str(spec.slots * spec.ctx_per_slot),
        "--swa-full",  # full prefix reuse on sliding-window models such as Gemma 3
        *engine_flags(spec.engine_args),
    ]
    return Launch(command, dict(os.environ), LlamaCpp(spec.url, chat_template=spec.chat_template))


class _LlamaCppDialect(Dialect):
    def constraint_fields(self, constraint: Constraint, chat: bool) -> dict[str, Any]:
        return constraint_fields(constraint)

    async def chat_template(self, server: Server) -> ChatTemplate | None:
        source = (await server.get("/props")).get("chat_template")
        return ChatTemplate(source, name="server") if source else None

    async def tool_calls(self, server: Server) -> ToolCallParsing:
        """Only where its chat template renders tools: with any other it ignores `tools`
        and answers in text (seen on a 2026 build), so the constrained path is taken."""
        caps = (await server.get("/props")).get("chat_template_caps") or {}
        return "yes" if caps.get("supports_tools") and caps.get("supports_tool_calls") else "no"


def _is_llama_server(props: Any) -> bool:
    return isinstance(props, dict) and "total_slots" in props


DIALECT = _LlamaCppDialect(
    kind="llamacpp",
    label="llama-server",
    completion_constraints=ALL_CONSTRAINTS,
    chat_constraints=ALL_CONSTRAINTS,
    grammar_syntaxes=frozenset({"gbnf"}),
    sampling_extras=frozenset({"top_k", "min_p", "ignore_eos"}),  # min_tokens: ignored
    continue_fields={},  # it continues a final assistant message by itself, repeating it first
    echoes_prefill=True,
    serves_any_model=True,
    prefix_cache=True,  # one cache per slot: warming a prefix in one slot helps no other
    self_hosted=True,
    probe=Probe("/props", _is_llama_server),
    env_var="LMPROG_LLAMACPP_URL",
    native=LlamaCpp,
    native_tools=True,  # where its template renders tools (tool_calls) and --jinja is on
    engine="llama.cpp",
    launch=launch,
)
