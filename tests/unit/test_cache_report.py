"""state.cache_report() arithmetic and the prefix-order lint, on the scripted test double."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import lmprog as lp
from lmprog.backends.base import GenerateRequest, Generation, TextCallback
from lmprog.cache_report import CacheRow
from lmprog.testing import ScriptedBackend

RULES = "Rules: answer in one short sentence, in plain words, and cite no sources at all. " * 6


class PrefixCachingBackend(ScriptedBackend):
    """The test double plus a pretend prefix cache: a prompt's cached tokens are the words it
    shares, from the start, with the longest earlier prompt. Every count it reports is logged
    in `.counted`, the engine's own counters the report must add up to."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.seen: list[list[str]] = []
        self.counted: list[tuple[int, int]] = []

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        generation = await super().generate(request, on_text)
        words = request.prompt.split()
        cached = max((_shared_words(words, earlier) for earlier in self.seen), default=0)
        self.seen.append(words)
        generation.cached_tokens = cached
        assert generation.prompt_tokens == len(words)
        self.counted.append((len(words), cached))
        return generation


def _shared_words(a: list[str], b: list[str]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# ----- the report -------------------------------------------------------------------------


@lp.function
def tour(s):
    s += RULES + "Q: first?\nA:" + lp.gen("first", stop="\n")
    s += "\nQ: second?\nA:" + lp.gen("second", n=2)
    forks = s.fork(2)
    forks += lambda i: f"\nBranch {i}:" + lp.gen("branch")
    forks.join()
    s += "\nVerdict:" + lp.select("verdict", [" yes", " no"])


def test_report_adds_up_the_engines_counters_forks_and_n_included() -> None:
    backend = PrefixCachingBackend()
    state = tour.run(backend=backend)
    assert state.error() is None
    report = state.cache_report()
    prompt = sum(p for p, _ in backend.counted)
    cached = sum(c for _, c in backend.counted)
    assert report.requests == len(backend.counted) == 1 + 2 + 2  # first, second (n=2), branches
    assert (report.prompt_tokens, report.cached_tokens) == (prompt, cached)
    assert report.computed_tokens == prompt - cached
    assert report.hit_rate == pytest.approx(cached / prompt)
    assert cached > 0  # the second gen and the branches extend earlier prompts
    assert report.uncounted_selects == 1
    rows = {(row.primitive, row.name): row for row in report.rows}
    assert list(rows) == [
        ("gen", "first"),
        ("gen", "second"),
        ("select", "verdict"),
        ("gen", "branch"),  # a fork's requests come after its parent's
    ]
    assert rows["gen", "second"].requests == 2
    assert rows["gen", "branch"].requests == 2
    assert rows["gen", "first"].cached_tokens == 0  # nothing was sent before it
    assert rows["select", "verdict"].prompt_tokens is None
    # Each row's counts are what get_meta_info reported for that gen.
    first = state.get_meta_info("first")
    assert (rows["gen", "first"].prompt_tokens, rows["gen", "first"].cached_tokens) == (
        first["prompt_tokens"],
        first["cached_tokens"],
    )
    text = report.table()
    assert text.splitlines()[0] == str(report)
    assert f"{cached:,} cached" in str(report) and "1 select not counted" in str(report)
    assert "  select('verdict'): 1 select, not counted" in text


def test_a_count_the_engine_does_not_report_is_unknown_never_zero() -> None:
    state = tour.run(backend=ScriptedBackend())  # reports prompt tokens, not cached ones
    report = state.cache_report()
    assert report.prompt_tokens is not None and report.prompt_tokens > 0
    assert report.cached_tokens is None
    assert report.computed_tokens is None
    assert report.hit_rate is None
    assert "cached tokens unknown" in str(report)


def test_one_unknown_request_makes_the_total_unknown() -> None:
    known = lp.CacheReport((CacheRow("gen", "a", 1, 10, 4),))
    unknown = lp.CacheReport((CacheRow("gen", "a", 1, 10, None),))
    merged = lp.CacheReport.merge([known, unknown])
    assert merged.requests == 2 and merged.prompt_tokens == 20
    assert merged.cached_tokens is None and merged.hit_rate is None


@lp.function
def few_shot(s, question):
    s += RULES + f"Q: {question}\nA:" + lp.gen("answer", stop="\n")


def test_batch_summary_merges_every_program() -> None:
    backend = PrefixCachingBackend()
    states = few_shot.run_batch([{"question": f"q{i}?"} for i in range(5)], backend=backend)
    summary = lp.cache_report(states)
    assert summary == lp.CacheReport.merge(s.cache_report() for s in states)
    assert summary.requests == 5
    assert summary.prompt_tokens == sum(p for p, _ in backend.counted)
    assert summary.cached_tokens == sum(c for _, c in backend.counted)
    assert [(row.primitive, row.name, row.requests) for row in summary.rows] == [
        ("gen", "answer", 5)
    ]
    assert summary.hit_rate is not None and summary.hit_rate > 0.5  # all but the first hit


def test_an_empty_report() -> None:
    report = lp.cache_report([])
    assert (report.requests, report.prompt_tokens, report.cached_tokens) == (0, 0, 0)
    assert report.hit_rate is None
    assert str(report) == "prefix cache: 0 requests, 0 prompt tokens, 0 cached, 0 computed"


# ----- the lint ---------------------------------------------------------------------------


def line_of(marker: str) -> int:
    """The line of this file that carries `marker` (a comment on a program line)."""
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.rstrip().endswith(marker))


