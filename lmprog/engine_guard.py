"""Runs an engine as a child and stops it if the Python process that launched it dies.

lp.Runtime stops its engine on shutdown(), on leaving a `with` block and at interpreter exit;
none of those run when the parent is killed (SIGKILL, a SIGTERM it does not handle, a crash).
This guard sits between the two: it polls the parent once a second and, when the parent is
gone, stops the engine (SIGTERM, then SIGKILL after 10 s). If the guard itself is killed, the
kernel kills the engine (Linux's parent-death signal), so no engine outlives both. It is run as
a script, by path, and imports only the standard library, so it starts in milliseconds.

    python engine_guard.py PARENT_PID ENGINE_COMMAND...
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from types import FrameType

POLL_S = 1.0
GRACE_S = 10.0


def _parent_alive(parent: int) -> bool:
    return os.getppid() == parent


def _die_with_guard() -> None:
    """In the engine's process before it starts: SIGKILL it when the guard dies (Linux)."""
    guard = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the guard's own polling still stops it
        return
    if os.getppid() != guard:  # the guard died before the signal was armed
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def _stop(engine: subprocess.Popen[bytes]) -> None:
    engine.terminate()
    try:
        engine.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        engine.kill()
        engine.wait()


def main(argv: list[str]) -> int:
    parent, command = int(argv[0]), argv[1:]
    engine = subprocess.Popen(command, preexec_fn=_die_with_guard)  # the guard has no threads

    def forward(signum: int, frame: FrameType | None) -> None:
        engine.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while engine.poll() is None:
        if not _parent_alive(parent):
            _stop(engine)
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            engine.wait(timeout=POLL_S)
    code = engine.returncode
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
