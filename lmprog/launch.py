"""lp.Runtime: start an engine as a child process, use it as a backend, always stop it.

Engines: llama.cpp's `llama-server` (built by backends/llamacpp/build.sh) and vLLM (installed
in its own environment by backends/vllm/install.sh). The process runs in its own process
group on a free 127.0.0.1 port; it is stopped on `shutdown()`, on leaving a `with` block, and
at interpreter exit (SIGTERM, then SIGKILL); and when this process dies without any of those
(SIGKILL, an unhandled SIGTERM), engine_guard.py, between the two, stops it within a second or
two. None is orphaned.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import httpx

from lmprog import loop
from lmprog.backends import router
from lmprog.backends.base import Backend, WrappedBackend
from lmprog.backends.detect import SERVERS
from lmprog.backends.dialect import LaunchSpec, free_port
from lmprog.errors import BackendUnavailableError, LmprogError
from lmprog.templates import ChatTemplate

GUARD = Path(__file__).with_name("engine_guard.py")  # stops the engine if this process dies


class Runtime(WrappedBackend):
    """Launch `engine` serving `model` and talk to it: "llama.cpp" (a GGUF file, through
    lp.LlamaCpp), "vllm" (a model folder, through lp.VLLM; CPU flags such as `o0=True`
    or `enforce_eager=True` speed its start-up) or "sglang" (a model folder or hub id,
    through lp.SGLang; needs a GPU and the `sglang` package in this interpreter or in
    $LMPROG_SGLANG_PYTHON).

    `slots` parallel sequences of `ctx_per_slot` tokens each; any other keyword becomes a
    command-line flag (`threads=2` -> `--threads 2`). `chat_template` is passed to the backend
    (a built-in name such as "gemma3", or Jinja source). The server's output goes to
    `log_path` (kept), or to a temporary file removed at shutdown; errors quote its tail.
    It listens on 127.0.0.1:`port` (by default a free port).

    "sglang-router" starts SGLang's router (`smg`) in front of running servers:
    `Runtime("sglang-router", workers=[url, ...], policy="cache_aware")`, no model. `replicas=N`
    starts N servers of `engine` and the router in front of them (its `policy=` as above); the
    Runtime is the router's backend and stops all of them.
    """

    def __init__(
        self,
        engine: str | None = None,
        model: str | os.PathLike[str] | None = None,
        *,
        slots: int = 4,
        ctx_per_slot: int = 4096,
        chat_template: str | ChatTemplate | None = None,
        startup_timeout: float = 300.0,
        log_path: str | os.PathLike[str] | None = None,
        port: int | None = None,
        model_path: str | os.PathLike[str] | None = None,
        launch_timeout: float | None = None,
        replicas: int = 1,
        **engine_args: Any,
    ) -> None:
        # SGLang's spelling, `Runtime(model_path=..., launch_timeout=...)`: an SGLang server
        if model_path is not None:
            if model is not None:
                raise TypeError("give the model once: model or model_path= (SGLang's keyword)")
            model, engine = model_path, engine or "sglang"
        if engine is None or (model is None and engine != router.ENGINE):
            raise TypeError("lp.Runtime needs an engine and a model: Runtime(engine, model)")
        if launch_timeout is not None:
            startup_timeout = launch_timeout
        if not isinstance(replicas, int) or replicas < 1:
            raise ValueError(
                f"lp.Runtime(replicas=...) must be a whole number >= 1, got {replicas!r}"
            )
        if replicas > 1 and engine == router.ENGINE:
            raise ValueError(
                "replicas= starts engine workers behind the router: give the engine, e.g. "
                'lp.Runtime("llama.cpp", model, replicas=2)'
            )
        launchers = {d.engine: d.launch for d in SERVERS if d.engine and d.launch}
        recipe = launchers.get(engine)
        if recipe is None:
            raise LmprogError(
                f"lp.Runtime cannot launch {engine!r} yet; it launches {sorted(launchers)}"
            )
        self.engine = engine
        self.model = Path(model) if model is not None else None
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        shown = f", {self.model.name!r}" if self.model else ""
        if replicas > 1:
            shown += f", replicas={replicas}"
        self.name = f"lp.Runtime({engine!r}{shown})"
        self._workers: list[Runtime] = []  # the servers behind the router, with replicas=N
        try:
            if replicas > 1:
                policy = engine_args.pop("policy", "cache_aware")
                for _ in range(replicas):
                    worker = Runtime(
                        engine, model, slots=slots, ctx_per_slot=ctx_per_slot,
                        startup_timeout=startup_timeout, **engine_args,
                    )  # fmt: skip
                    self._workers.append(worker)
                kind = next(d.kind for d in SERVERS if d.engine == engine)
                recipe, engine_args = launchers[router.ENGINE], {
                    "workers": [w.url for w in self._workers], "worker_kind": kind, "policy": policy
                }  # fmt: skip
            launch = recipe(
                LaunchSpec(
                    self.model, self.url, self.port, slots, ctx_per_slot, chat_template, engine_args
                )
            )
        except BaseException:
            self._stop_workers()
            raise
        self._own_log = log_path is None  # a temporary log is removed at shutdown
        self.log_path = Path(
            log_path or tempfile.mkstemp(prefix=f"lmprog-{engine}-", suffix=".log")[1]
        )
        self._log: IO[bytes] = self.log_path.open("wb")
        self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, str(GUARD), str(os.getpid()), *launch.command],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=launch.env,
            start_new_session=True,
        )
        atexit.register(self.shutdown)
        try:
            self._wait_healthy(startup_timeout)
        except BaseException:
            self.shutdown()
            raise
        name = self.name
        super().__init__(launch.backend)
        self.name = name  # not the inner backend's

    @property
    def endpoint(self) -> Backend:
        """SGLang's name for the backend that talks to the server."""
        return self.inner

    def cache_prefix(self, prefix: str) -> None:
        """Compute `prefix` into the server's prefix cache now (SGLang's Runtime method)."""
        loop.wait(self.warm(prefix))

    @property
    def backend(self) -> Backend:
        """The backend that talks to the launched server (lp.LlamaCpp, lp.VLLM, lp.SGLang)."""
        return self.inner

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
        self._stop_workers()

    def _stop_workers(self) -> None:
        for worker in self._workers:
            worker.shutdown()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ----- the backend: WrappedBackend passes everything to the launched server's ----------

    async def aclose(self) -> None:
        await self.inner.aclose()  # the runtime owns its backend, unlike other wrappers

    def __repr__(self) -> str:
        return f"<lmprog {self.name} at {self.url}{'' if self.running else ' (stopped)'}>"
