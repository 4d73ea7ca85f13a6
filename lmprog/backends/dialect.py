"""What one kind of server accepts beyond the OpenAI API, declared as data.

lp.OpenAI talks to the OpenAI API, vLLM, llama-server, SGLang, `transformers serve` and any
other compatible server through one code path. What differs between them (which constraints
they enforce and with which fields, whether they continue an assistant turn, which token limit
they read, where their chat template comes from, whether warming a prefix pays) is a `Dialect`
declared by the server's own module; lp.OpenAI looks it up instead of branching on a name.
`lmprog.backends.detect` lists every dialect and tells which one answers at a URL.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lmprog.backends.base import Capabilities, GenerateRequest, ToolCallParsing
from lmprog.choices import ChoiceLogprobs, ChoicesMethod
from lmprog.constraints import Constraint
from lmprog.errors import LmprogError
from lmprog.ir import SamplingParams
from lmprog.templates import ChatTemplate

if TYPE_CHECKING:
    from lmprog.backends.base import Backend

ALL_CONSTRAINTS = frozenset({"regex", "json_schema", "choices", "grammar"})
SAMPLING_EXTRAS = ("top_k", "min_p", "min_tokens", "ignore_eos", "stop_token_ids")


class Server(Protocol):
    """What a dialect may ask of the client talking to its server."""

    name: str
    model: str

    async def get(self, path: str) -> Any:
        """The JSON a GET of `path` (from the server's root, e.g. "/props") answers."""

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        """The JSON a POST of `body` to `path` (from the server's root) answers."""


@dataclass(frozen=True)
class Probe:
    """How detection recognises a server: an endpoint only it has, and a check of its body."""

    path: str
    recognise: Callable[[Any], bool]


@dataclass(frozen=True)
class LaunchSpec:
    """What lp.Runtime asks of an engine: serve `model` at `url` with `slots` sequences of
    `ctx_per_slot` tokens; any other keyword becomes a command-line flag."""

    model: Path | None  # None for a router, which serves its workers' model
    url: str
    port: int
    slots: int
    ctx_per_slot: int
    chat_template: str | ChatTemplate | None
    engine_args: dict[str, Any]

    def model_path(self) -> Path:
        """The model, for an engine that serves one."""
        if self.model is None:
            raise TypeError("lp.Runtime needs an engine and a model: Runtime(engine, model)")
        return self.model


@dataclass(frozen=True)
class Launch:
    """How one engine is started: its command line, environment, and the backend for it."""

    command: list[str]
    env: dict[str, str]
    backend: Backend


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server lp.Runtime starts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_binary(name: str, env_var: str, places: Iterable[Path], missing: str) -> Path:
    """An engine's program for lp.Runtime: $`env_var`, else the first of `places` that exists,
    else `name` on PATH; else an error saying how to get one (`missing`)."""
    given = os.environ.get(env_var)
    if given:
        return Path(given)
    for place in places:
        if place.is_file():
            return place
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    raise LmprogError(f"{missing}, or set {env_var} to an existing binary")


def engine_flags(engine_args: dict[str, Any]) -> list[str]:
    """`threads=2, n_gpu_layers=0, no_webui=True` -> `--threads 2 --n-gpu-layers 0 --no-webui`."""
    flags: list[str] = []
    for key, value in engine_args.items():
        if value is None or value is False:
            continue
        flags.append("--" + key.replace("_", "-"))
        if value is not True:
            flags.append(str(value))
    return flags


@dataclass(frozen=True)
class Dialect:
    """One server kind. The defaults describe a generic OpenAI-compatible server."""

    kind: str  # the --backend spec prefix, and what detection reports ("vllm")
    label: str  # how messages name the server ("vLLM")
    completion_constraints: frozenset[str] = frozenset()
    chat_constraints: frozenset[str] = frozenset()
    grammar_syntaxes: frozenset[str] = frozenset()  # of "gbnf", "lark"
    # which of SAMPLING_EXTRAS it honours beside the OpenAI parameters (the others are refused:
    # llama-server, for one, accepts min_tokens and ignores it)
    sampling_extras: frozenset[str] = frozenset()
    # Body fields that make the server continue a final assistant message (its prefill);
    # None: it cannot, so a gen must start its assistant turn.
    continue_fields: Mapping[str, Any] | None = None
    echoes_prefill: bool = False  # its answer repeats the continued text first
    max_tokens_key: str = "max_tokens"
    serves_any_model: bool = False  # ignores the request's `model` (one model per server)
    prefix_cache: bool = False
    shared_cache: bool = False  # one cache for all requests: warming a shared prefix pays
    self_hosted: bool = False  # sent plain JSON by lmprog's client rather than the SDK
    probe: Probe | None = None
    env_var: str | None = None  # where `lmprog backends` looks for a running one
    native: Callable[[str], Backend] | None = None  # its own backend class, given a URL
    engine: str | None = None  # lp.Runtime's name for it ("llama.cpp")
    launch: Callable[[LaunchSpec], Launch] | None = None  # its command line, for lp.Runtime
    unconditional_scores: bool = False  # select's unconditional method works here
    logprobs: bool = True  # returns the logprobs it is asked for
    trims_stop: bool = True  # leaves a stop string out of its text (some leave it in)
    generates: bool = True  # serves completions or chat (an embeddings server does not)
    # may take `tools` on chat requests and answer with parsed `tool_calls` (gen(tools=...)'s
    # native path); tool_calls() says whether it does now
    native_tools: bool = False
    # whether one that may parses calls: "if configured" where that depends on how it was
    # started and its API does not tell (vLLM's and SGLang's --tool-call-parser)
    parses_tools: ToolCallParsing = "yes"

    def capabilities(self, chat: bool) -> Capabilities:
        scoring = {"token_length_normalized", "greedy_token_selection"}
        if self.unconditional_scores and not chat:
            scoring.add("unconditional_likelihood_normalized")
        return Capabilities(
            constraints=self.chat_constraints if chat else self.completion_constraints,
            grammar_syntaxes=self.grammar_syntaxes,
            choices_methods=frozenset(scoring),
            chat_only=chat,
            images=chat,
            streaming=self.generates,
            logprobs=self.logprobs,
            prefix_cache=self.prefix_cache,
            native_tools=self.native_tools and chat,
            continues_turns=self.continue_fields is not None or not chat,
        )

    def sampling_fields(self, sampling: SamplingParams) -> dict[str, Any]:
        """Fields a request needs for its sampling beyond the OpenAI parameters."""
        return {}

    def constraint_fields(self, constraint: Constraint, chat: bool) -> dict[str, Any]:
        """The body fields that make the server enforce `constraint` (one it declares).
        By default OpenAI's structured outputs, which only chat requests take."""
        return {"response_format": response_format(constraint)}

    async def chat_template(self, server: Server) -> ChatTemplate | None:
        """The model's own template, where the server tells it; None where it does not."""
        return None

    async def tool_calls(self, server: Server) -> ToolCallParsing:
        """Whether this server parses tool calls (by default what `native_tools` and
        `parses_tools` say; a server that can be asked overrides this)."""
        return self.parses_tools if self.native_tools else "no"

    async def score_choices(
        self,
        server: Server,
        context: GenerateRequest,
        choices: tuple[str, ...],
        method: ChoicesMethod,
    ) -> list[ChoiceLogprobs] | None:
        """Exact choice scores where the server can give them; None: lp.OpenAI constrains a
        generation to the choices instead."""
        return None


def response_format(constraint: Constraint) -> dict[str, Any]:
    """OpenAI structured outputs: the schema itself, or a wrapper object for choices (the
    API needs an object at the top level; lp.OpenAI unwraps the answer)."""
    if constraint.kind == "choices":
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {
                CHOICE_FIELD: {"type": "string", "enum": list(constraint.choices)},
            },
            "required": [CHOICE_FIELD],
            "additionalProperties": False,
        }
    else:
        assert constraint.schema is not None
        schema = constraint.schema
    return {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": strict_ok(schema)},
    }


CHOICE_FIELD = "lmprog_choice"


def strict_ok(schema: dict[str, Any]) -> bool:
    """OpenAI's strict mode needs every object closed and every property required."""
    if schema.get("type") == "object":
        properties = schema.get("properties", {})
        if schema.get("additionalProperties", True) is not False:
            return False
        if set(schema.get("required", [])) != set(properties):
            return False
        return all(strict_ok(p) for p in properties.values())
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        return strict_ok(schema["items"])
    return not any(k in schema for k in ("anyOf", "oneOf", "allOf", "$ref", "$defs"))


OPENAI_API = Dialect(
    kind="openai",
    label="the OpenAI API",
    chat_constraints=frozenset({"json_schema", "choices"}),
    max_tokens_key="max_completion_tokens",
    native_tools=True,
)
GENERIC = Dialect(
    kind="generic",
    label="an OpenAI-compatible server",
    chat_constraints=frozenset({"json_schema"}),
)
