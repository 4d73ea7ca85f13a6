"""`sglang.lang.backend.openai`: the OpenAI API (and compatible servers), and token usage."""

from __future__ import annotations

from lmprog.backends.openai import OpenAI
from lmprog.usage import TokenUsage

__all__ = ["OpenAI", "TokenUsage"]
