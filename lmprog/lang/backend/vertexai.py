"""`sglang.lang.backend.vertexai` (lmprog: Vertex AI's OpenAI-compatible endpoint)."""

from __future__ import annotations

from lmprog.hosted import VertexAI

__all__ = ["VertexAI"]
