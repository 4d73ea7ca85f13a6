"""Which server answers at a URL, and every server kind lmprog knows, in one table.

Each server module declares its Dialect with a probe: an endpoint only that engine has and a
check of its answer (SGLang `/get_model_info`, vLLM `/version`, llama-server `/props`). `detect`
tries them in order; a server none of them recognises is a generic OpenAI-compatible one.
lp.OpenAI detects its server with it, and so does the CLI (`lmprog serve-info`, `--backend URL`,
`lmprog backends`), so there is one place to add an engine: its module and a line in SERVERS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmprog.backends import infinity, llamacpp, router, sglang, transformers_serve, vllm
from lmprog.backends.dialect import GENERIC, OPENAI_API, Dialect
from lmprog.backends.http import JsonClient, Secret
from lmprog.errors import BackendResponseError, LmprogError

# The self-hosted engines lmprog knows, in the order they are probed.
SERVERS: tuple[Dialect, ...] = (
    sglang.DIALECT,
    vllm.DIALECT,
    llamacpp.DIALECT,
    transformers_serve.DIALECT,
    infinity.DIALECT,
    router.DIALECT,  # last: in front of SGLang workers, smg answers SGLang's probe
)
PROBE_TIMEOUT_S = 10.0


def by_kind(kind: str) -> Dialect:
    """The dialect named `kind` ("vllm", "llamacpp", "sglang", "openai", "generic", ...)."""
    for dialect in (*SERVERS, OPENAI_API, GENERIC):
        if dialect.kind == kind:
            return dialect
    known = ", ".join(d.kind for d in (*SERVERS, OPENAI_API, GENERIC))
    raise LmprogError(f"no server kind {kind!r}; lmprog knows {known}")


@dataclass
class Detected:
    """What answered at a URL: its dialect, and the probe answers that settled it."""

    dialect: Dialect
    answers: dict[str, Any] = field(default_factory=dict)  # probe path -> JSON body


async def identify(root: str, name: str, api_key: str | None = None) -> Detected:
    """Probe the server at `root` (its URL without /v1). An unreachable server raises
    BackendUnavailableError or BackendTimeoutError; one that answers no probe is generic."""
    client = JsonClient(root, name, PROBE_TIMEOUT_S, Secret(api_key), max_retries=0)
    answers: dict[str, Any] = {}
    try:
        for dialect in SERVERS:
            assert dialect.probe is not None
            try:
                body = await client.get(dialect.probe.path)
            except BackendResponseError:  # an HTTP error or a body that is not JSON: not it
                continue
            answers[dialect.probe.path] = body
            if dialect.probe.recognise(body):
                return Detected(dialect, answers)
        return Detected(GENERIC, answers)
    finally:
        await client.aclose()


async def detect(root: str, name: str, api_key: str | None = None) -> Dialect:
    """The dialect of the server at `root` (see `identify`)."""
    return (await identify(root, name, api_key)).dialect
