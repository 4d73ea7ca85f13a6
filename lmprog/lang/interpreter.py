"""`sglang.lang.interpreter`'s names: the state a program body gets, and its fork group."""

from __future__ import annotations

from typing import Any

from lmprog.lang import missing
from lmprog.state import ForkGroup as ProgramStateGroup
from lmprog.state import ProgramState

__all__ = ["ProgramState", "ProgramStateGroup"]

_MISSING = {
    "StreamExecutor": "a state's execution is internal (lmprog.execution.Execution); drive "
    "programs through Program.run / ProgramState",
    "run_program": "use Program.run(...)",
    "run_program_batch": "use Program.run_batch(...)",
    "cache_program": "use Program.cache(backend)",
}


def __getattr__(name: str) -> Any:
    if name in _MISSING:
        missing(__name__, name, _MISSING[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
