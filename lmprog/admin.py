"""SGLang's module-level helpers, `flush_cache` and `get_server_info`, for programs moving over
from `sglang` unchanged. They act on `backend`, or the default one."""

from __future__ import annotations

from typing import Any

from lmprog import loop
from lmprog.backends.base import Backend
from lmprog.program import resolve_backend


def flush_cache(backend: Backend | None = None) -> None:
    """Empty the engine's prefix cache (lp.SGLang, lp.Local), e.g. before a cold benchmark."""
    loop.wait(resolve_backend(backend).flush_cache())


def get_server_info(backend: Backend | None = None) -> dict[str, Any]:
    """What the server says about itself (lp.SGLang: `/get_server_info`)."""
    return loop.wait(resolve_backend(backend).server_info())
