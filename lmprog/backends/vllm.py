"""lp.VLLM: a vLLM server, and vLLM's dialect of the OpenAI API.

vLLM enforces regex, JSON schemas, choices and grammars (GBNF or Lark) through the
`structured_outputs` field on both endpoints, continues a final assistant message with
`continue_final_message`, shares one prefix cache between all requests (so a shared prefix is
worth computing once before a fork), and answers the logprobs of given tokens after given
contexts (`logprob_token_ids`), which gives `select` exact scores for every method.
"""

from __future__ import annotations

import asyncio
import json
import os
import weakref
from pathlib import Path
from typing import Any

from lmprog.backends.base import GenerateRequest, Generation, TextCallback
from lmprog.backends.dialect import (
    ALL_CONSTRAINTS,
    SAMPLING_EXTRAS,
    Dialect,
    Launch,
    LaunchSpec,
    Probe,
    Server,
    engine_flags,
)
from lmprog.backends.openai import OpenAI
from lmprog.choices import ChoiceLogprobs, ChoicesMethod
from lmprog.constraints import Constraint
from lmprog.errors import BackendError, BackendResponseError, LmprogError
from lmprog.paths import cache_dir
from lmprog.prefix import split_choice
from lmprog.templates import ChatTemplate


class VLLM(OpenAI):
    """A vLLM server, through its completions API: regex/json/choice/grammar enforced with
    `structured_outputs`, `select` scored exactly from the choice tokens' logprobs, prefix
    caching.

    model: the served model (default: the only one `/v1/models` lists). chat_template: a
    built-in name or Jinja source; by default the one in the model's files when the server's
    model folder is readable from here.
    """

    template_hint = "start vLLM where its model folder is readable from here"

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
            server=DIALECT,
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

    async def ping(self) -> None:
        await self._resolve_model()
        await super().ping()

    async def _model_chat_template(self) -> ChatTemplate | None:
        await self._resolve_model()
        return await super()._model_chat_template()


class _VLLMDialect(Dialect):
    def constraint_fields(self, constraint: Constraint, chat: bool) -> dict[str, Any]:
        if constraint.kind == "regex":
            return {"structured_outputs": {"regex": constraint.pattern}}
        if constraint.kind == "choices":
            return {"structured_outputs": {"choice": list(constraint.choices)}}
        if constraint.kind == "json_schema":
            return {"structured_outputs": {"json": constraint.schema}}
        return {"structured_outputs": {"grammar": constraint.grammar}}

    async def chat_template(self, server: Server) -> ChatTemplate | None:
        """The one in the served model's folder (`root` in /v1/models), when readable here."""
        listed = await server.get("/v1/models")
        served = next((m for m in listed.get("data", []) if m.get("id") == server.model), None)
        root = served.get("root") if isinstance(served, dict) else None
        return ChatTemplate.from_model_dir(root) if root else None

    async def score_choices(
        self,
        server: Server,
        context: GenerateRequest,
        choices: tuple[str, ...],
        method: ChoicesMethod,
    ) -> list[ChoiceLogprobs] | None:
        """Exact scores: the logprob of each choice token where the model predicts it.

        Prompt+choice is tokenized as a whole and split where it leaves the prompt's
        tokenization (a word straddling the boundary is settled the way the model reads it).
        Then one request lists every context a choice token follows, as token ids, and asks
        the logprobs of those tokens there (`logprob_token_ids`: vLLM reads them from the raw
        log-softmax, before allowed_token_ids, penalties and logits processors; the request
        has no constraint, whose mask vLLM applies before that, renormalising the logprobs).
        Each context is an ordinary prefill with one sampled position, which the prefix cache
        can serve; prompt logprobs compute every prompt+choice in full, outside the cache,
        with the whole vocabulary at every position. A server whose completions do not take
        `logprob_token_ids` (vLLM before its PR #43463, May 2026) is read from prompt logprobs
        instead.
        """
        if server not in _WITHOUT_TOKEN_LOGPROBS:
            scored = await _score_by_token_logprobs(server, context.prompt, choices, method)
            if scored is not None:
                return scored
            _WITHOUT_TOKEN_LOGPROBS.add(server)
        return await _score_by_prompt_logprobs(server, context.prompt, choices, method)


# Servers (clients, weakly held) found not to answer `logprob_token_ids`.
_WITHOUT_TOKEN_LOGPROBS: weakref.WeakSet[Server] = weakref.WeakSet()
MAX_LOGPROB_TOKEN_IDS = 128  # vLLM's limit per request (vllm.sampling_params)
_Step = tuple[tuple[int, ...], int]  # (context token ids, the token that follows)