@contextmanager
def prefix_warnings() -> Iterator[list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found: list[warnings.WarningMessage] = []
        yield found
    found.extend(w for w in caught if issubclass(w.category, lp.PrefixOrderWarning))


@lp.function
def question_first(s, question):
    s += f"Question: {question}\n"  # lint: varies first
    s += RULES
    s += "Answer:" + lp.gen("answer", stop="\n")


@lp.function
def rules_first(s, question):
    s += RULES
    s += f"Question: {question}\n"
    s += "Answer:" + lp.gen("answer", stop="\n")


def test_badly_ordered_batch_warns_once_naming_primitive_and_line() -> None:
    backend = PrefixCachingBackend()
    items = [{"question": f"what is {i}?"} for i in range(6)]
    with prefix_warnings() as found:
        first = question_first.run_batch(items, backend=backend)
        question_first.run_batch(items, backend=backend)
        question_first.run(question="again?", backend=backend)
    assert len(found) == 1
    warning = found[0]
    assert (warning.filename, warning.lineno) == (__file__, line_of("# lint: varies first"))
    message = str(warning.message)
    assert "program 'question_first'" in message and "gen('answer')" in message
    assert f"test_cache_report.py:{line_of('# lint: varies first')}" in message
    assert issubclass(lp.PrefixOrderWarning, UserWarning)
    # The report shows what the warning predicts: almost nothing served from the cache.
    report = lp.cache_report(first)
    assert report.hit_rate is not None and report.hit_rate < 0.1


def test_well_ordered_batch_never_warns() -> None:
    backend = PrefixCachingBackend()
    with prefix_warnings() as found:
        states = rules_first.run_batch(
            [{"question": f"what is {i}?"} for i in range(10)], backend=backend
        )
    assert found == []
    report = lp.cache_report(states)
    assert report.hit_rate is not None and report.hit_rate > 0.8


def test_long_varying_inputs_with_a_short_shared_frame_do_not_warn() -> None:
    @lp.function
    def summarize(s, document):
        s += "Summarize:\n" + document + "\nSummary:" + lp.gen("summary")

    documents = [f"Document {i}. " + f"word{i} " * 200 for i in range(4)]
    with prefix_warnings() as found:
        summarize.run_batch([{"document": d} for d in documents], backend=ScriptedBackend())
    assert found == []


def test_a_select_first_is_named() -> None:
    @lp.function
    def classify(s, text):
        with s.user():
            s += f"Text: {text}\n"  # lint: select text
            s += RULES
        s += lp.assistant(lp.select("label", ["yes", "no"]))

    with prefix_warnings() as found:
        classify.run_batch([{"text": f"t{i}"} for i in range(3)], backend=ScriptedBackend())
    assert len(found) == 1
    assert "select('label')" in str(found[0].message)
    assert found[0].lineno == line_of("# lint: select text")


def test_varying_text_before_a_fork_is_traced_to_its_line() -> None:
    @lp.function
    def branches(s, topic):
        s += f"Topic: {topic}.\n"  # lint: before fork
        s += RULES
        forks = s.fork(2)
        forks += lambda i: f"Idea {i}:" + lp.gen("idea", stop="\n")
        forks.join()

    with prefix_warnings() as found:
        branches.run_batch(
            [{"topic": t} for t in ("tea", "rain", "maps")], backend=ScriptedBackend()
        )
    assert len(found) == 1
    assert found[0].lineno == line_of("# lint: before fork")
    assert "gen('idea')" in str(found[0].message)


@lp.function
def stamped_chat(s, now, history, message):
    s += lp.system(f"Time: {now}. " + RULES)  # lint: timestamp
    for user, assistant in history:
        s += lp.user(user) + lp.assistant(assistant)
    s += lp.user(message) + lp.assistant(lp.gen("reply", stop="\n"))


@lp.function
def steady_chat(s, history, message):
    s += lp.system(RULES)
    for user, assistant in history:
        s += lp.user(user) + lp.assistant(assistant)
    s += lp.user(message) + lp.assistant(lp.gen("reply", stop="\n"))


def chat_turns(program: lp.Program, stamped: bool = False) -> None:
    """Three turns of a chat, each a call of `program` with the history so far."""
    backend = ScriptedBackend(lambda r: "fine")
    history: list[tuple[str, str]] = []
    for turn, message in enumerate(["hi", "how are you?", "bye"]):
        stamp = {"now": f"12:00:{turn:02d}"} if stamped else {}
        state = program.run(history=list(history), message=message, backend=backend, **stamp)
        history.append((message, state["reply"]))


def test_a_timestamp_before_the_system_prompt_warns_across_calls() -> None:
    with prefix_warnings() as found:
        chat_turns(stamped_chat, stamped=True)
    assert len(found) == 1
    assert found[0].lineno == line_of("# lint: timestamp")
    assert "gen('reply')" in str(found[0].message)


def test_a_chat_that_extends_its_history_does_not_warn() -> None:
    with prefix_warnings() as found:
        chat_turns(steady_chat)
    assert found == []


def test_the_warning_can_be_filtered_by_category() -> None:
    @lp.function
    def late_rules(s, question):
        s += f"Q: {question}\n" + RULES + lp.gen("answer")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=lp.PrefixOrderWarning)
        late_rules.run_batch([{"question": str(i)} for i in range(3)], backend=ScriptedBackend())
    assert not [w for w in caught if issubclass(w.category, lp.PrefixOrderWarning)]


def test_a_select_decoded_by_the_engine_is_counted_like_a_gen() -> None:
    @lp.function
    def decided(s):
        s += "Verdict:" + lp.select(
            "verdict", [" yes", " no"], choices_method=lp.constrained_decoding
        )

    backend = PrefixCachingBackend(respond=lambda request: " no")
    state = decided.run(backend=backend)
    assert state.error() is None and state["verdict"] == " no"
    report = state.cache_report()
    assert report.uncounted_selects == 0 and report.requests == len(backend.counted) == 1
    ((prompt, cached),) = backend.counted
    assert (report.prompt_tokens, report.cached_tokens) == (prompt, cached)
    assert "not counted" not in report.table()
