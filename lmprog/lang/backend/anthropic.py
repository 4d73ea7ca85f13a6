"""`sglang.lang.backend.anthropic` (lmprog: Anthropic's OpenAI-compatible endpoint)."""

from __future__ import annotations

from lmprog.hosted import Anthropic

__all__ = ["Anthropic"]
