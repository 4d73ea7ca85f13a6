"""Smoke tests of the real llama-server: it builds, starts and completes with both test models."""

from __future__ import annotations

import httpx
import pytest

from tests.support.llama_server import LlamaServer
from tests.support.models import gemma_gguf, tiny_model_gguf

pytestmark = pytest.mark.engine


def test_tiny_model_completes() -> None:
    with LlamaServer(tiny_model_gguf(), slots=2, ctx_per_slot=512) as server:
        resp = httpx.post(
            f"{server.url}/completion",
            json={"prompt": "def hello(world):\n    return", "n_predict": 16, "temperature": 0},
            timeout=60,
        )
        resp.raise_for_status()
        body = resp.json()
        assert isinstance(body["content"], str)
        assert body["content"]
        assert body["tokens_predicted"] > 0


@pytest.mark.gemma
def test_gemma_knows_paris() -> None:
    prompt = (
        "Q: What is the capital of Italy?\nA: Rome\n"
        "Q: What is the capital of Germany?\nA: Berlin\n"
        "Q: What is the capital of France?\nA:"
    )
    with LlamaServer(gemma_gguf(), slots=1, ctx_per_slot=1024) as server:
        resp = httpx.post(
            f"{server.url}/completion",
            json={"prompt": prompt, "n_predict": 8, "temperature": 0},
            timeout=120,
        )
        resp.raise_for_status()
        assert "Paris" in resp.json()["content"]
