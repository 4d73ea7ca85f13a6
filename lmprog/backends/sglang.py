"""lp.SGLang (alias lp.RuntimeEndpoint): an SGLang server's native `/generate` API.

Programs go as text (RadixAttention reuses every shared prefix); constraints go in
`sampling_params` (`regex`, `json_schema`, `ebnf`; choices as a regex alternation), all
enforced by the server. `select` scores choices from input-token logprobs: the prompt and
every prompt+choice are sent once each (after a request that counts a long prompt's tokens, so
logprobs are computed only near its end and its cached prefix is reused), and a choice's
tokens are those after the ones it shares with the prompt, so a word that straddles the
boundary is read as the model reads it.
Streaming chunks from SGLang carry the whole text so far; they are turned into deltas here.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

from lmprog.backends.base import (
    Backend,
    Capabilities,
    GenerateRequest,
    Generation,
    TextCallback,
)
from lmprog.backends.dialect import (
    ALL_CONSTRAINTS,
    SAMPLING_EXTRAS,
    Dialect,
    Launch,
    LaunchSpec,
    Probe,
    engine_flags,
)
from lmprog.backends.http import JsonClient, Secret
from lmprog.choices import ALL_METHODS, ChoiceLogprobs, ChoicesMethod
from lmprog.constraints import Constraint
from lmprog.errors import BackendResponseError
from lmprog.prefix import split_choice
from lmprog.templates import ChatTemplate, TemplateGuessWarning


class SGLang(Backend):
    """An SGLang server at `url` (e.g. started with `python -m sglang.launch_server`).

    chat_template: a built-in name or Jinja source; by default the one the server renders
    chats with, where a client can find it (see `_model_chat_template`).
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

    def __init__(
        self,
        url: str = "http://127.0.0.1:30000",
        *,
        chat_template: str | ChatTemplate | None = None,
        timeout: float = 600.0,
        api_key: str | None = None,
        max_retries: int = 3,
    ) -> None:
        self.url = url.rstrip("/")
        self.name = f"lp.SGLang({self.url!r})"
        self._http = JsonClient(self.url, "SGLang", timeout, Secret(api_key), max_retries)
        self.chat_template_choice = chat_template

    async def model_info(self) -> dict[str, Any]:
        """The server's `/get_model_info` (model path, tokenizer path, ...)."""
        info: dict[str, Any] = await self._http.get("/get_model_info")
        return info

    async def server_info(self) -> dict[str, Any]:
        """The server's `/get_server_info` (its launch arguments and version)."""
        info: dict[str, Any] = await self._http.get("/get_server_info")
        return info

    async def ping(self) -> None:
        await self.model_info()

    async def warm(self, prompt: str) -> None:
        await self._http.post(
            "/generate", {"text": prompt, "sampling_params": {"max_new_tokens": 0}}
        )

    async def flush_cache(self) -> None:
        """Empty the server's prefix cache (for benchmarks that must start cold)."""
        await self._http.post("/flush_cache", {})

    async def _model_chat_template(self) -> ChatTemplate | None:
        """The template the server renders chats with, found the way a client can: the
        model's folder, or the file the server was started with (`--chat-template`), when
        readable from here; else a built-in template of the name the server was given or of
        the model's family, with a warning (the server's own may differ in details)."""
        info = await self.model_info()
        own = ChatTemplate.from_model_dir(info.get("model_path") or "")
        if own is not None:
            return own
        launched = await self.server_info()
        given = str(launched.get("chat_template") or "")
        if given and Path(given).is_file():
            return ChatTemplate(Path(given).read_text(), name=Path(given).name)
        families = [given, str(info.get("model_type") or ""), *(info.get("architectures") or ())]
        for family in filter(None, families):
            template = ChatTemplate.builtin_for(family)
            if template is not None:
                warnings.warn(
                    f"{self.name}: the server's chat template is not readable from here; "
                    f"using lmprog's built-in {template.name!r} template for {family!r}. "
                    "Pass chat_template= to choose it yourself.",
                    TemplateGuessWarning,
                    stacklevel=2,
                )
                return template
        return None

    # ----- generation ------------------------------------------------------------------------

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        body = self._body(request)
        if on_text is None:
            return _generation(await self._http.post("/generate", body))
        body["stream"] = True
        shown = ""
        entries: list[dict[str, Any]] = []
        last: dict[str, Any] = {}
        async for event in self._http.stream_events("/generate", body):
            text = str(event.get("text", ""))
            if not text.startswith(shown):
                raise BackendResponseError(f"{self.name} streamed text that went back on itself")
            meta = event.get("meta_info") or {}
            so_far = meta.get("output_token_logprobs") or []  # the whole list so far, each time
            tops = meta.get("output_top_logprobs")
            new = slice(len(entries), None)
            added = _entries(so_far[new], tops[new] if tops else None)
            entries += added
            if len(text) > len(shown) or added:
                on_text(text[len(shown) :], added)
                shown = text
            last = event
        if not last:
            raise BackendResponseError(f"{self.name} ended the stream before any answer")
        return _generation(last)

    def _body(self, request: GenerateRequest) -> dict[str, Any]:
        sampling = request.sampling
        params = {
            "max_new_tokens": sampling.max_new_tokens,
            "min_new_tokens": sampling.min_tokens,
            "stop": list(sampling.stop) if sampling.stop else None,
            "stop_token_ids": list(sampling.stop_token_ids) if sampling.stop_token_ids else None,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "min_p": sampling.min_p,
            "frequency_penalty": sampling.frequency_penalty,
            "presence_penalty": sampling.presence_penalty,
            "ignore_eos": sampling.ignore_eos,
            **constraint_params(request.constraint),
        }
        body: dict[str, Any] = {
            "text": request.prompt,
            "sampling_params": {k: v for k, v in params.items() if v is not None},
        }
        if sampling.seed is not None:
            body["sampling_params"]["sampling_seed"] = sampling.seed
        if request.return_logprob or request.top_logprobs_num:
            body.update(
                return_logprob=True,
                top_logprobs_num=request.top_logprobs_num,
                return_text_in_logprobs=True,
            )
        if request.images:
            body["image_data"] = _image_urls(request)
        return body

    # ----- select ----------------------------------------------------------------------------

    async def score_choices(
        self, context: GenerateRequest, choices: tuple[str, ...], method: ChoicesMethod
    ) -> list[ChoiceLogprobs]:
        start = 0
        images = _image_urls(context)
        if len(context.prompt) >= LONG_PROMPT_CHARS:
            count: dict[str, Any] = {
                "text": context.prompt,
                "sampling_params": {"max_new_tokens": 0},
            }
            if images:
                count["image_data"] = images
            start = max(
                _prompt_tokens(await self._http.post("/generate", count)) - BOUNDARY_TOKENS, 0
            )
        scored = await self._scores(context.prompt, images, choices, method, start)
        if scored is None:  # a choice leaves the prompt's tokens before `start`: read them all
            scored = await self._scores(context.prompt, images, choices, method, 0)
        assert scored is not None
        return scored

    async def _scores(
        self,
        prompt: str,
        images: list[str],
        choices: tuple[str, ...],
        method: ChoicesMethod,
        start: int,
    ) -> list[ChoiceLogprobs] | None:
        """Each choice's logprobs from the prompt's and every prompt+choice's input logprobs
        (one batch, each text with the prompt's images), read from token `start` on; None if a
        choice's own tokens begin before it."""
        texts = [prompt] + [prompt + choice for choice in choices]
        starts = [start] * len(texts)
        with_images = [images] * len(texts)
        if method.requires_unconditional_logprobs:
            texts += list(choices)  # a choice alone: no prompt, no images
            starts += [0] * len(choices)
            with_images += [[]] * len(choices)
        body: dict[str, Any] = {
            "text": texts,
            "sampling_params": {"max_new_tokens": 0},
            "return_logprob": True,
            "logprob_start_len": start if len(set(starts)) == 1 else starts,
        }
        if images:
            body["image_data"] = with_images
        results = await self._http.post("/generate", body)
        if not isinstance(results, list) or len(results) != len(texts):
            raise BackendResponseError(f"{self.name} answered a batch with {str(results)[:200]}")
        prompt_ids = _input_ids(_input_entries(results[0]))
        scored = []
        for i, choice in enumerate(choices):
            full = _input_entries(results[1 + i])
            # the ids alone are compared; only the choice's own entries are read in full
            shared, _ = split_choice(prompt_ids, _input_ids(full))
            if start and not shared:
                return None
            own = _input_tokens(full[len(shared) :])
            unconditional = None
            if method.requires_unconditional_logprobs:
                alone = _input_entries(results[1 + len(choices) + i])
                tail = _input_tokens(alone[-len(own) :]) if own else []
                unconditional = tuple(lp if lp is not None else 0.0 for _, lp, _ in tail)
            scored.append(
                ChoiceLogprobs(
                    choice,
                    tuple(lp if lp is not None else 0.0 for _, lp, _ in own),
                    tuple(text for _, _, text in own),
                    unconditional,
                )
            )
        return scored

    async def aclose(self) -> None:
        await self._http.aclose()


