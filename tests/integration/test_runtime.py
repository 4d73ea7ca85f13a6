"""lp.Runtime starts a real llama-server, serves programs, and never leaves it behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.models import tiny_model_dir, tiny_model_gguf
from support.processes import alive

import lmprog as lp

pytestmark = pytest.mark.engine


@lp.function
def hello(s):
    s += "def hello():" + lp.gen("body", max_tokens=8, temperature=0)


def test_runtime_serves_programs_and_stops_on_exit() -> None:
    with lp.Runtime("llama.cpp", tiny_model_gguf(), slots=2, ctx_per_slot=1024) as backend:
        pid = backend._process.pid
        state = hello.run(backend=backend)
        assert state.error() is None and len(state["body"]) > 0
        assert alive(pid)
    assert not alive(pid)
    assert "stopped" in repr(backend)


def test_runtime_stops_when_the_program_raises() -> None:
    @lp.function
    def broken(s):
        s += "x" + lp.gen("a", max_tokens=2)
        raise ValueError("bug in the program")

    with pytest.raises(ValueError), lp.Runtime("llama.cpp", tiny_model_gguf()) as backend:
        pid = backend._process.pid
        error = broken.run(backend=backend).error()
        assert "bug in the program" in str(error)
        raise ValueError("leaving the block with an exception")
    assert not alive(pid)


def test_a_bad_engine_argument_fails_with_the_log_tail() -> None:
    with pytest.raises(lp.BackendUnavailableError, match="exited with code"):
        lp.Runtime("llama.cpp", tiny_model_gguf(), no_such_flag=True)


def test_unknown_engine_and_missing_model_are_clear() -> None:
    with pytest.raises(lp.LmprogError, match="cannot launch 'tgi'"):
        lp.Runtime("tgi", tiny_model_gguf())
    with pytest.raises(FileNotFoundError, match="no model file"):
        lp.Runtime("llama.cpp", "/nonexistent/model.gguf")


def test_vllm_runtime_leaves_no_process() -> None:
    with lp.Runtime(
        "vllm",
        tiny_model_dir(),
        served_model_name="t2",
        optimization_level=0,
        enforce_eager=True,
        ctx_per_slot=512,
    ) as backend:
        pid = backend._process.pid
        state = hello.run(backend=backend)
        assert state.error() is None and len(state["body"]) > 0
    assert not alive(pid)


def test_a_killed_parent_leaves_no_engine_behind(tmp_path: Path) -> None:
    """SIGKILL (no atexit, no finally) and SIGTERM (Python's default: no atexit either) of
    the process that started lp.Runtime: the engine still stops."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import time\n"
        "import lmprog as lp\n"
        f"runtime = lp.Runtime('llama.cpp', {str(tiny_model_gguf())!r}, slots=1)\n"
        "print(runtime._process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    for how in (signal.SIGKILL, signal.SIGTERM):
        parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        assert parent.stdout is not None
        guard = int(parent.stdout.readline())
        engines = _children(guard)
        assert engines and all(alive(pid) for pid in engines)
        parent.send_signal(how)
        parent.wait()
        deadline = time.monotonic() + 20
        while any(alive(pid) for pid in [guard, *engines]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in [guard, *engines]), how


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found
