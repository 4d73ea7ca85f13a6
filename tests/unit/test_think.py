"""gen(think=...): a free reasoning span first, then the constrained answer; the reasoning is
kept in the meta info and never parsed as the answer."""

from __future__ import annotations

import pytest

import lmprog as lp
from lmprog.testing import ScriptedBackend

THINK_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{% if m.role == 'assistant' %}<think></think>"
    "{% endif %}{{ m.content }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def reasoning_then_answer(request: lp.GenerateRequest) -> str:
    """Reasons while the prompt ends with the opening delimiter; answers after it."""
    if request.constraint is None:
        return " 6 times 7 is 42, so 42.\nAnswer: 41"  # the stop string cuts the tail
    return "42"


def test_reasoning_comes_first_and_is_kept_out_of_the_answer() -> None:
    @lp.function
    def solve(s):
        s += "What is 6 times 7?" + lp.gen("n", type=int, think=True, max_tokens=4)

    backend = ScriptedBackend(reasoning_then_answer)
    state = solve.run(backend=backend)
    assert state.error() is None, state.error()
    assert state["n"] == 42
    assert state.get_meta_info("n")["reasoning"] == " 6 times 7 is 42, so 42."
    assert state.text() == "What is 6 times 7? Reasoning: 6 times 7 is 42, so 42.\nAnswer:42"
    first, second = backend.requests
    assert first.constraint is None and first.sampling.max_new_tokens == 256
    assert second.constraint is not None and second.prompt.endswith("\nAnswer:")


def test_the_budget_bounds_the_reasoning_and_the_answer_still_comes() -> None:
    @lp.function
    def solve(s):
        s += "Q?" + lp.gen("a", regex="[ab]", think_budget=7, think_delimiters=("<r>", "</r>"))

    backend = ScriptedBackend(lambda r: "a" if r.constraint else "long reasoning cut short")
    state = solve.run(backend=backend)
    assert state["a"] == "a"
    assert backend.requests[0].sampling.max_new_tokens == 7
    assert backend.requests[0].sampling.stop == ("</r>",)
    assert state.text() == "Q?<r>long reasoning cut short</r>a"


def test_a_template_with_think_tags_gives_the_model_its_own_delimiters() -> None:
    @lp.function
    def solve(s):
        s += lp.user("Pick one.")
        s += lp.assistant(lp.gen("c", choices=["x", "y"], think=True))

    backend = ScriptedBackend(lambda r: "hmm", chat_template=THINK_TEMPLATE)
    state = solve.run(backend=backend)
    assert state.error() is None, state.error()
    assert "<think>\nhmm\n</think>\n\n" in state.text()
    assert state.get_meta_info("c")["reasoning"] == "hmm"
    assert state["c"] in ("x", "y")


def test_a_budget_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="think_budget"):
        lp.gen("v", think_budget=0)