RuntimeEndpoint = SGLang

# A prompt this long is scored in two requests: its length in tokens first, then input logprobs
# from just before its end. SGLang computes input logprobs from `logprob_start_len` on and
# reuses no cached prefix past it (its scheduler caps the prefix match there), so logprobs
# from token 0 would recompute the whole prompt for every choice. A shorter prompt costs less
# to recompute than the extra round trip.
LONG_PROMPT_CHARS = 1000
BOUNDARY_TOKENS = 4  # how far before the prompt's end a choice may start changing its tokens


def constraint_params(constraint: Constraint | None) -> dict[str, Any]:
    """The fields that make SGLang enforce `constraint` (native and OpenAI endpoints)."""
    if constraint is None:
        return {}
    if constraint.kind == "regex":
        return {"regex": constraint.pattern}
    if constraint.kind == "choices":
        return {"regex": "|".join(re.escape(c) for c in constraint.choices)}
    if constraint.kind == "json_schema":
        return {"json_schema": json.dumps(constraint.schema)}
    return {"ebnf": constraint.grammar}


def _input_entries(result: Any) -> list[Any]:
    """SGLang's `input_token_logprobs` of one result: [logprob, id, text] per prompt token."""
    try:
        entries = result["meta_info"]["input_token_logprobs"]
    except (KeyError, TypeError) as exc:
        raise _no_input_logprobs(result) from exc
    if not isinstance(entries, list):
        raise _no_input_logprobs(result)
    return entries


