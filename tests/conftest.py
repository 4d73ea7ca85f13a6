"""Shared fixtures: real llama-servers started (and stopped) by the tests themselves.

`tiny` is a 2-layer random-weight model (fast; its text is noise, so it proves plumbing and
constraints); `gemma` is Gemma 3 270M from PyPI (slow; proves behaviour). Both servers are
started with lp.Runtime, so the launcher users get is the one the tests use.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support.models import tiny_model_gguf

import lmprog as lp
from lmprog.models import gemma3_270m_gguf

GEMMA_TEMPLATE = Path(lp.__file__).parent / "templates" / "gemma3.jinja"


@pytest.fixture(scope="session")
def tiny_server() -> Iterator[lp.Runtime]:
    with lp.Runtime("llama.cpp", tiny_model_gguf(), slots=4, ctx_per_slot=2048) as server:
        yield server


@pytest.fixture(scope="session")
def gemma_server() -> Iterator[lp.Runtime]:
    with lp.Runtime(
        "llama.cpp",
        gemma3_270m_gguf(),
        slots=4,
        ctx_per_slot=2048,
        chat_template_file=GEMMA_TEMPLATE,
    ) as server:
        yield server


@pytest.fixture(scope="session")
def tiny(tiny_server: lp.Runtime) -> lp.LlamaCpp:
    return lp.LlamaCpp(tiny_server.url)


@pytest.fixture(scope="session")
def gemma(gemma_server: lp.Runtime) -> lp.LlamaCpp:
    return lp.LlamaCpp(gemma_server.url, chat_template="gemma3")
