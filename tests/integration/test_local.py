"""lp.Local on the default model (Gemma 3 270M, in this process): behaviour, the radix cache,
batched decoding, constraints on a 262k-token vocabulary, and agreement with transformers.

The program suite (test_program_suite.py) also runs on lp.Local with the tiny model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pydantic
import pytest
import tokenizers
import torch
from support.reference import transformers_greedy
from transformers import AutoModelForCausalLM

import lmprog as lp
from lmprog.backends.local import engine
from lmprog.backends.local.head import OutputHead
from lmprog.backends.local.weights import resolve_model

pytestmark = pytest.mark.gemma

FEW_SHOT = (
    "Q: What is the capital of Germany?\nA: Berlin\nQ: What is the capital of Italy?\nA: Rome\n"
)


@lp.function(temperature=0)
def capital(s, country):
    s += FEW_SHOT + f"Q: What is the capital of {country}?\nA:"
    s += lp.gen("answer", max_tokens=8, stop="\n")


def test_few_shot_answers(gemma_local: lp.Local) -> None:
    states = capital.run_batch([("France",), ("Spain",), ("Japan",)], backend=gemma_local)
    assert [s["answer"].strip() for s in states] == ["Paris", "Madrid", "Tokyo"]


def test_greedy_output_equals_transformers_generate(gemma_local: lp.Local) -> None:
    @lp.function
    def story(s):
        s += "Once upon a time, in a small village by the sea,"
        s += lp.gen("text", max_tokens=24, temperature=0)

    reference = transformers_greedy(resolve_model(None).path)
    prompt = "Once upon a time, in a small village by the sea,"
    assert story.run(backend=gemma_local)["text"] == reference(prompt, 24)


def test_second_turn_reuses_the_first_from_the_radix_cache(gemma_local: lp.Local) -> None:
    @lp.function(temperature=0)
    def two_turns(s):
        s += FEW_SHOT + "Q: What is the capital of Austria?\nA:" + lp.gen("a", max_tokens=6)
        s += "\nQ: What is the capital of Greece?\nA:" + lp.gen("b", max_tokens=6)

    state = two_turns.run(backend=gemma_local)
    second = state.get_meta_info("b")
    assert second["cached_tokens"] > 40
    assert second["prompt_tokens"] - second["cached_tokens"] < 20


def test_batch_items_share_their_prefix(gemma_local: lp.Local) -> None:
    lp.flush_cache(gemma_local)
    before = gemma_local.stats()
    countries = ["Norway", "Sweden", "Poland", "Egypt", "Peru", "Chile"]
    states = capital.run_batch([(c,) for c in countries], backend=gemma_local)
    assert all(s.error() is None for s in states)
    after = gemma_local.stats()
    hit = after["hit_tokens"] - before["hit_tokens"]
    computed = after["computed_tokens"] - before["computed_tokens"]
    # Only the first item computes the ~36-token few-shot prefix; the others reuse it.
    prompt_tokens = sum(s.get_meta_info("answer")["prompt_tokens"] for s in states)
    assert hit + computed == prompt_tokens
    assert hit >= 5 * 30


def test_fork_branches_decode_together(gemma_local: lp.Local) -> None:
    @lp.function
    def branches(s):
        s += "Four different fruits, one per line.\n"
        forks = s.fork(4)
        forks += lambda i: f"{i + 1}." + lp.gen("fruit", max_tokens=12, ignore_eos=True, seed=i)
        forks.join()

    state = branches.run(backend=gemma_local, temperature=0.8)
    assert state.error() is None and len(state["fruit"]) == 4
    assert gemma_local.stats()["peak_batch_size"] >= 4


@pytest.mark.parametrize(
    "method",
    [lp.token_length_normalized, lp.greedy_token_selection, lp.unconditional_likelihood_normalized],
)
def test_select_picks_the_sentiment(gemma_local: lp.Local, method: lp.ChoicesMethod) -> None:
    @lp.function(temperature=0)
    def review(s, text):
        s += (
            "Review: I loved it, wonderful!\nSentiment: positive\n"
            "Review: Terrible, a waste of money.\nSentiment: negative\n"
            f"Review: {text}\nSentiment:"
        )
        s += lp.select("sentiment", [" positive", " negative"], choices_method=method)

    good = review.run("Great food and a lovely, friendly staff.", backend=gemma_local)
    bad = review.run("Awful. Cold food, never again.", backend=gemma_local)
    assert (good["sentiment"], bad["sentiment"]) == (" positive", " negative")
    assert good.get_meta_info("sentiment")["choices_method"] == method.name


class Country(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=20)
    capital: str = pydantic.Field(max_length=20)


def test_typed_outputs_on_the_full_vocabulary(gemma_local: lp.Local) -> None:
    @lp.function(temperature=0)
    def extract(s, sentence):
        s += f"Sentence: {sentence}\nAs JSON with name and capital: "
        s += lp.gen("country", type=Country, max_tokens=40)
        s += "\nYear founded: " + lp.gen("year", regex="1[0-9]{3}", max_tokens=6)
        s += "\nIs it in Europe? " + lp.gen("europe", choices=["yes", "no"])
        s += "\nPopulation: " + lp.gen("people", type=int, max_tokens=8)

    state = extract.run("Portugal is a country whose capital is Lisbon.", backend=gemma_local)
    assert state.error() is None, state.error()
    assert isinstance(state["country"], Country) and state["country"].name == "Portugal"
    assert re.fullmatch("1[0-9]{3}", state["year"])
    assert state["europe"] in ("yes", "no") and isinstance(state["people"], int)


def test_sampled_json_always_validates(gemma_local: lp.Local) -> None:
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
            "score": {"type": "integer", "minimum": 0, "maximum": 100},  # via llguidance
        },
        "required": ["tags", "score"],
        "additionalProperties": False,
    }

    @lp.function
    def tagged(s, seed):
        s += "Tags as JSON: " + lp.gen(
            "v", json_schema=schema, max_tokens=40, temperature=1.0, seed=seed
        )

    for state in tagged.run_batch([(i,) for i in range(6)], backend=gemma_local):
        assert state.error() is None, state.error()
        assert set(state["v"]) == {"tags", "score"} and 0 <= state["v"]["score"] <= 100
        assert set(state["v"]["tags"]) <= {"a", "b", "c"}


class _Country(pydantic.BaseModel):
    name: str
    population: int


def test_an_unbounded_integer_field_ends_within_sixteen_digits(gemma_local: lp.Local) -> None:
    """Issue 16: Gemma wrote `"population": 1000000000...` until max_tokens under an unbounded
    integer schema (the JSON never closed). lmprog bounds numbers that have no bound of their
    own (constraints.NUMBER_LIMIT), so the object closes."""
    from lmprog.constraints import NUMBER_LIMIT

    @lp.function
    def country(s):
        s += "Facts about France as JSON:\n" + lp.gen("c", type=_Country, max_tokens=60)

    state = country.run(backend=gemma_local, temperature=0)
    assert state.error() is None, state.error()
    assert abs(state["c"].population) <= NUMBER_LIMIT


def test_packed_weights_decode_as_float32_does() -> None:
    """The default form on an x86 CPU (float16 layers, int8 head rescored exactly) gives the
    greedy tokens of the float32 model."""
    prompts = [
        "Once upon a time, in a small village by the sea,",
        "The three most important inventions of the last century are",
        "def fibonacci(n):",
    ]

    @lp.function(temperature=0)
    def cont(s, prompt):
        s += prompt + lp.gen("text", max_tokens=32, ignore_eos=True)

    texts = {}
    for form in ("packed", "float32"):
        backend = lp.Local(weights=form)
        try:
            texts[form] = [
                s["text"] for s in cont.run_batch([(p,) for p in prompts], backend=backend)
            ]
        finally:
            backend.shutdown()
    assert texts["packed"] == texts["float32"]


def test_the_int8_head_picks_the_float32_heads_best_token() -> None:
    """Packed greedy equals float32's when the float32 best token is among the int8 scan's
    RESCORED candidates (they are rescored exactly). Checked at every position of ~1,000 tokens
    of mixed prose and code (this file): the best is never outside them."""
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model(None).path, dtype=torch.float32, local_files_only=True
    ).eval()
    tokenizer = tokenizers.Tokenizer.from_file(str(resolve_model(None).path / "tokenizer.json"))
    ids = tokenizer.encode(Path(__file__).read_text()[:4000]).ids
    packed, exact = OutputHead(model, packed=True), OutputHead(model, packed=False)
    with torch.inference_mode():
        hidden = model.model(torch.tensor([ids])).last_hidden_state[0]
        for rows in hidden.split(64):
            assert torch.equal(packed.logits(rows).argmax(-1), exact.logits(rows).argmax(-1))
    assert len(ids) > 800


def test_a_narrow_mask_computes_only_its_rows(
    gemma_local: lp.Local, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Digits under a regex: each step multiplies the hidden state by the allowed rows of the
    output head, not all 262k, and picks what the full head would have picked."""

    @lp.function(temperature=0)
    def year(s):
        s += "The first Moon landing was in the year " + lp.gen("y", regex="[0-9]{4}")

    head = gemma_local._load().engine.head
    full_heads = []
    full = head.logits

    def counted(hidden: Any) -> Any:
        full_heads.append(len(hidden))
        return full(hidden)

    monkeypatch.setattr(head, "logits", counted)
    projected = year.run(backend=gemma_local)["y"]
    assert full_heads == [] and re.fullmatch("[0-9]{4}", projected)
    monkeypatch.setattr(engine, "PROJECT_BELOW", 1 << 40)  # every mask counts as wide
    assert year.run(backend=gemma_local)["y"] == projected
    assert len(full_heads) == 4


