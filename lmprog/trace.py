"""Spans of every run: the program, each primitive, each backend request, with timings, token
counts and cache hits. `state.trace()` gives a program's spans; `lp.trace_to(...)` sends every
finished program's spans to JSON lines or OpenTelemetry.

A trace never holds a secret: API keys are never recorded, credentials and query strings are
cut out of URLs, and generated text is only included when asked (`include_text=True`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmprog.pricing import Cost

SpanKind = Literal["program", "primitive", "request"]
Sink = Callable[[list["Span"]], None]

_ids = itertools.count(1)
_URL = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?:[^/@\s'\"]*@)?(?P<rest>[^\s?'\"]*)(?:\?[^\s'\")]*)?",
    re.I,
)


def redact(text: str) -> str:
    """`text` with URL credentials (`user:token@`) and query strings (`?key=...`) removed."""
    return _URL.sub(lambda m: m.group("scheme") + m.group("rest"), text)


_redacted_name = functools.lru_cache(maxsize=64)(redact)  # a backend's, once per program run


@dataclass
class Span:
    """One timed step. `start`/`end` are Unix times in seconds; `parent_id` links a request to
    its primitive and a primitive to its program."""

    kind: SpanKind
    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start: float
    end: float | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    text: str | None = field(default=None, repr=False)  # generated text (exported on request)

    @property
    def duration_s(self) -> float | None:
        return None if self.end is None else self.end - self.start

    def finish(self, error: BaseException | str | None = None, **attributes: Any) -> None:
        self.end = time.time()
        self.attributes.update({k: v for k, v in attributes.items() if v is not None})
        if error is not None and self.error is None:
            self.error = redact(error if isinstance(error, str) else _describe(error))

    def to_dict(self, include_text: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_id": self.parent_id,
            "start": self.start,
            "end": self.end,
            "duration_s": self.duration_s,
            "attributes": self.attributes,
            "error": self.error,
        }
        if include_text and self.text is not None:
            data["text"] = self.text
        return data


class Tracer:
    """The spans of one program run (its forks included)."""

    def __init__(self, program: str, backend: str) -> None:
        # W3C trace-context ids (32 and 16 hex digits), so a router's and an engine's spans
        # join the program's through the `traceparent` its requests carry
        pid, serial = os.getpid() & 0xFFFFFFFF, next(_ids) & 0xFFFFFFFF
        self.trace_id = f"{time.time_ns():016x}{pid:08x}{serial:08x}"
        self.spans: list[Span] = []
        self.root = self.start("program", program, None, backend=_redacted_name(backend))

    def start(self, kind: SpanKind, name: str, parent: Span | None, **attributes: Any) -> Span:
        span = Span(
            kind,
            name,
            self.trace_id,
            f"{next(_ids):016x}",
            parent.span_id if parent is not None else None,
            time.time(),
            attributes={k: v for k, v in attributes.items() if v is not None},
        )
        self.spans.append(span)
        return span

    def finish(self, error: BaseException | None) -> None:
        """End the program span and hand the spans to every sink."""
        self.root.finish(error)
        for sink in list(_sinks):
            sink(self.spans)


def traceparent(span: Span) -> str:
    """The W3C `traceparent` header of a request sent within `span` (sampled)."""
    return f"00-{span.trace_id}-{span.span_id}-01"


def cost_attributes(cost: Cost | None) -> dict[str, Any]:
    """A request's cost as span attributes: `cost` (a number) and `currency`. OpenTelemetry's
    GenAI conventions have no cost attribute, so they are exported as lmprog.cost and
    lmprog.currency."""
    return {} if cost is None else {"cost": float(cost.amount), "currency": cost.currency}


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


# ----- sinks ------------------------------------------------------------------------------

_sinks: list[Sink] = []


def trace_to(sink: str | os.PathLike[str] | Sink, include_text: bool = False) -> Sink:
    """Send every program that finishes from now on to `sink`: a path (JSON lines, appended),
    or any callable taking a list of spans (such as `lp.OpenTelemetryTraces()`). Returns the
    sink, for `lp.stop_tracing(sink)`."""
    chosen = sink if callable(sink) else JsonLines(sink, include_text)
    _sinks.append(chosen)
    return chosen


def stop_tracing(sink: Sink | None = None) -> None:
    """Stop sending spans to `sink` (all sinks if None)."""
    if sink is None:
        _sinks.clear()
    elif sink in _sinks:
        _sinks.remove(sink)


class JsonLines:
    """Appends one JSON object per span to a file (thread-safe; one write per program)."""

    def __init__(self, path: str | os.PathLike[str], include_text: bool = False) -> None:
        self.path = Path(path)
        self.include_text = include_text
        self._lock = threading.Lock()

    def __call__(self, spans: list[Span]) -> None:
        lines = "".join(json.dumps(s.to_dict(self.include_text), default=str) + "\n" for s in spans)
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.write(lines)


def write_trace(
    spans: Iterable[Span], path: str | os.PathLike[str], include_text: bool = False
) -> None:
    """Write `spans` (e.g. `state.trace()`) to a JSON-lines file."""
    JsonLines(path, include_text)(list(spans))


class OpenTelemetryTraces:
    """Re-emits spans through OpenTelemetry, with the GenAI semantic conventions' attribute
    names on request spans. Needs `opentelemetry-api` (and an SDK with an exporter to go
    anywhere); `tracer_provider=None` uses the global one."""

    def __init__(self, tracer_provider: Any = None, include_text: bool = False) -> None:
        try:
            trace: Any = importlib.import_module("opentelemetry.trace")
        except ImportError as exc:
            raise ImportError(
                "OpenTelemetry tracing needs the opentelemetry-api and opentelemetry-sdk "
                "packages: pip install opentelemetry-sdk"
            ) from exc
        self._trace = trace
        self._tracer = trace.get_tracer("lmprog", tracer_provider=tracer_provider)
        self._ids = _LmprogIds.installed_on(self._tracer)
        self.include_text = include_text

    def __call__(self, spans: list[Span]) -> None:
        made: dict[str, Any] = {}
        for span in spans:  # parents are recorded before their children
            parent = made.get(span.parent_id or "")
            context = self._trace.set_span_in_context(parent) if parent is not None else None
            with self._ids.given(span) if self._ids else contextlib.nullcontext():
                otel = self._tracer.start_span(
                    _otel_name(span),
                    context=context,
                    start_time=int(span.start * 1e9),
                    attributes=_otel_attributes(span, self.include_text),
                )
            if span.error is not None:
                otel.set_status(self._trace.Status(self._trace.StatusCode.ERROR, span.error))
            made[span.span_id] = otel
        for span in reversed(spans):
            made[span.span_id].end(end_time=int((span.end or span.start) * 1e9))


class _LmprogIds:
    """An OpenTelemetry SDK id generator that gives a re-emitted span its own lmprog ids, so
    the `traceparent` its requests carried names the exported span, and the spans of a router
    or engine that traces join the program's trace. Other spans get the SDK's own ids."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback
        self._pending = threading.local()

    @classmethod
    def installed_on(cls, tracer: Any) -> _LmprogIds | None:
        """The generator on `tracer` (lmprog's own instrumentation scope), installed if it is
        not yet; None for a tracer that is not the SDK's (its ids stay its own)."""
        generator = getattr(tracer, "id_generator", None)
        if generator is None or isinstance(generator, cls):
            return generator
        tracer.id_generator = cls(generator)
        return tracer.id_generator  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def given(self, span: Span) -> Iterator[None]:
        """Within the block, the span started on this thread takes `span`'s ids."""
        self._pending.ids = (int(span.trace_id, 16), int(span.span_id, 16))
        try:
            yield
        finally:
            self._pending.ids = None

    def generate_trace_id(self) -> int:
        ids = getattr(self._pending, "ids", None)
        return ids[0] if ids else int(self.fallback.generate_trace_id())

    def generate_span_id(self) -> int:
        ids = getattr(self._pending, "ids", None)
        return ids[1] if ids else int(self.fallback.generate_span_id())

    def is_trace_id_random(self) -> bool:
        if getattr(self._pending, "ids", None):
            return False  # lmprog's trace ids hold a time, a process id and a serial
        return bool(self.fallback.is_trace_id_random())


_GENAI_NAMES = {
    "prompt_tokens": "gen_ai.usage.input_tokens",
    "completion_tokens": "gen_ai.usage.output_tokens",
    "cached_tokens": "gen_ai.usage.cache_read.input_tokens",
    "max_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "seed": "gen_ai.request.seed",
    "model": "gen_ai.request.model",
}


def _otel_name(span: Span) -> str:
    if span.kind == "request":
        return f"{span.attributes.get('operation', 'text_completion')} {span.attributes['backend']}"
    return f"lmprog.{span.kind} {span.name}"


def _otel_attributes(span: Span, include_text: bool) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for key, value in span.attributes.items():
        if not isinstance(value, (str, bool, int, float)):
            value = json.dumps(value, default=str)
        attributes[_GENAI_NAMES.get(key, f"lmprog.{key}")] = value
    if span.kind == "request":
        attributes["gen_ai.operation.name"] = span.attributes.get("operation", "text_completion")
        if "finish_reason" in span.attributes:
            attributes["gen_ai.response.finish_reasons"] = [span.attributes["finish_reason"]]
    if include_text and span.text is not None:
        attributes["lmprog.text"] = span.text
    return attributes