def _input_ids(entries: list[Any]) -> list[Any]:
    """The token ids of `entries` (compared, never converted: a prompt has hundreds)."""
    try:
        return [e[1] for e in entries]
    except (KeyError, TypeError, IndexError) as exc:
        raise _no_input_logprobs(entries) from exc


def _input_tokens(entries: list[Any]) -> list[tuple[int, float | None, str]]:
    """(token id, logprob, text) of each entry; SGLang sends [logprob, id, text]."""
    try:
        return [
            (int(e[1]), None if e[0] is None else float(e[0]), str(e[2] or "")) for e in entries
        ]
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise _no_input_logprobs(entries) from exc


def _prompt_tokens(result: Any) -> int:
    """`meta_info.prompt_tokens` of one result."""
    try:
        return int(result["meta_info"]["prompt_tokens"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BackendResponseError(
            f"SGLang sent no prompt_tokens count: {str(result)[:200]}"
        ) from exc


def _no_input_logprobs(found: Any) -> BackendResponseError:
    return BackendResponseError(f"SGLang sent no usable input_token_logprobs: {str(found)[:200]}")


def _generation(data: Any) -> Generation:
    if not isinstance(data, dict) or "text" not in data:
        raise BackendResponseError(f"SGLang sent an unexpected body: {str(data)[:200]}")
    meta = data.get("meta_info") or {}
    finish = meta.get("finish_reason")
    logprobs = meta.get("output_token_logprobs")
    return Generation(
        text=str(data["text"]),
        finish_reason=finish.get("type") if isinstance(finish, dict) else finish,
        prompt_tokens=meta.get("prompt_tokens"),
        completion_tokens=meta.get("completion_tokens"),
        cached_tokens=meta.get("cached_tokens"),
        logprobs=_entries(logprobs, meta.get("output_top_logprobs")) if logprobs else None,
    )


def _image_urls(request: GenerateRequest) -> list[str]:
    """The request's images as SGLang's `image_data` takes them (data URLs)."""
    return [
        f"data:{i.mime_type};base64,{base64.b64encode(i.data).decode()}" for i in request.images
    ]


class _SGLangDialect(Dialect):
    def constraint_fields(self, constraint: Constraint, chat: bool) -> dict[str, Any]:
        return constraint_params(constraint)


def _is_sglang(model_info: Any) -> bool:
    return isinstance(model_info, dict) and "model_path" in model_info


# ----- launching (lp.Runtime) ------------------------------------------------------------------


def launch(spec: LaunchSpec) -> Launch:
    """SGLang's server: a model folder, or a hub id the server downloads."""
    command = [
        os.environ.get("LMPROG_SGLANG_PYTHON") or sys.executable,
        "-m",
        "sglang.launch_server",
        "--model-path",
        str(spec.model_path()),
        "--host",
        "127.0.0.1",
        "--port",
        str(spec.port),
        "--max-running-requests",
        str(spec.slots),
        "--context-length",
        str(spec.ctx_per_slot),
        *engine_flags(spec.engine_args),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return Launch(command, env, SGLang(spec.url, chat_template=spec.chat_template))


DIALECT = _SGLangDialect(
    kind="sglang",
    label="SGLang",
    completion_constraints=ALL_CONSTRAINTS,
    chat_constraints=ALL_CONSTRAINTS,
    grammar_syntaxes=frozenset({"gbnf"}),  # its `ebnf` field takes GBNF-style rules
    sampling_extras=frozenset(SAMPLING_EXTRAS),
    prefix_cache=True,
    shared_cache=True,
    self_hosted=True,
    probe=Probe("/get_model_info", _is_sglang),
    env_var="LMPROG_SGLANG_URL",
    native=SGLang,
    native_tools=True,
    parses_tools="if configured",  # only when started with --tool-call-parser (its API won't say)
    engine="sglang",
    launch=launch,
)


def _entries(logprobs: list[list[Any]], tops: list[list[list[Any]]] | None) -> list[dict[str, Any]]:
    """SGLang's `[logprob, id, text]` lists as the entries backends pass on (lmprog.logprobs)."""
    entries = []
    for i, (logprob, token_id, text, *_) in enumerate(logprobs):
        entry: dict[str, Any] = {"logprob": logprob, "id": token_id, "token": text}
        if tops and i < len(tops) and tops[i]:
            entry["top_logprobs"] = [{"logprob": t[0], "id": t[1], "token": t[2]} for t in tops[i]]
        entries.append(entry)
    return entries
