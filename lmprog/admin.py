"""SGLang's module-level helpers, `flush_cache` and `get_server_info`, for programs moving over
from `sglang` unchanged. They act on `backend`, or the default one."""

from __future__ import annotations

import inspect
from typing import Any

from lmprog import loop
from lmprog.backends.base import Backend, WrappedBackend
from lmprog.errors import UnsupportedFeatureError
from lmprog.program import resolve_backend


def flush_cache(backend: Backend | None = None) -> None:
    """Empty the engine's prefix cache (lp.SGLang, lp.Local), e.g. before a cold benchmark."""
    chosen = _unwrapped(resolve_backend(backend))
    flush = getattr(chosen, "flush_cache", None)
    if flush is None:
        raise UnsupportedFeatureError(
            chosen.name, "flush its prefix cache", "restart the server to start cold"
        )
    result = flush()
    if inspect.isawaitable(result):
        loop.wait(result)


def get_server_info(backend: Backend | None = None) -> dict[str, Any]:
    """What the server says about itself (lp.SGLang: `/get_server_info`)."""
    chosen = _unwrapped(resolve_backend(backend))
    info = getattr(chosen, "server_info", None)
    if info is None:
        raise UnsupportedFeatureError(
            chosen.name, "report server info", "query the server's own endpoints"
        )
    result: dict[str, Any] = loop.wait(info())
    return result


def _unwrapped(backend: Backend) -> Backend:
    """The backend under any wrappers (lp.Runtime, budgets): the one that talks to the engine."""
    while isinstance(backend, WrappedBackend):
        backend = backend.inner
    return backend
