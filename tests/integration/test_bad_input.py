"""Bad input, property-based: arbitrary text stays text, bad constraints fail fast and clearly,
and untrusted chat templates stay in their sandbox. Figures go to docs/reliability.md."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.reliability import record

import lmprog as lp
from lmprog.gbnf import regex_to_gbnf
from lmprog.testing import ScriptedBackend

TEMPLATE_SYNTAX = ["{{ 7 * 7 }}", "{% for x in range(3) %}x{% endfor %}", "{# c #}", "{{", "%}"]
texts = st.one_of(st.text(max_size=200), st.sampled_from(TEMPLATE_SYNTAX))
stops = st.text(min_size=1, max_size=8).filter(lambda s: s.strip() == s and s != "")


@lp.function
def turn(s, text):
    s += lp.user(text) + lp.assistant(lp.gen("a", max_tokens=16, temperature=0))


def test_arbitrary_text_stays_text_on_the_scripted_backend() -> None:
    tried = 0

    @settings(max_examples=300, deadline=None)
    @given(texts)
    def check(text: str) -> None:
        nonlocal tried
        tried += 1
        backend = ScriptedBackend(lambda r: "ok")
        state = turn.run(text, backend=backend)
        assert state.error() is None
        assert state.messages()[0]["content"] == text  # never rendered as a template
        assert f"<|im_start|>user\n{text}<|im_end|>" in backend.requests[0].prompt

    check()
    TRIED["scripted"] = tried


TRIED: dict[str, int] = {}


@pytest.mark.engine
def test_arbitrary_prompts_and_stops_on_llama_server(tiny: lp.LlamaCpp) -> None:
    tried, failed = 0, 0

    @lp.function
    def with_stop(s, text, stop):
        s += text + lp.gen("a", max_tokens=24, stop=stop, temperature=0)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(texts, stops)
    def check(text: str, stop: str) -> None:
        nonlocal tried, failed
        tried += 1
        state = with_stop.run(text or "x", stop, backend=tiny)
        if state.error() is not None:  # allowed only as the server's clear refusal
            failed += 1
            assert isinstance(state.error().cause, lp.BackendResponseError), state.error()
            return
        assert stop not in state["a"]
        assert state.text() == (text or "x") + state["a"]

    check()
    record(
        "bad input: prompts, stops and template syntax (hypothesis)",
        f"{TRIED.get('scripted', 0)} arbitrary texts (any Unicode, control characters, "
        f"`{{{{ }}}}`/`{{% %}}` syntax) in user turns: each reached the request as literal "
        f"text; {tried} arbitrary prompt + stop-string pairs against llama-server: "
        f"{tried - failed} answered with the stop string cut, {failed} refused clearly",
    )


regex_like = st.text(alphabet="ab()[]*+?|{}^$\\.,-019dws", max_size=16)
schema_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(
        ["object", "string", "integer", "array", "nope"])),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(
            ["type", "properties", "items", "required", "enum", "minimum", "$ref"]), inner,
            max_size=3),
    ),
    max_leaves=8,
)  # fmt: skip


@pytest.mark.filterwarnings("ignore::FutureWarning")  # Python warns about odd generated sets
def test_invalid_and_pathological_constraints_fail_fast() -> None:
    counts = {"regex ok": 0, "regex refused": 0, "schema ok": 0, "schema refused": 0}
    slowest = 0.0

    @settings(max_examples=400, deadline=None)
    @given(regex_like)
    def regexes(pattern: str) -> None:
        nonlocal slowest
        started = time.perf_counter()
        try:
            lp.gen("v", regex=pattern)
            regex_to_gbnf(pattern)
            counts["regex ok"] += 1
        except lp.ConstraintError as exc:
            assert pattern in str(exc) or "regex" in str(exc)
            counts["regex refused"] += 1
        slowest = max(slowest, time.perf_counter() - started)

    @settings(max_examples=300, deadline=None)
    @given(schema_like)
    def schemas(schema: object) -> None:
        nonlocal slowest
        started = time.perf_counter()
        try:
            lp.gen("v", json_schema=schema)  # type: ignore[arg-type]
            counts["schema ok"] += 1
        except lp.ConstraintError:
            counts["schema refused"] += 1
        slowest = max(slowest, time.perf_counter() - started)

    regexes()
    schemas()
    assert slowest < 1.0
    # Output checked against a catastrophically backtracking pattern: bounded, never a hang.
    started = time.perf_counter()
    with pytest.raises(lp.ConstraintError):
        lp.gen("v", regex=r"(x+x+)+y").constraint.parse("x" * 50_000)  # type: ignore[attr-defined]
    pathological = time.perf_counter() - started
    assert pathological < 2.0
    record(
        "bad input: regexes and schemas (hypothesis)",
        f"{counts['regex ok'] + counts['regex refused']} generated regexes "
        f"({counts['regex refused']} refused with ConstraintError before any request) and "
        f"{counts['schema ok'] + counts['schema refused']} generated schemas "
        f"({counts['schema refused']} refused); slowest check {slowest * 1000:.0f} ms; "
        f"validating 50,000 chars against `(x+x+)+y` gave up cleanly in {pathological:.2f} s",
    )


@pytest.mark.engine
def test_huge_max_tokens_empty_choices_and_duplicate_names(tiny: lp.LlamaCpp) -> None:
    @lp.function
    def huge(s):
        s += "x" + lp.gen("a", max_tokens=10**9, temperature=0, ignore_eos=True)

    started = time.perf_counter()
    state = huge.run(backend=tiny)
    elapsed = time.perf_counter() - started
    assert state.error() is None
    assert state.get_meta_info("a")["finish_reason"] == "length"  # the slot's context ended it

    with pytest.raises(lp.ConstraintError, match="empty"):
        lp.select("c", [])
    with pytest.raises(lp.ConstraintError, match="empty"):
        lp.gen("c", choices=[])

    @lp.function
    def twice(s):
        s += "a" + lp.gen("v", max_tokens=2, temperature=0)
        s += "b" + lp.gen("v", max_tokens=3, temperature=0)

    state = twice.run(backend=tiny)
    assert state.get_meta_info("v")["completion_tokens"] <= 3
    assert state.text().endswith("b" + state["v"])  # the later gen of a name wins
    record(
        "bad input: huge max_tokens, empty choices, duplicate names",
        f"max_tokens=10**9 on llama-server ended at the slot's context (finish_reason "
        f"`length`) in {elapsed:.1f} s; empty choices refused with ConstraintError; a name "
        f"generated twice holds the later value",
    )


def test_untrusted_chat_templates_stay_in_the_sandbox() -> None:
    attacks = {
        "python internals": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "globals": "{{ raise_exception.__globals__ }}",
        "filesystem": "{% include '/etc/passwd' %}",
        "import": "{% import 'os' as os %}{{ os.system('true') }}",
        "huge loop": "{% for i in range(10**9) %}{% endfor %}",
    }
    refused, neutralised = [], []
    for name, source in attacks.items():
        try:
            rendered = lp.ChatTemplate(source).render([{"role": "user", "content": "x"}])
        except lp.TemplateError:
            refused.append(name)
        else:  # the sandbox hides the attribute: nothing of the interpreter leaks out
            assert rendered == "", (name, rendered)
            neutralised.append(name)
    assert len(refused) >= 4

    @lp.function
    def chat(s):
        s += lp.user("hi") + lp.assistant(lp.gen("a"))

    backend = ScriptedBackend(chat_template="chatml")
    backend._template = lp.ChatTemplate(attacks["python internals"])
    error = chat.run(backend=backend).error()
    assert isinstance(error.cause, lp.TemplateError)
    assert backend.requests == []
    record(
        "untrusted chat templates",
        f"{len(attacks)} hostile templates: {', '.join(refused)} stopped with TemplateError "
        f"by jinja2's sandbox; {', '.join(neutralised) or 'none'} rendered as empty text "
        f"(the attribute is hidden); a program on a backend with such a template failed "
        f"before any request",
    )
