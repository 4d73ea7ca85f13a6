"""lp.Runtime: start an engine as a child process, use it as a backend, always stop it.

So far the engine is llama.cpp's `llama-server` (built by backends/llamacpp/build.sh). The
process runs in its own process group on a free 127.0.0.1 port; it is stopped on `shutdown()`,
on leaving a `with` block, and at interpreter exit (SIGTERM, then SIGKILL), so none is orphaned.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import httpx

from lmprog.backends.base import Backend, GenerateRequest, Generation, TextCallback
from lmprog.backends.llamacpp import LlamaCpp
from lmprog.choices import ChoiceLogprobs, ChoicesMethod
from lmprog.errors import BackendUnavailableError, LmprogError
from lmprog.templates import ChatTemplate

_ENGINES = ("llama.cpp",)


def cache_dir() -> Path:
    """Where lmprog keeps built engines and models: $LMPROG_CACHE_DIR or ~/.cache/lmprog."""
    return Path(os.environ.get("LMPROG_CACHE_DIR") or Path.home() / ".cache" / "lmprog")


def llama_server_binary() -> Path:
    """$LMPROG_LLAMA_SERVER, else the newest build in the cache, else `llama-server` on PATH."""
    given = os.environ.get("LMPROG_LLAMA_SERVER")
    if given:
        return Path(given)
    built = sorted(cache_dir().glob("llama.cpp/*/bin/llama-server"))
    if built:
        return built[-1]
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    raise LmprogError(
        "no llama-server binary: build one with `bash backends/llamacpp/build.sh` (from the "
        "lmprog repository), or set LMPROG_LLAMA_SERVER to an existing binary"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _flags(engine_args: dict[str, Any]) -> list[str]:
    """`threads=2, n_gpu_layers=0, no_webui=True` -> `--threads 2 --n-gpu-layers 0 --no-webui`."""
    flags: list[str] = []
    for key, value in engine_args.items():
        if value is None or value is False:
            continue
        flags.append("--" + key.replace("_", "-"))
        if value is not True:
            flags.append(str(value))
    return flags


class Runtime(Backend):
    """Launch `engine` ("llama.cpp") serving `model` (a GGUF file) and talk to it.

    `slots` parallel sequences of `ctx_per_slot` tokens each; any other keyword becomes a
    command-line flag (`threads=2` -> `--threads 2`). `chat_template` is passed to the backend
    (a built-in name such as "gemma3", or Jinja source). The server's output goes to
    `log_path` (kept), or to a temporary file removed at shutdown; errors quote its tail.
    It listens on 127.0.0.1:`port` (by default a free port).
    """

    def __init__(
        self,
        engine: str,
        model: str | os.PathLike[str],
        *,
        slots: int = 4,
        ctx_per_slot: int = 4096,
        chat_template: str | ChatTemplate | None = None,
        startup_timeout: float = 180.0,
        log_path: str | os.PathLike[str] | None = None,
        port: int | None = None,
        **engine_args: Any,
    ) -> None:
        if engine not in _ENGINES:
            raise LmprogError(f"lp.Runtime cannot launch {engine!r} yet; it launches {_ENGINES}")
        self.engine = engine
        self.model = Path(model)
        if not self.model.is_file():
            raise FileNotFoundError(f"lp.Runtime: no model file at {self.model}")
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = f"lp.Runtime({engine!r}, {self.model.name!r})"
        command = [
            str(llama_server_binary()),
            "--model", str(self.model),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--parallel", str(slots),
            "--ctx-size", str(slots * ctx_per_slot),
            "--swa-full",  # full prefix reuse on sliding-window models such as Gemma 3
            *_flags(engine_args),
        ]  # fmt: skip
        self._own_log = log_path is None  # a temporary log is removed at shutdown
        self.log_path = Path(
            log_path or tempfile.mkstemp(prefix="lmprog-llama-server-", suffix=".log")[1]
        )
        self._log: IO[bytes] = self.log_path.open("wb")
        self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        atexit.register(self.shutdown)
        try:
            self._wait_healthy(startup_timeout)
        except BaseException:
            self.shutdown()
            raise
        self.backend = LlamaCpp(self.url, chat_template=chat_template)
        self.capabilities = self.backend.capabilities
        self.image_marker = self.backend.image_marker

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise BackendUnavailableError(
                        f"{self.name} exited with code {self._process.returncode} while "
                        f"starting; its log ends with:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/health").status_code == 200:
                        return
                time.sleep(0.1)
        raise BackendUnavailableError(
            f"{self.name} was not healthy after {timeout:.0f}s; its log ends with:\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, n_bytes: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_bytes()[-n_bytes:].decode(errors="replace")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def shutdown(self) -> None:
        """Stop the engine (SIGTERM to its process group, SIGKILL after 10 s). Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.shutdown)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._log.close()
        if self._own_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ----- the backend: everything goes to the launched server ------------------------------

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        return await self.backend.generate(request, on_text)

    async def score_choices(
        self, context: GenerateRequest, choices: tuple[str, ...], method: ChoicesMethod
    ) -> list[ChoiceLogprobs]:
        return await self.backend.score_choices(context, choices, method)

    async def _load_chat_template(self) -> ChatTemplate:
        return await self.backend.chat_template()

    async def concurrency_hint(self) -> int:
        return await self.backend.concurrency_hint()

    def check_images(self) -> None:
        self.backend.check_images()

    async def aclose(self) -> None:
        await self.backend.aclose()

    def __repr__(self) -> str:
        return f"<lmprog {self.name} at {self.url}{'' if self.running else ' (stopped)'}>"
