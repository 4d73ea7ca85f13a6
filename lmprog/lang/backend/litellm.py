"""`sglang.lang.backend.litellm` (lmprog: a LiteLLM proxy)."""

from __future__ import annotations

from lmprog.hosted import LiteLLM

__all__ = ["LiteLLM"]
