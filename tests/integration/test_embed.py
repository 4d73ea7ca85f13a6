"""lp.embed against a real server's /v1/embeddings (llama-server with --embedding)."""

from __future__ import annotations

import math

import pytest
from support.models import tiny_model_gguf

import lmprog as lp

pytestmark = pytest.mark.engine


def test_embed_returns_one_vector_per_text() -> None:
    with lp.Runtime("llama.cpp", tiny_model_gguf(), slots=1, embedding=True, pooling="mean") as rt:
        backend = lp.OpenAI("tiny", base_url=rt.url + "/v1")
        vectors = lp.embed(["def main():", "import os", "def main():"], backend=backend)
        assert len(vectors) == 3
        assert len(vectors[0]) == 128  # the tiny model's hidden size
        assert vectors[0] == pytest.approx(vectors[2])
        assert vectors[0] != pytest.approx(vectors[1])
        assert all(math.isfinite(x) for x in vectors[1])
        assert len(lp.embed("one text", backend=backend)) == 1


def test_embed_on_a_backend_without_embeddings_is_refused() -> None:
    with pytest.raises(lp.UnsupportedFeatureError, match="embed"):
        lp.embed(["x"], backend=lp.LlamaCpp("http://127.0.0.1:9"))