async def _score_by_token_logprobs(
    server: Server, prompt: str, choices: tuple[str, ...], method: ChoicesMethod
) -> list[ChoiceLogprobs] | None:
    """Scores from the logprobs of given tokens after given contexts; None where the server
    does not answer them (an older vLLM)."""
    unconditional = method.requires_unconditional_logprobs
    tokenized = await asyncio.gather(
        _tokenize_pieces(server, prompt, pieces=False),
        *(_tokenize_pieces(server, prompt + choice) for choice in choices),
        *([_tokenize_pieces(server, "", pieces=False)] if unconditional else []),
    )
    prompt_ids = tokenized[0][0]
    bos = tokenized[-1][0][:1] if unconditional else []
    # per choice: its own tokens' pieces, and a (context, token) step for each own token,
    # after the prompt and (unconditional) after the BOS alone
    plans: list[tuple[str, tuple[str, ...], list[_Step], list[_Step]]] = []
    for choice, (full, pieces) in zip(choices, tokenized[1 : 1 + len(choices)], strict=True):
        shared = len(split_choice(prompt_ids, full, at_least=1)[0])
        own = full[shared:]
        after_prompt = [(tuple(full[: shared + k]), token) for k, token in enumerate(own)]
        alone = [(tuple(bos + own[:k]), token) for k, token in enumerate(own)]
        plans.append((choice, tuple(pieces[shared:]), after_prompt, alone if unconditional else []))
    wanted: dict[tuple[int, ...], set[int]] = {}
    for _, _, after_prompt, alone in plans:
        for ctx, token in after_prompt + alone:
            if ctx:  # a first token with nothing before it (no BOS) has no logprob: 0.0
                wanted.setdefault(ctx, set()).add(token)
    read = await _token_logprobs(server, wanted)
    if read is None:
        return None

    def logprobs(steps: list[_Step]) -> tuple[float, ...]:
        return tuple(read[step] if step[0] else 0.0 for step in steps)

    return [
        ChoiceLogprobs(
            choice, logprobs(after_prompt), pieces, logprobs(alone) if unconditional else None
        )
        for choice, pieces, after_prompt, alone in plans
    ]


async def _token_logprobs(
    server: Server, wanted: dict[tuple[int, ...], set[int]]
) -> dict[_Step, float] | None:
    """The logprob of each wanted token right after its context (token ids, used as given):
    all contexts in one request (one per 128 distinct tokens); None where the server did
    not answer with exactly the tokens asked for (it does not take `logprob_token_ids`)."""
    tokens = sorted(set().union(*wanted.values()))
    groups = [
        tokens[i : i + MAX_LOGPROB_TOKEN_IDS] for i in range(0, len(tokens), MAX_LOGPROB_TOKEN_IDS)
    ]
    requests = []
    for group in groups:
        asked = set(group)
        contexts = [ctx for ctx, want in wanted.items() if want & asked]
        body = {
            "model": server.model,
            "prompt": [list(ctx) for ctx in contexts],
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": 0,  # required with logprob_token_ids; they replace the top-k
            "logprob_token_ids": group,
            "return_tokens_as_token_ids": True,  # keys "token_id:N": no two tokens collide
        }
        requests.append((contexts, asked, body))
    # vLLM ignores (and logs) request fields it does not know
    responses = await asyncio.gather(
        *(server.post("/v1/completions", body) for _, _, body in requests)
    )
    read: dict[_Step, float] = {}
    for (contexts, asked, _), response in zip(requests, responses, strict=True):
        try:
            for choice in response["choices"]:
                ctx = contexts[choice["index"]]
                top = choice["logprobs"]["top_logprobs"][0]
                for token in wanted[ctx] & asked:
                    value = top.get(f"token_id:{token}")
                    if value is None:  # logprob_token_ids ignored: a plain top-k came back
                        return None
                    read[ctx, token] = float(value)
        except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
            raise BackendResponseError(
                f"{server.name} sent token logprobs lmprog could not read: {exc!r}"
            ) from exc
    return read


async def _score_by_prompt_logprobs(
    server: Server, prompt: str, choices: tuple[str, ...], method: ChoicesMethod
) -> list[ChoiceLogprobs]:
    """Scores from prompt logprobs (any vLLM), two requests at once: every prompt+choice goes
    as text in one scoring request, whose prompt logprobs name the token ids the server read;
    the prompt alone is tokenized beside it. vLLM computes these prompts in full (prompt
    logprobs bypass its prefix cache)."""
    prompt_ids, fulls = await asyncio.gather(
        _tokenize(server, prompt),
        _read_prompts(server, [prompt + choice for choice in choices]),
    )
    scored, own_ids = [], []
    for choice, full in zip(choices, fulls, strict=True):
        # the first entry is a placeholder: the first token has no logprob
        full = [(prompt_ids[0] if prompt_ids else -1, 0.0, ""), *full[1:]]
        _, own = split_choice(prompt_ids, full, token_id=lambda entry: entry[0], at_least=1)
        own_ids.append([token for token, _, _ in own])
        scored.append(
            ChoiceLogprobs(
                choice, tuple(lp for _, lp, _ in own), tuple(piece for _, _, piece in own)
            )
        )
    if method.requires_unconditional_logprobs:
        bos = (await _tokenize(server, ""))[:1]
        alone = await _read_prompts(server, [bos + ids for ids in own_ids])
        scored = [
            ChoiceLogprobs(c.choice, c.token_logprobs, c.tokens, tuple(lp for _, lp, _ in a))
            for c, a in zip(scored, (read[len(bos) :] for read in alone), strict=True)
        ]
    return scored


