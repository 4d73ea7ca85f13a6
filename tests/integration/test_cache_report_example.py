"""examples/cache_report.py runs as a user would run it, on the default backend."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cache_report.py"

pytestmark = [pytest.mark.engine, pytest.mark.gemma]


def run_example() -> tuple[str, str]:
    """Its stdout and stderr, after checking it exited cleanly."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr


def hit_rate(out: str, program: str) -> int:
    """The batch's hit rate in percent, from the report line after `[program]`."""
    found = re.search(rf"\[{program}\].*\nprefix cache: .* cached \((\d+)%\)", out)
    assert found, out
    return int(found.group(1))


def test_cache_report_example() -> None:
    out, err = run_example()
    assert "[shared_first] Paris, Madrid, Lisbon" in out
    assert hit_rate(out, "shared_first") >= 50
    assert hit_rate(out, "country_first") <= 10
    # The lint fired once, for the badly ordered program only, at the line that varies.
    line = next(
        i
        for i, text in enumerate(EXAMPLE.read_text().splitlines(), 1)
        if 's += f"Country: {country}' in text
    )
    assert err.count("PrefixOrderWarning") == 1
    assert f"cache_report.py:{line}: PrefixOrderWarning: program 'country_first'" in err
    assert "gen('answer')" in err
