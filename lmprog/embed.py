"""lp.embed: embedding vectors from a backend that serves them (`/v1/embeddings`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from lmprog import loop
from lmprog.backends.base import Backend
from lmprog.errors import UnsupportedFeatureError
from lmprog.program import resolve_backend


class Embedder(Protocol):
    """Anything with `aembed` serves embeddings (lp.OpenAI, lp.LocalEmbeddings)."""

    name: str

    async def aembed(self, texts: list[str]) -> list[list[float]]: ...


def embed(
    texts: str | Sequence[str], backend: Backend | Embedder | None = None
) -> list[list[float]]:
    """One vector per text (a single string gives a list holding one vector)."""
    return loop.wait(aembed(texts, backend))


async def aembed(
    texts: str | Sequence[str], backend: Backend | Embedder | None = None
) -> list[list[float]]:
    """`embed` for asyncio code."""
    chosen: Backend | Embedder = backend if backend is not None else resolve_backend(None)
    batch = [texts] if isinstance(texts, str) else list(texts)
    method = getattr(chosen, "aembed", None)
    if method is None:
        raise UnsupportedFeatureError(
            chosen.name,
            "embed texts",
            "use lp.LocalEmbeddings() (in-process), or lp.OpenAI(model, base_url=...) on a "
            "server with /v1/embeddings (vLLM, LM Studio, infinity, OpenAI)",
        )
    vectors: list[list[float]] = await loop.await_on_loop(method(batch))
    return vectors
