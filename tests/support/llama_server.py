"""Start and stop a real llama-server for tests (binary from backends/llamacpp/build.sh).

Only the standard library and httpx. The server runs in its own process group and is killed
(SIGTERM, then SIGKILL) on ``stop()``, on leaving the ``with`` block and at interpreter exit,
so no orphan survives a failed or interrupted test run.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SH = REPO_ROOT / "backends" / "llamacpp" / "build.sh"

_binary: Path | None = None


def llama_server_binary() -> Path:
    """``$LMPROG_LLAMA_SERVER`` if set, else the cached build (built on first use, ~4-5 min)."""
    global _binary
    env = os.environ.get("LMPROG_LLAMA_SERVER")
    if env:
        return Path(env)
    if _binary is None:
        proc = subprocess.run(
            ["bash", str(BUILD_SH)], check=True, stdout=subprocess.PIPE, text=True
        )
        _binary = Path(proc.stdout.strip().splitlines()[-1])
    return _binary


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """A llama-server process on a free 127.0.0.1 port, ready (``/health`` 200) once started.

    ``ctx_per_slot`` is the context each of the ``slots`` parallel sequences gets: llama-server
    splits ``-c`` evenly between its ``-np`` slots. ``--swa-full`` is always passed: without it
    sliding-window models (Gemma 3) barely reuse their prefix cache; it is harmless otherwise.
    """

    START_TIMEOUT_S = 120.0
    STOP_TIMEOUT_S = 10.0

    def __init__(
        self,
        model: Path,
        *,
        slots: int = 4,
        ctx_per_slot: int = 2048,
        threads: int | None = None,
        extra_args: Sequence[str] = (),
        chat_template_file: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.model = Path(model)
        self.slots = slots
        self.ctx_per_slot = ctx_per_slot
        self.threads = threads
        self.extra_args = tuple(extra_args)
        self.chat_template_file = chat_template_file
        self.port: int | None = None
        self.log_path: Path = log_path or Path(
            tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1]
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("llama-server is not started")
        return f"http://127.0.0.1:{self.port}"

    def command(self, port: int) -> list[str]:
        cmd = [
            str(llama_server_binary()),
            "-m", str(self.model),
            "--host", "127.0.0.1",
            "--port", str(port),
            "-np", str(self.slots),
            "-c", str(self.slots * self.ctx_per_slot),
            "--swa-full",
        ]  # fmt: skip
        if self.threads is not None:
            cmd += ["-t", str(self.threads)]
        if self.chat_template_file is not None:
            # Not --chat-template NAME: that is taken as literal Jinja text.
            cmd += ["--chat-template-file", str(self.chat_template_file)]
        cmd += self.extra_args
        return cmd

    def start(self) -> LlamaServer:
        if self._proc is not None:
            return self
        if not self.model.is_file():
            raise FileNotFoundError(self.model)
        # The port is probed then released, so another process may grab it first: retry.
        for _attempt in range(3):
            port = _free_port()
            with open(self.log_path, "wb") as log:
                self._proc = subprocess.Popen(
                    self.command(port),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: stop() kills all of it
                )
            self.port = port
            atexit.register(self.stop)
            if self._wait_ready():
                return self
            bind_failed = "bind" in self.log_tail().lower()
            self.stop()
            if not bind_failed:
                break
        raise RuntimeError(
            f"llama-server did not become ready ({self.model.name}); "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def _wait_ready(self) -> bool:
        """Poll /health until 200 (503 while the model loads); False if the process died."""
        assert self._proc is not None
        deadline = time.monotonic() + self.START_TIMEOUT_S
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    return False
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/health").status_code == 200:
                        return True
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after STOP_TIMEOUT_S. Idempotent."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def log_tail(self, n_bytes: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-n_bytes:].decode("utf-8", errors="replace")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self.url if self.running else "stopped"
        return f"LlamaServer({self.model.name}, {state})"


if __name__ == "__main__":  # manual use: python -m tests.support.llama_server MODEL.gguf
    with LlamaServer(Path(sys.argv[1])) as server:
        print(server.url, server.log_path, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
