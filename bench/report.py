"""Rows of measurements, and the JSON and markdown reports made from them."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Sample:
    """One timed run of one tool on one workload and target."""

    wall_s: float
    programs: int
    requests: int
    prompt_sent: float | None  # prompt tokens the engine received (its own counters)
    prompt_cached: float | None  # of those, served from its prefix cache
    errors: list[str]
    lmprog_cache: dict[str, Any] | None = None  # lmprog's own cache report, to cross-check

    @property
    def rate(self) -> float:
        return self.programs / self.wall_s


@dataclass
class Row:
    target: str
    workload: str
    tool: str
    why_not: str | None = None  # set: the tool cannot express the workload here
    samples: list[Sample] = field(default_factory=list)
    ratio: float | None = None  # programs/s over the ceiling's, both medians

    @property
    def median(self) -> Sample | None:
        """The run with the median rate (the lower middle one for an even count)."""
        if not self.samples:
            return None
        ranked = sorted(self.samples, key=lambda s: s.rate)
        return ranked[(len(ranked) - 1) // 2]

    @property
    def rate(self) -> float | None:
        return statistics.median(s.rate for s in self.samples) if self.samples else None


def ratios(rows: list[Row], ceiling: str) -> None:
    """Fill each row's ratio to the ceiling's rate on the same target and workload."""
    rates = {(r.target, r.workload): r.rate for r in rows if r.tool == ceiling}
    for row in rows:
        base = rates.get((row.target, row.workload))
        if row.rate is not None and base:
            row.ratio = row.rate / base


def _tokens(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def table(rows: list[Row]) -> str:
    """A markdown table, one line per workload x tool (n/a lines say why)."""
    lines = [
        "| workload | tool | programs/s | vs ceiling | wall s | requests | prompt tokens "
        "sent | computed | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    reasons: dict[str, set[str | None]] = {}
    for row in rows:
        reasons.setdefault(row.tool, set()).add(row.why_not)
    never = {tool: why.pop() for tool, why in reasons.items() if len(why) == 1 and None not in why}
    for row in rows:
        best = row.median
        if row.tool in never:
            continue
        if best is None:
            lines.append(f"| {row.workload} | {row.tool} | n/a ({row.why_not}) | | | | | | |")
            continue
        computed = (
            None
            if best.prompt_sent is None or best.prompt_cached is None
            else best.prompt_sent - best.prompt_cached
        )
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
        lines.append(
            f"| {row.workload} | {row.tool} | {row.rate:,.1f} | {ratio} | {best.wall_s:.2f} | "
            f"{best.requests:,} | {_tokens(best.prompt_sent)} | {_tokens(computed)} | "
            f"{len(best.errors)} |"
        )
    lines += [f"| all | {tool} | n/a ({why}) | | | | | | |" for tool, why in never.items()]
    return "\n".join(lines)


def pivot(rows: list[Row]) -> str:
    """One target's rows as a matrix: workload x tool, "programs/s (ratio)" and, where the
    engine counts them, "computed/sent" prompt tokens; n/a cells are explained below it."""
    tools = list(dict.fromkeys(r.tool for r in rows if r.samples))
    workloads = list(dict.fromkeys(r.workload for r in rows))
    cells = {(r.workload, r.tool): r for r in rows}
    lines = ["| workload | " + " | ".join(tools) + " |", "| --- |" + " ---: |" * len(tools)]
    reasons: dict[str, str] = {}
    for workload in workloads:
        out = []
        for tool in tools:
            row = cells.get((workload, tool))
            best = row.median if row else None
            if row is None or best is None:
                why = row.why_not if row else "not run"
                mark = reasons.setdefault(str(why), f"n/a [{len(reasons) + 1}]")
                out.append(mark)
                continue
            if any(sample.errors for sample in row.samples):  # a rate of failures means nothing
                failed = max(len(sample.errors) for sample in row.samples)
                out.append(f"failed ({failed:,} of {best.programs:,} programs)")
                continue
            cell = f"{row.rate:,.1f}" + ("" if row.ratio is None else f" ({row.ratio:.2f}x)")
            if best.prompt_sent is not None and best.prompt_cached is not None:
                cell += f" · {best.prompt_sent - best.prompt_cached:,.0f}/{best.prompt_sent:,.0f}"
            out.append(cell)
        lines.append(f"| {workload} | " + " | ".join(out) + " |")
    lines += [f"\n{mark}: {why}" for why, mark in reasons.items()]
    absent = {r.tool: r.why_not for r in rows if r.tool not in tools}
    lines += [f"\nNot run here: {tool} ({why})." for tool, why in absent.items()]
    return "\n".join(lines)


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    parts = [f"# bench/compare.py, {meta['date']}", "", "```", meta["machine"], "```", ""]
    for note in meta.get("notes", []):
        parts += [f"- {note}"]
    for target, info in meta["targets"].items():
        parts += ["", f"## {target}: {info['engine']}", ""]
        parts += [
            f"{info['programs']} programs per run, {info['concurrency']} in flight; "
            f"median of {meta['repeat']} runs.",
            "",
        ]
        parts += [pivot([r for r in rows if r.target == target]), "", "All columns:", ""]
        parts.append(table([r for r in rows if r.target == target]))
        for row in rows:
            best = row.median
            if row.target == target and best is not None and best.errors:
                parts.append(f"\n{row.tool} on {row.workload}: first error: {best.errors[0][:300]}")
    return "\n".join(parts) + "\n"


def write(rows: list[Row], meta: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "meta": meta,
        "rows": [
            {
                **asdict(r),
                "programs_per_s": r.rate,
                "median_run": r.samples.index(r.median) if r.median else None,
            }
            for r in rows
        ],
    }
    json_path, md_path = out / "compare.json", out / "compare.md"
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    md_path.write_text(markdown(rows, meta))
    return json_path, md_path
