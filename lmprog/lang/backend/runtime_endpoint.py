"""`sglang.lang.backend.runtime_endpoint`: an SGLang server's native API, and the launcher."""

from __future__ import annotations

from lmprog.backends.sglang import RuntimeEndpoint
from lmprog.launch import Runtime

__all__ = ["Runtime", "RuntimeEndpoint"]
