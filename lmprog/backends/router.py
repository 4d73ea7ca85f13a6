"""SGLang's model gateway (`smg`, PyPI `sglang-router`) in front of several engine workers.

lmprog does not route requests between servers itself: the router does cache-aware routing (a
radix tree of the text it sent each worker), load balancing, retries, health checks and circuit
breaking. This module is its launch recipe for lp.Runtime (`lp.Runtime("sglang-router",
workers=[...])`, and `lp.Runtime(engine, model, replicas=N)`) and the backend that talks to it:
SGLang's native `/generate` when the workers are SGLang, the OpenAI-compatible endpoints with
the workers' own dialect otherwise (smg proxies `/v1/completions` and `/v1/chat/completions` to
llama-server, vLLM and other workers). Every request of a program carries the program's routing
key and trace context as headers (lmprog.backends.base.Routing).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmprog.backends import llamacpp
from lmprog.backends.base import (
    Backend,
    Capabilities,
    GenerateRequest,
    Generation,
    TextCallback,
    ToolCallParsing,
    WrappedBackend,
)
from lmprog.backends.dialect import (
    ALL_CONSTRAINTS,
    Dialect,
    Launch,
    LaunchSpec,
    Probe,
    engine_flags,
    find_binary,
    free_port,
)
from lmprog.backends.http import JsonClient, Secret
from lmprog.backends.openai import BEFORE_DETECTION, OpenAI
from lmprog.backends.sglang import SGLang
from lmprog.choices import ChoiceLogprobs, ChoicesMethod
from lmprog.constraints import Constraint
from lmprog.errors import (
    BackendError,
    BackendUnavailableError,
    LmprogError,
    UnsupportedFeatureError,
)
from lmprog.templates import ChatTemplate

ENGINE = "sglang-router"
POLICIES = ("cache_aware", "round_robin", "power_of_two", "random", "manual")
# What lmprog asks of smg beyond its defaults: look at the workers every second from the start
# (not every 30 s), so a dead one is routed around within seconds (the backends/ recipes use
# these too); and, for lp.Runtime, stop within a second when told to (it kills what is still
# running 10 s after asking).
HEALTH_FLAGS: dict[str, Any] = {"worker_startup_check_interval": 1, "health_check_interval_secs": 1}
ROUTER_DEFAULTS: dict[str, Any] = {
    **HEALTH_FLAGS,
    "shutdown_grace_period_secs": 1,
    "log_level": "warn",
}
ASK_TIMEOUT_S = 10.0


class SGLangRouter(WrappedBackend):
    """An SGLang model gateway (`smg`) at `url`, and the workers behind it.

    Requests go through the router, in the workers' dialect: lp.SGLang's `/generate` for
    SGLang workers, lp.OpenAI's completions (chat with `is_chat_model=True`) for the others.
    `workers`: their URLs (by default the router's `/workers` list); `worker_kind`: their
    server kind ("llamacpp", "vllm", "sglang", ...; by default detected at the first worker).
    Both are asked on first use, not here. The chat template is the one `chat_template=`
    gives, else the first worker's own.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:30000",
        *,
        workers: Sequence[str] = (),
        worker_kind: str | Dialect | None = None,
        model: str | None = None,
        is_chat_model: bool = False,
        chat_template: str | ChatTemplate | None = None,
        timeout: float = 600.0,
        max_retries: int = 3,
    ) -> None:
        self.url = url.rstrip("/")
        self.name = f"lp.SGLangRouter({self.url!r})"
        self.workers = [w.rstrip("/") for w in workers]  # else the router's list, on first use
        self._worker_kind = worker_kind
        self._model = model
        self._is_chat_model = is_chat_model
        self._chat_template = chat_template
        self._timeout, self._max_retries = timeout, max_retries
        self._client = JsonClient(self.url, self.name, ASK_TIMEOUT_S, Secret(None))
        self._setup_lock: asyncio.Lock | None = None
        self.worker_dialect: Dialect | None = None
        self.inner_dialect: Dialect | None = None
        self._inner: Backend | None = None
        # Until then, what the most capable workers take: checked again at each request.
        self._undetected = OpenAI(
            model or "default",
            base_url=self.url + "/v1",
            is_chat_model=is_chat_model,
            server=BEFORE_DETECTION,
        )
        self._direct: list[Backend] = []

    @property
    def inner(self) -> Backend:  # type: ignore[override]
        """The backend in the workers' dialect, once set up (lp.OpenAI's undetected before)."""
        return self._inner or self._undetected

    async def _ready(self) -> Backend:
        """The workers, their dialect and the backend in it, asked once."""
        if self._inner is None:
            self._setup_lock = self._setup_lock or asyncio.Lock()
            async with self._setup_lock:
                if self._inner is None:
                    self._inner = await self._set_up()
        return self._inner

    async def _set_up(self) -> Backend:
        if not self.workers:
            self.workers = await self._listed_workers()
        if not self.workers:
            raise LmprogError(f"the router at {self.url} lists no workers; start them first")
        dialect = await _dialect(self._worker_kind, self.workers[0])
        self.worker_dialect = dialect
        dialect = BEHIND_ROUTER.get(dialect.kind, dialect)
        self.inner_dialect = dialect
        model = self._model
        inner: Backend
        if dialect.kind == "sglang" and not self._is_chat_model:
            inner = SGLang(
                self.url,
                chat_template=self._chat_template,
                timeout=self._timeout,
                max_retries=self._max_retries,
            )
        else:
            if model is None:
                served = dialect.serves_any_model
                model = "default" if served else await _served_model(self.workers[0])
            inner = OpenAI(
                model,
                base_url=self.url + "/v1",
                is_chat_model=self._is_chat_model,
                server=dialect,
                chat_template=self._chat_template,
                timeout=self._timeout,
                max_retries=self._max_retries,
            )
        # The router passes generation on, not a server's own endpoints (llama-server's
        # /props, with its template and slots): the workers are asked directly.
        native = dialect.native
        self._direct = [
            native(w) if native else OpenAI(model or "default", base_url=w + "/v1", server=dialect)
            for w in self.workers
        ]
        return inner

    def check_constraint(self, constraint: Constraint | None) -> None:
        """As the inner backend's, with the cause where smg is what stands in the way."""
        refused = constraint is not None and constraint.kind not in self.capabilities.constraints
        if refused and isinstance(self.inner_dialect, _LlamaServerBehindRouter):
            assert constraint is not None
            raise UnsupportedFeatureError(
                self.name,
                f"enforce a {constraint.kind} constraint ({constraint.description}) on "
                f"llama-server workers: {SCHEMA_CAUSE}",
                "use regex= or a grammar, lp.LlamaCpp on one worker, or SGLang or vLLM workers",
            )
        super().check_constraint(constraint)

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        await self._ready()
        self.check_constraint(request.constraint)  # again, now that the workers are known
        return await super().generate(request, on_text)

    async def score_choices(
        self, context: GenerateRequest, choices: tuple[str, ...], method: ChoicesMethod
    ) -> list[ChoiceLogprobs]:
        return await (await self._ready()).score_choices(context, choices, method)

    async def warm(self, prompt: str) -> None:
        await (await self._ready()).warm(prompt)

    async def tool_call_parsing(self) -> ToolCallParsing:
        return await (await self._ready()).tool_call_parsing()

    async def detected_capabilities(self) -> Capabilities:
        return await (await self._ready()).detected_capabilities()

    async def flush_cache(self) -> None:
        await (await self._ready()).flush_cache()

    async def chat_template(self) -> ChatTemplate:
        if self._template is None:
            inner = await self._ready()
            given = self._chat_template is not None
            self._template = await (inner if given else self._direct[0]).chat_template()
        return self._template

    async def concurrency_hint(self) -> int:
        """The sum of the workers' own hints (for llama-server, all their slots: more programs
        at once would push each other's prefixes out of the slots); the router's own where
        the workers cannot be reached from here (inside a cluster's network)."""
        inner = await self._ready()
        try:
            return sum([await w.concurrency_hint() for w in self._direct])
        except BackendError:
            return await inner.concurrency_hint()

    def cached_chat_template(self) -> ChatTemplate | None:
        return self._template

    async def ping(self) -> None:
        if not [w for w in await self._router_workers() if w.get("is_healthy")]:
            raise BackendUnavailableError(f"{self.name} has no healthy worker")

    async def server_info(self) -> dict[str, Any]:
        """The router's workers (URL, health, load) and the kind of server they are."""
        await self._ready()
        assert self.worker_dialect is not None
        return {"server": ENGINE, "workers": await self._router_workers(),
                "worker_kind": self.worker_dialect.kind}  # fmt: skip

    async def _router_workers(self) -> list[dict[str, Any]]:
        answer = await self._client.get("/workers")  # its errors name the router
        return list(answer.get("workers") or []) if isinstance(answer, dict) else []

    async def _listed_workers(self) -> list[str]:
        try:
            listed = await self._router_workers()
        except BackendError as exc:
            raise BackendUnavailableError(f"{exc}; or pass workers=[url, ...]") from exc
        return [str(w["url"]) for w in listed if "url" in w]

    async def aclose(self) -> None:
        for backend in [self._undetected, *([self._inner] if self._inner else []), *self._direct]:
            await backend.aclose()
        await self._client.aclose()

    def __repr__(self) -> str:
        kind = self.worker_dialect.label if self.worker_dialect else "not yet asked"
        return f"<lmprog {self.name}: {len(self.workers)} workers ({kind})>"


