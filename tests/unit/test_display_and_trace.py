"""A state's notebook HTML, and the spans every run records (lp.trace_to, state.trace())."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lmprog as lp
from lmprog.testing import ScriptedBackend


@lp.function
def qa(s, question):
    s += lp.system("Answer briefly.")
    s += lp.user(question)
    s += lp.assistant(lp.gen("answer", max_tokens=8, regex=r"[a-z<>&/ ]+"))
    s += lp.user("Sure?")
    s += lp.assistant(lp.select("sure", ["yes", "no"]))


@lp.function
def fails(s):
    s += "x" + lp.gen("a")
    raise RuntimeError("boom <b>")


def test_a_state_shows_roles_literal_and_generated_text_apart_and_escaped() -> None:
    state = qa.run("Why <b>?", backend=ScriptedBackend(lambda r: "<script>x</script>"))
    html = state._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "Why &lt;b&gt;?" in html  # the user's literal text, escaped
    assert "im_start" in html  # role markers of the chat template, shown apart
    assert ">answer</span>" in html and ">sure</span>" in html  # generated values, named
    assert "regex" in html and "enforced by server" in html  # the constraint and its path
    assert "prefix cache:" in html and "done" in html
    assert len(repr(state)) < 150  # plain repr stays short


def test_a_failed_state_shows_its_error() -> None:
    html = fails.run(backend=ScriptedBackend())._repr_html_()
    assert "failed" in html and "boom &lt;b&gt;" in html


def test_a_batch_shows_a_summary_row_per_program_and_its_cache_report() -> None:
    states = qa.run_batch([("a",), ("b",), ("c",)], backend=ScriptedBackend(lambda r: "ok"))
    assert isinstance(states, list) and len(states) == 3
    html = states._repr_html_()  # type: ignore[attr-defined]
    assert "3 programs: 3 done, 0 failed" in html and html.count("<tr>") == 4
    assert states.cache_report().requests == 3  # type: ignore[attr-defined]
    assert states.errors() == []  # type: ignore[attr-defined]


def test_spans_link_program_primitives_and_requests() -> None:
    state = qa.run("Why?", backend=ScriptedBackend(lambda r: "because"))
    spans = state.trace()
    program = spans[0]
    assert program.kind == "program" and program.name == "qa" and program.parent_id is None
    primitives = [s for s in spans if s.kind == "primitive"]
    assert [s.name for s in primitives] == ["gen('answer')", "select('sure')"]
    assert all(s.parent_id == program.span_id for s in primitives)
    requests = [s for s in spans if s.kind == "request"]
    assert [s.parent_id for s in requests] == [p.span_id for p in primitives]
    gen_request = requests[0]
    assert gen_request.attributes["completion_tokens"] == 1
    assert gen_request.attributes["max_tokens"] == 8
    assert all(s.end is not None and s.end >= s.start for s in spans)
    assert primitives[0].attributes["constraint_path"] == "enforced by server"


def test_forks_share_the_program_trace() -> None:
    @lp.function
    def branches(s):
        s += "Ideas:"
        forks = s.fork(3)
        forks += lp.gen("idea", max_tokens=4)
        forks.join()

    spans = branches.run(backend=ScriptedBackend()).trace()
    assert len({s.trace_id for s in spans}) == 1
    assert sum(s.kind == "request" for s in spans) == 3


def test_trace_to_writes_every_finished_program_as_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    sink = lp.trace_to(path)
    try:
        qa.run_batch([("a",), ("b",)], backend=ScriptedBackend(lambda r: "ok"))
        fails.run(backend=ScriptedBackend())
    finally:
        lp.stop_tracing(sink)
    qa.run("after", backend=ScriptedBackend())  # not traced any more
    records = [json.loads(line) for line in path.read_text().splitlines()]
    programs = [r for r in records if r["kind"] == "program"]
    assert [p["name"] for p in programs] == ["qa", "qa", "fails"]
    assert "boom" in programs[2]["error"]
    assert all("text" not in r for r in records)  # generated text only when asked


def test_exported_spans_keep_lmprogs_ids_so_a_traced_engine_joins_them() -> None:
    """A request's `traceparent` names its span; exported through OpenTelemetry, that span has
    the same ids, so spans an engine or router records under that parent join the program's."""
    sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk not installed")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from lmprog.backends.base import current_routing

    carried: list[str] = []

    def respond(request: lp.GenerateRequest) -> str:
        routing = current_routing()
        assert routing is not None
        carried.append(routing.traceparent)
        return "because"

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sink = lp.trace_to(lp.OpenTelemetryTraces(provider))
    try:
        state = qa.run("Why?", backend=ScriptedBackend(respond))
    finally:
        lp.stop_tracing(sink)
    ours = {(span.trace_id, span.span_id) for span in state.trace()}
    exported = {
        (f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}")
        for s in exporter.get_finished_spans()
    }
    assert exported == ours
    requests = {  # the gen's and the select's
        f"00-{s.context.trace_id:032x}-{s.context.span_id:016x}-01"
        for s in exporter.get_finished_spans()
        if s.name.startswith("text_completion")
    }
    assert carried and set(carried) <= requests
    # spans lmprog does not re-emit keep the SDK's own random ids
    other = provider.get_tracer("lmprog").start_span("user's own")
    assert f"{other.get_span_context().span_id:016x}" not in {i for _, i in ours}
    other.end()


def test_a_trace_never_holds_credentials() -> None:
    backend = lp.OpenAI(
        "m", base_url="http://user:s3cret-pw@127.0.0.1:9/v1?token=s3cret-q", api_key="sk-s3cret"
    )
    state = qa.run("hi", backend=backend)
    assert state.error() is not None  # nothing listens there
    dumped = json.dumps([s.to_dict(include_text=True) for s in state.trace()])
    assert "s3cret" not in dumped and "127.0.0.1:9/v1" in dumped


def test_opentelemetry_spans_use_the_genai_conventions() -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk not installed")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sink = lp.trace_to(lp.OpenTelemetryTraces(provider))
    try:
        qa.run("Why?", backend=ScriptedBackend(lambda r: "because"))
    finally:
        lp.stop_tracing(sink)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    request = next(s for name, s in spans.items() if name.startswith("text_completion"))
    assert request.attributes["gen_ai.operation.name"] == "text_completion"
    assert request.attributes["gen_ai.usage.output_tokens"] == 1
    assert request.attributes["gen_ai.request.max_tokens"] == 8
    program = spans["lmprog.program qa"]
    assert request.parent is not None and program.context is not None
    assert request.context.trace_id == program.context.trace_id