def test_sglang_parallel_decoding_finishes() -> None:
    """SGLang's test_programs.test_parallel_decoding (skeleton, 5 forks of 64 tokens, a
    512-token summary) never finished within 600 s on lp.Local: each step copied the whole KV
    cache (DynamicCache's torch.cat), so the summary's steps grew with its context. It takes
    ~90 s on 2 loaded cores now; the bound leaves 5x for a busy machine."""
    import time

    @lp.function
    def parallel_decoding(s, topic):
        s += "Act as a helpful assistant.\n"
        s += "USER: Give some tips for " + topic + ".\n"
        s += "ASSISTANT: Okay. Here are 5 concise tips, each under 8 words:\n"
        for i in range(1, 6):
            s += f"{i}." + lp.gen(max_tokens=16, stop=[".", "\n"]) + ".\n"
        forks = s.fork(5)
        for i in range(5):
            forks[i] += f"Now, I expand tip {i + 1} into a detailed paragraph:\nTip {i + 1}:"
            forks[i] += lp.gen("detailed_tip", 64, stop=["\n\n"])
        forks.join()
        s += "Here are these tips with detailed explanation:\n"
        for i in range(5):
            s += f"Tip {i + 1}:" + forks[i]["detailed_tip"] + "\n"
        s += "\nIn summary," + lp.gen("summary", max_tokens=512)

    backend = lp.Local()
    try:
        start = time.monotonic()
        state = parallel_decoding.run(
            topic="writing a good blog post", temperature=0.3, backend=backend
        )
        elapsed = time.monotonic() - start
    finally:
        backend.shutdown()
    assert state.error() is None, state.error()
    assert isinstance(state["summary"], str)
    assert elapsed < 450, f"{elapsed:.0f} s"
