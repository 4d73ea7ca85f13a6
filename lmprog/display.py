"""How a program state (and a batch of them) shows itself in a notebook: readable HTML with
the roles, the literal text and the generated text told apart, each value's tokens, latency,
cache hits and constraint, and any error. Everything shown is escaped: model output is data.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lmprog.cache_report import CacheReport

if TYPE_CHECKING:
    from lmprog.execution import Execution
    from lmprog.state import ProgramState

MAX_VALUE_CHARS = 300
MAX_BATCH_ROWS = 50

_BOX = (
    "font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; "
    "border: 1px solid #ccc; border-radius: 6px; padding: 8px 10px; margin: 4px 0"
)
_ROLE = "color: #6a6a6a; background: rgba(128,128,128,0.15); border-radius: 3px"
_GEN = "background: rgba(46,160,67,0.22); border-radius: 3px"
_NAME = "color: #1a7f37; font-size: 10px; vertical-align: super; margin-right: 2px"
_ERROR = "color: #b42318; background: rgba(240,68,56,0.10); padding: 4px 6px; margin-top: 6px"
_TABLE = "border-collapse: collapse; margin-top: 6px; font-size: 12px"
_CELL = "border-top: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top"


def state_html(execution: Execution, report: CacheReport | None) -> str:
    """The whole state: a header line, the text with its parts marked, a table of values."""
    parts = [
        f'<div class="lmprog-state" style="{_BOX}">',
        _header(execution, report),
        '<pre style="white-space: pre-wrap; margin: 6px 0">',
        _text(execution),
        "</pre>",
        _values(execution),
    ]
    if execution.error is not None:
        parts.append(f'<div style="{_ERROR}">{_esc(str(execution.error))}</div>')
    parts.append("</div>")
    return "".join(parts)


def batch_html(states: Sequence[ProgramState]) -> str:
    """A batch: totals, the merged cache report, and one row per program (the first 50)."""
    executions = [s._execution for s in states]
    failed = sum(e.error is not None for e in executions)
    running = sum(not e.finished for e in executions)
    report = CacheReport(tuple(row for e in executions for row in e.all_requests()))
    summary = f"{len(states)} programs: {len(states) - failed - running} done, {failed} failed"
    if running:
        summary += f", {running} running"
    rows = []
    for index, execution in enumerate(executions[:MAX_BATCH_ROWS]):
        status = _status(execution)
        values = ", ".join(
            f"{name}={_short(value, 60)}" for name, value in execution.variables.items()
        )
        error = str(execution.error) if execution.error is not None else ""
        rows.append([str(index), status, values, _seconds(execution), error])
    more = len(states) - MAX_BATCH_ROWS
    footer = f"<div>… and {more} more</div>" if more > 0 else ""
    return (
        f'<div class="lmprog-batch" style="{_BOX}"><b>{_esc(summary)}</b>'
        f"<div>{_esc(str(report))}</div>"
        f"{_table(['#', 'status', 'values', 'time', 'error'], rows)}{footer}</div>"
    )


def _header(execution: Execution, report: CacheReport | None) -> str:
    line = f"<b>{_esc(execution.program)}</b> · {_status(execution)} · {_seconds(execution)}"
    if report is not None:
        line += f" · {_esc(str(report))}"
    return f"<div>{line}</div>"


def _text(execution: Execution) -> str:
    """The chunks, merged where consecutive ones are of the same kind and variable."""
    out: list[str] = []
    merged: list[tuple[str, tuple[str, ...], str]] = []
    for chunk in execution.chunks:
        if merged and merged[-1][:2] == (chunk.kind, chunk.names):
            kind, names, text = merged[-1]
            merged[-1] = (kind, names, text + chunk.text)
        else:
            merged.append((chunk.kind, chunk.names, chunk.text))
    for kind, names, text in merged:
        if kind == "role":
            out.append(f'<span style="{_ROLE}">{_esc(text)}</span>')
        elif kind == "gen" and names:
            name = names[0]
            title = _meta_line(execution.meta.get(name, {}))
            out.append(
                f'<span style="{_NAME}">{_esc(name)}</span>'
                f'<span style="{_GEN}" title="{_esc(title)}">{_esc(text)}</span>'
            )
        elif kind == "gen":
            out.append(f'<span style="{_GEN}">{_esc(text)}</span>')
        else:
            out.append(_esc(text))
    return "".join(out)


def _values(execution: Execution) -> str:
    if not execution.variables:
        return ""
    rows = []
    for name, value in execution.variables.items():
        meta = execution.meta.get(name, {})
        tokens = meta.get("completion_tokens")
        cached = meta.get("cached_tokens")
        prompt = meta.get("prompt_tokens")
        latency = meta.get("latency_s")
        rows.append(
            [
                name,
                _short(value, MAX_VALUE_CHARS),
                "" if tokens is None else str(tokens),
                "" if latency is None else f"{latency:.2f} s",
                "" if cached is None or prompt is None else f"{cached}/{prompt}",
                " · ".join(str(meta[k]) for k in ("constraint", "constraint_path") if meta.get(k)),
            ]
        )
    header = ["name", "value", "tokens", "latency", "cached/prompt", "constraint"]
    return _table(header, rows)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f'<th style="{_CELL}">{_esc(h)}</th>' for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td style="{_CELL}">{_esc(cell)}</td>' for cell in row) + "</tr>"
        for row in rows
    )
    return f'<table style="{_TABLE}"><tr>{head}</tr>{body}</table>'


def _meta_line(meta: dict[str, Any]) -> str:
    shown = []
    for key in ("completion_tokens", "prompt_tokens", "cached_tokens", "finish_reason"):
        if meta.get(key) is not None:
            shown.append(f"{key}={meta[key]}")
    if meta.get("latency_s") is not None:
        shown.append(f"latency={meta['latency_s']:.2f}s")
    if meta.get("constraint_path"):
        shown.append(str(meta["constraint_path"]))
    return ", ".join(shown)


def _status(execution: Execution) -> str:
    if execution.error is not None:
        return "failed"
    return "done" if execution.finished else "running"


def _seconds(execution: Execution) -> str:
    duration = execution.tracer.root.duration_s
    return "" if duration is None else f"{duration:.2f} s"


def _short(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _esc(text: str) -> str:
    return html.escape(text, quote=True)
