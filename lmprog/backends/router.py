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

import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from lmprog import loop
from lmprog.backends import llamacpp
from lmprog.backends.base import Backend, WrappedBackend
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
from lmprog.backends.openai import OpenAI
from lmprog.backends.sglang import SGLang
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
    The chat template is the one `chat_template=` gives, else the first worker's own.
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
        self.workers = [w.rstrip("/") for w in workers] or _listed_workers(self.url)
        if not self.workers:
            raise LmprogError(f"the router at {self.url} lists no workers; start them first")
        dialect = _dialect(worker_kind, self.workers[0])
        self.worker_dialect = dialect
        dialect = BEHIND_ROUTER.get(dialect.kind, dialect)
        self.inner_dialect = dialect
        inner: Backend
        if dialect.kind == "sglang" and not is_chat_model:
            inner = SGLang(
                self.url, chat_template=chat_template, timeout=timeout, max_retries=max_retries
            )
        else:
            if model is None:
                model = "default" if dialect.serves_any_model else _served_model(self.workers[0])
            inner = OpenAI(
                model,
                base_url=self.url + "/v1",
                is_chat_model=is_chat_model,
                server=dialect,
                chat_template=chat_template,
                timeout=timeout,
                max_retries=max_retries,
            )
        super().__init__(inner)
        self.name = f"lp.SGLangRouter({self.url!r})"
        # The router passes generation on, not a server's own endpoints (llama-server's
        # /props, with its template and slots): the workers are asked directly.
        native = dialect.native
        self._direct = [
            native(w) if native else OpenAI(model or "default", base_url=w + "/v1", server=dialect)
            for w in self.workers
        ]

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

    async def chat_template(self) -> ChatTemplate:
        if self._template is None:
            given = self.inner.chat_template_choice is not None
            self._template = await (self.inner if given else self._direct[0]).chat_template()
        return self._template

    async def concurrency_hint(self) -> int:
        """The sum of the workers' own hints (for llama-server, all their slots: more programs
        at once would push each other's prefixes out of the slots); the router's own where
        the workers cannot be reached from here (inside a cluster's network)."""
        try:
            return sum([await w.concurrency_hint() for w in self._direct])
        except BackendError:
            return await self.inner.concurrency_hint()

    def cached_chat_template(self) -> ChatTemplate | None:
        return self._template

    async def ping(self) -> None:
        if not [w for w in await self._router_workers() if w.get("is_healthy")]:
            raise BackendUnavailableError(f"{self.name} has no healthy worker")

    async def server_info(self) -> dict[str, Any]:
        """The router's workers (URL, health, load) and the kind of server they are."""
        return {"server": ENGINE, "workers": await self._router_workers(),
                "worker_kind": self.worker_dialect.kind}  # fmt: skip

    async def _router_workers(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=ASK_TIMEOUT_S) as client:
            try:
                answer = (await client.get(self.url + "/workers")).json()
            except (httpx.HTTPError, ValueError) as exc:
                raise BackendUnavailableError(f"cannot reach {self.name}: {exc}") from exc
        return list(answer.get("workers") or [])

    async def aclose(self) -> None:
        await self.inner.aclose()
        for worker in self._direct:
            await worker.aclose()

    def __repr__(self) -> str:
        return f"<lmprog {self.name}: {len(self.workers)} {self.worker_dialect.label} workers>"


def _listed_workers(url: str) -> list[str]:
    try:
        answer = httpx.get(url + "/workers", timeout=ASK_TIMEOUT_S).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise BackendUnavailableError(
            f"cannot ask the router at {url} for its workers ({exc}); is it running? "
            "Or pass workers=[url, ...]"
        ) from exc
    return [str(w["url"]) for w in answer.get("workers") or () if "url" in w]


def _dialect(kind: str | Dialect | None, worker: str) -> Dialect:
    """The workers' dialect: given, named, or detected at `worker`."""
    from lmprog.backends.detect import by_kind, detect  # detect lists this module's dialect

    if isinstance(kind, Dialect):
        return kind
    if kind is not None:
        return by_kind(kind)
    return loop.wait(detect(worker, f"the router's worker {worker}"))


def _served_model(worker: str) -> str:
    """The model name a worker serves (vLLM checks the request's `model`)."""
    try:
        listed = httpx.get(worker + "/v1/models", timeout=ASK_TIMEOUT_S).json()
        return str(listed["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
        raise BackendUnavailableError(
            f"cannot read the model the worker at {worker} serves ({exc}); pass model="
        ) from exc


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
