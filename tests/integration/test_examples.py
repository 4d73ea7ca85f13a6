"""Every example runs, on a real engine, as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = [pytest.mark.engine, pytest.mark.gemma]


def run_example(name: str) -> str:
    """Run examples/<name> as a user would; its stdout, after checking it exited cleanly."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_quickstart() -> None:
    out = run_example("quickstart.py")
    assert "capital of France: Paris" in out
    assert "positive (stars=" in out and "negative (back=" in out
    assert "[typed] Country(name='Portugal'" in out
    assert out.count("[fork] fact") == 3
    assert "[batch] Spain: Madrid" in out


def test_calculator() -> None:
    assert "6 * 9 = 54.0" in run_example("calculator.py")