async def _read_prompts(
    server: Server, prompts: list[str] | list[list[int]]
) -> list[list[tuple[int, float, str]]]:
    """(token id, logprob, piece) of every token of each prompt (text or token ids) as the
    server read it, teacher-forced, in one request. The first token has no logprob: its entry
    is a placeholder (-1, 0.0, "")."""
    body = {
        "model": server.model,
        "prompt": prompts,
        "max_tokens": 1,
        "temperature": 0.0,
        "prompt_logprobs": 0,
    }
    response = await server.post("/v1/completions", body)
    results: list[list[tuple[int, float, str]]] = [[] for _ in prompts]
    try:
        for choice in response["choices"]:
            entries = choice.get("prompt_logprobs")
            if entries is None:
                raise BackendResponseError(f"{server.name} returned no prompt logprobs")
            read = [(-1, 0.0, "")]
            for entry in entries[1:]:
                ((token, info),) = entry.items()  # prompt_logprobs=0: the read token only
                read.append((int(token), float(info["logprob"]), str(info["decoded_token"])))
            results[choice["index"]] = read
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
        raise BackendResponseError(
            f"{server.name} sent prompt logprobs lmprog could not read: {exc!r}"
        ) from exc
    return results


async def _tokenize(server: Server, text: str) -> list[int]:
    return (await _tokenize_pieces(server, text, pieces=False))[0]


async def _tokenize_pieces(
    server: Server, text: str, pieces: bool = True
) -> tuple[list[int], list[str]]:
    """Token ids of a text prompt as the server tokenizes it (BOS included), and the
    tokenizer's own name for each token ("▁positive"; ids where the server gives none)."""
    body: dict[str, Any] = {"model": server.model, "prompt": text, "add_special_tokens": True}
    if pieces:
        body["return_token_strs"] = True
    reply = await server.post("/tokenize", body)
    ids = [int(t) for t in reply["tokens"]]
    names = reply.get("token_strs") if pieces else None
    return ids, [str(n) for n in names] if names else [f"token_id:{t}" for t in ids]


def _is_vllm(body: Any) -> bool:
    return isinstance(body, dict) and "version" in body


# ----- launching (lp.Runtime) ------------------------------------------------------------------

# llguidance enforces regex, choice, JSON schema and both GBNF and Lark grammars; with
# disable_any_whitespace a weak model cannot fill JSON with whitespace (vLLM's default let
# the tiny test model write 60 newlines inside `{`).
VLLM_STRUCTURED_OUTPUTS = {"backend": "guidance", "disable_any_whitespace": True}


def launch(spec: LaunchSpec) -> Launch:
    """vLLM's OpenAI server on a model folder, from the venv backends/vllm/install.sh made."""
    model = spec.model_path()
    if not model.is_dir():
        raise FileNotFoundError(f"lp.Runtime: no model folder at {model}")
    engine_args = dict(spec.engine_args)
    name = str(engine_args.pop("served_model_name", model.name))
    command = [
        str(vllm_python()),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        str(spec.port),
        "--max-model-len",
        str(spec.ctx_per_slot),
        "--max-num-seqs",
        str(spec.slots),
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",  # prefix-cache hits in usage
        "--disable-uvicorn-access-log",
        "--structured-outputs-config",
        json.dumps(VLLM_STRUCTURED_OUTPUTS),
        *engine_flags(engine_args),
    ]
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),  # GiB
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "PYTHONUNBUFFERED": "1",  # so the log tail in errors is current
    }
    return Launch(command, env, VLLM(spec.url, model=name, chat_template=spec.chat_template))


def vllm_python() -> Path:
    """$LMPROG_VLLM_PYTHON, else the interpreter of the venv backends/vllm/install.sh made."""
    given = os.environ.get("LMPROG_VLLM_PYTHON")
    if given:
        return Path(given)
    for flavour in ("vllm-gpu-venv", "vllm-cpu-venv"):
        python = cache_dir() / flavour / "bin" / "python"
        if python.is_file():
            return python
    raise LmprogError(
        "vLLM is not installed: run `bash backends/vllm/install.sh` (from the lmprog "
        "repository; it makes a virtual environment of its own), or set LMPROG_VLLM_PYTHON"
    )


DIALECT = _VLLMDialect(
    kind="vllm",
    label="vLLM",
    completion_constraints=ALL_CONSTRAINTS,
    chat_constraints=ALL_CONSTRAINTS,
    grammar_syntaxes=frozenset({"gbnf", "lark"}),
    sampling_extras=frozenset(SAMPLING_EXTRAS),
    continue_fields={"continue_final_message": True, "add_generation_prompt": False},
    prefix_cache=True,
    shared_cache=True,
    self_hosted=True,
    probe=Probe("/version", _is_vllm),
    env_var="LMPROG_VLLM_URL",
    native=VLLM,
    unconditional_scores=True,
    native_tools=True,
    # only when started with a tool-call parser (even "required" needs one, from 0.32 on),
    # which its API does not tell
    parses_tools="if configured",
    engine="vllm",
    launch=launch,
)