async def _dialect(kind: str | Dialect | None, worker: str) -> Dialect:
    """The workers' dialect: given, named, or detected at `worker`."""
    from lmprog.backends.detect import by_kind, detect  # detect lists this module's dialect

    if isinstance(kind, Dialect):
        return kind
    if kind is not None:
        return by_kind(kind)
    return await detect(worker, f"the router's worker {worker}")


async def _served_model(worker: str) -> str:
    """The model name a worker serves (vLLM checks the request's `model`)."""
    client = JsonClient(worker, f"the router's worker {worker}", ASK_TIMEOUT_S, Secret(None))
    try:
        listed = await client.get("/v1/models")
        return str(listed["data"][0]["id"])
    except (BackendError, TypeError, KeyError, IndexError) as exc:
        raise BackendUnavailableError(
            f"cannot read the model the worker at {worker} serves ({exc}); pass model="
        ) from exc
    finally:
        await client.aclose()


# ----- what changes for workers behind smg ----------------------------------------------------


SCHEMA_CAUSE = (
    "smg reads a request's `json_schema` as a string (SGLang's type) and llama-server takes "
    "only an object there"
)


class _LlamaServerBehindRouter(Dialect):
    """llama-server's dialect with smg in between: JSON schemas cannot pass (SCHEMA_CAUSE;
    llama-server answers "schema must be an object"); grammars, regexes and choices do."""

    def constraint_fields(self, constraint: Constraint, chat: bool) -> dict[str, Any]:
        return llamacpp.constraint_fields(constraint)


