"""Prefix-aware batch scheduling (lmprog.scheduling) on the scripted test double."""

from __future__ import annotations

import asyncio

import pytest

import lmprog as lp
from lmprog import scheduling
from lmprog.backends.base import GenerateRequest, Generation, TextCallback
from lmprog.prefix import PrefixIndex
from lmprog.scheduling import prefix_order
from lmprog.testing import ScriptedBackend

FEW_SHOT = "".join(f"Q: what is {i} plus {i}?\nA: {2 * i}\n" for i in range(80))  # ~2,000 chars


class LoggingBackend(ScriptedBackend):
    """Logs warm-ups and requests in the order they reach the engine."""

    def __init__(self) -> None:
        super().__init__(lambda request: "ok")
        self.log: list[tuple[str, str]] = []

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        self.log.append(("gen", request.prompt))
        return await super().generate(request, on_text)

    async def warm(self, prompt: str) -> None:
        self.log.append(("warm", prompt))
        await asyncio.sleep(0.01)  # a real warm-up takes a while: the others must wait for it
        await super().warm(prompt)


@lp.function
def few_shot(s, question):
    s += FEW_SHOT + "Q: " + question + "\nA:" + lp.gen("answer", max_tokens=4)


@lp.function
def about(s, doc, question):
    s += "Document: " + doc + "\nQuestion: " + question + "\nAnswer:" + lp.gen("answer")


def test_a_shared_prefix_is_computed_once_before_the_items_that_share_it() -> None:
    backend = LoggingBackend()
    questions = [f"what is {i} times 3?" for i in range(12)]
    states = few_shot.run_batch([{"question": q} for q in questions], backend=backend)
    assert all(s.error() is None for s in states)
    first_prompt = FEW_SHOT + "Q: " + questions[0] + "\nA:"
    # item 0 warms its own prompt before anything is sent; every item then reuses it
    assert backend.log[0] == ("warm", first_prompt)
    assert backend.warmed == [first_prompt]
    assert sorted(p for kind, p in backend.log[1:] if kind == "gen") == sorted(
        FEW_SHOT + "Q: " + q + "\nA:" for q in questions
    )
    assert [s["answer"] for s in states] == ["ok"] * 12  # input order


def test_items_are_grouped_by_the_arguments_that_lead_their_prompts() -> None:
    docs = {name: f"{name} " + name * 600 for name in ("alpha", "beta", "gamma")}
    batch = [(docs[name], f"question {i}") for i in range(4) for name in docs]  # interleaved
    backend = LoggingBackend()
    states = about.run_batch(batch, backend=backend, max_concurrency=1)
    assert all(s.error() is None for s in states)
    sent = [p for kind, p in backend.log if kind == "gen"]
    leading = [next(n for n in docs if p.startswith("Document: " + n)) for p in sent]
    assert leading == ["alpha"] * 4 + ["beta"] * 4 + ["gamma"] * 4
    # one at a time, each group's first request computes its prefix: only item 0 warms
    assert len(backend.warmed) == 1
    assert [s.text().split("\n")[1] for s in states] == [f"Question: {q}" for _, q in batch]


def test_each_group_of_concurrent_items_warms_its_shared_prefix_once() -> None:
    docs = {name: f"{name} " + name * 600 for name in ("alpha", "beta", "gamma")}
    batch = [(docs[name], f"question {i}") for i in range(4) for name in docs]
    backend = LoggingBackend()
    backend._delay = 0.05  # the groups' first requests are still in flight when the rest come
    states = about.run_batch(batch, backend=backend, max_concurrency=12)
    assert all(s.error() is None for s in states)
    # item 0's whole prompt, then what each other group's items share
    assert backend.warmed[0] == "Document: " + docs["alpha"] + "\nQuestion: question 0\nAnswer:"
    assert sorted(backend.warmed[1:]) == [
        "Document: " + docs[name] + "\nQuestion: question " for name in ("beta", "gamma")
    ]


def test_prompts_sharing_no_long_prefix_are_not_warmed() -> None:
    backend = LoggingBackend()
    states = about.run_batch([("short doc", f"q{i}") for i in range(5)], backend=backend)
    assert all(s.error() is None for s in states) and backend.warmed == []


def test_a_first_item_that_fails_before_any_request_does_not_hold_the_batch() -> None:
    @lp.function
    def maybe(s, question):
        if question == "bad":
            raise ValueError("no")
        s += FEW_SHOT + question + lp.gen("a")

    backend = LoggingBackend()
    states = maybe.run_batch([("bad",), ("x",), ("y",)], backend=backend)
    assert "no" in str(states[0].error())
    assert [s["a"] for s in states[1:]] == ["ok", "ok"]


def test_a_first_item_slow_to_send_holds_the_others_only_briefly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scheduling, "FIRST_PROMPT_WAIT_S", 0.05)

    @lp.function
    async def slow_first(s, i):
        if i == 0:
            await asyncio.sleep(0.5)
        s += f"item {i}" + lp.gen("a")

    backend = LoggingBackend()
    states = slow_first.run_batch([(i,) for i in range(3)], backend=backend)
    assert all(s.error() is None for s in states)
    assert [p for _, p in backend.log][-1] == "item 0"  # the others did not wait for it


def test_prefix_order_groups_items_by_the_arguments_in_prompt_order() -> None:
    items = [
        {"q": "zzz1", "doc": "doc-b"},
        {"q": "aaa2", "doc": "doc-a"},
        {"q": "aaa3", "doc": "doc-b"},
        {"q": "aaa4", "doc": "doc-a"},
    ]
    assert prefix_order(items, "Read doc-b and answer zzz1") == [0, 2, 1, 3]  # by document
    assert prefix_order(items, "Answer zzz1 about doc-b") == [0, 1, 2, 3]  # questions differ
    assert prefix_order(items, "no argument shows") == [0, 1, 2, 3]
    nested = [("sys-1", "doc-x", "q1"), ("sys-1", "doc-y", "q2"), ("sys-1", "doc-x", "q3")]
    assert prefix_order(nested, "sys-1 doc-x q1") == [0, 2, 1]


def test_a_batch_whose_items_share_nothing_runs_in_input_order() -> None:
    @lp.function
    def label(s, text):
        s += "Text: " + text + "\nTopic:" + lp.gen("topic")

    texts = ["The match ended.", "Stocks fell today.", "A new vaccine.", "Rain soon."]
    backend = LoggingBackend()
    label.run_batch([(t,) for t in texts], backend=backend, max_concurrency=1)
    assert [p for _, p in backend.log] == [f"Text: {t}\nTopic:" for t in texts]


def test_prefix_index_finds_the_longest_recorded_prefix() -> None:
    index: PrefixIndex[str] = PrefixIndex(block=4, capacity=100)
    index.record(index.keys("abcdefgh"), "r1")
    index.record(index.keys("abcdXXXXyyyy"), "r2")
    assert index.longest(index.keys("abcdefghij")) == ("r1", 8)
    assert index.longest(index.keys("abcdXXXXzz")) == ("r2", 8)
    assert index.longest(index.keys("abcdQQQQ")) == ("r2", 4)  # the last recorded for "abcd"
    assert index.longest(index.keys("abcdQQQQ"), accept=lambda v: v != "r2") == (None, 0)
    assert index.longest(index.keys("abc")) == (None, 0)  # under one block
    small: PrefixIndex[str] = PrefixIndex(block=4, capacity=2)
    small.record(small.keys("abcdefghijkl"), "r")
    assert small.longest(small.keys("abcdefghijkl")) == ("r", 12)
    assert small.longest(small.keys("abcdXXXX")) == (None, 0)  # the oldest entry went
