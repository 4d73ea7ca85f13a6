"""Figures the reliability tests measure, written to docs/reliability.md by the test run.

Each test records one row (what it did, what it measured, how many results were lost); when
every reliability test has recorded its row, the session writes the page, so the figures in
the docs are always those of a real run.
"""

from __future__ import annotations

import datetime
import os
import platform
import threading
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"

EXPECTED = (
    "load: 10,000 sync programs",
    "load: 10,000 async programs",
    "faults: zero-latency server misbehaving",
    "faults: llama-server killed mid-batch and restarted",
    "cancellation: Ctrl-C during run_batch on llama-server",
    "bad input: prompts, stops and template syntax (hypothesis)",
    "bad input: regexes and schemas (hypothesis)",
    "bad input: huge max_tokens, empty choices, duplicate names",
    "untrusted chat templates",
    "secrets",
)

_rows: dict[str, str] = {}
_lock = threading.Lock()


def record(name: str, figures: str, lost: int = 0) -> None:
    assert name in EXPECTED, name
    with _lock:
        _rows[name] = f"| {name} | {figures} | {lost} |"


def write_page() -> bool:
    """Write docs/reliability.md if every row was recorded in this run."""
    if set(_rows) != set(EXPECTED):
        return False
    lines = [
        "# Reliability",
        "",
        "What the test suite proves about faults, load, cancellation, bad input, untrusted",
        "templates and secrets. **Every figure below was written by the last full test run**",
        "(`tests/integration/test_reliability.py`, `test_bad_input.py` and "
        "`test_openai_faults.py`), on "
        f"{platform.machine()} with {os.cpu_count()} cores, "
        f"{datetime.date.today().isoformat()}.",
        "",
        "| test | what was done and measured | results lost |",
        "| --- | --- | --- |",
        *(_rows[name] for name in EXPECTED),
        "",
        "Rerun with `bash scripts/test.sh`; the page is rewritten when all of these tests run.",
        "",
    ]
    DOCS.write_text("\n".join(lines))
    return True