def _behind_router(dialect: Dialect) -> Dialect:
    fields = {f.name: getattr(dialect, f.name) for f in dataclasses.fields(Dialect)}
    no_schemas = ALL_CONSTRAINTS - {"json_schema"}
    fields.update(completion_constraints=no_schemas, chat_constraints=no_schemas)
    return _LlamaServerBehindRouter(**fields)


BEHIND_ROUTER = {"llamacpp": _behind_router(llamacpp.DIALECT)}


# ----- launching (lp.Runtime) -----------------------------------------------------------------


def smg_binary() -> Path:
    """$LMPROG_SMG, else the `smg` installed beside this Python, else `smg` on PATH."""
    return find_binary(
        "smg",
        "LMPROG_SMG",
        [Path(sys.executable).parent / "smg"],
        "no `smg` binary (SGLang's router): pip install 'lmprog[router]' (PyPI sglang-router)",
    )


def launch(spec: LaunchSpec) -> Launch:
    """smg in front of `workers=[url, ...]` with `policy=` (cache_aware by default);
    `worker_kind=` names the workers' server kind (detected otherwise); any other keyword
    becomes an smg flag (`retry_max_retries=2` -> `--retry-max-retries 2`)."""
    args = dict(spec.engine_args)
    workers = [str(w) for w in args.pop("workers", None) or ()]
    if not workers:
        raise TypeError('lp.Runtime("sglang-router") needs workers=[url, ...]')
    policy = args.pop("policy", "cache_aware")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    backend = SGLangRouter(
        spec.url,
        workers=workers,
        worker_kind=args.pop("worker_kind", None),
        model=args.pop("model", None),
        chat_template=spec.chat_template,
    )
    command = [
        str(smg_binary()),
        "launch",
        "--host",
        "127.0.0.1",
        "--port",
        str(spec.port),
        "--worker-urls",
        *backend.workers,
        "--policy",
        policy,
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(args.pop("prometheus_port", None) or free_port()),
        *engine_flags({**ROUTER_DEFAULTS, **args}),
    ]
    return Launch(command, {**os.environ, "PYTHONUNBUFFERED": "1"}, backend)


def _is_smg(answer: Any) -> bool:
    return isinstance(answer, dict) and isinstance(answer.get("workers"), list)


DIALECT = Dialect(
    kind="sglang-router",
    label="SGLang's router (smg)",
    self_hosted=True,
    probe=Probe("/workers", _is_smg),
    native=SGLangRouter,
    engine=ENGINE,
    launch=launch,
)
