"""Start and stop a real vLLM OpenAI-compatible server (CPU build) for tests.

vLLM lives in its own virtualenv made by backends/vllm/install.sh (it pins its own torch and
transformers); only the standard library and httpx are needed here. Like ``LlamaServer``, the
server runs in its own process group (API server, engine core and worker are three processes)
and is killed (SIGTERM, then SIGKILL) on ``stop()``, on leaving the ``with`` block and at
interpreter exit, so no orphan survives a failed or interrupted test run.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SH = REPO_ROOT / "backends" / "vllm" / "install.sh"

# llguidance ("guidance") takes regex, choice, JSON schema and both GBNF and Lark grammars, and
# honours disable_any_whitespace; vLLM's default ("auto": xgrammar first) lets JSON fill up
# with whitespace on a weak model (the tiny one wrote 60 tokens of newlines inside `{`).
DEFAULT_STRUCTURED_OUTPUTS = {"backend": "guidance", "disable_any_whitespace": True}

_python: Path | None = None


def vllm_python() -> Path:
    """``$LMPROG_VLLM_PYTHON`` if set, else the cached venv (installed on first use, ~3 min)."""
    global _python
    env = os.environ.get("LMPROG_VLLM_PYTHON")
    if env:
        return Path(env)
    if _python is None:
        proc = subprocess.run(
            ["bash", str(INSTALL_SH)], check=True, stdout=subprocess.PIPE, text=True
        )
        _python = Path(proc.stdout.strip().splitlines()[-1])
    return _python


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class VLLMServer:
    """A vLLM server on a free 127.0.0.1 port, ready (``/health`` 200) once started.

    Defaults suit small models on a 2-core CPU: ``-O0 --enforce-eager`` skips torch.compile
    (start-up ~25-50 s instead of minutes), ``--enable-prompt-tokens-details`` makes
    ``usage.prompt_tokens_details.cached_tokens`` appear (prefix-cache hits, whole 128-token
    blocks), and ``VLLM_CPU_KVCACHE_SPACE`` bounds the KV cache (GiB; the default would take a
    large share of RAM). ``structured_outputs_config=None`` keeps vLLM's own default
    (``backend: auto``). ``served_model_name`` is the id that requests must send as ``model``.
    """

    START_TIMEOUT_S = 180.0
    STOP_TIMEOUT_S = 15.0

    def __init__(
        self,
        model: Path,
        *,
        served_model_name: str | None = None,
        max_model_len: int = 2048,
        dtype: str = "auto",
        kv_cache_gib: int = 2,
        max_num_seqs: int | None = None,
        structured_outputs_config: Mapping[str, object] | None = DEFAULT_STRUCTURED_OUTPUTS,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.model = Path(model)
        self.served_model_name = served_model_name or self.model.name
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.kv_cache_gib = kv_cache_gib
        self.max_num_seqs = max_num_seqs
        self.structured_outputs_config = structured_outputs_config
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})
        self.port: int | None = None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path: Path = log_path
        self.startup_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("vLLM server is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the API server process (also the process group id)."""
        return self._proc.pid if self._proc is not None else None

    def command(self, port: int) -> list[str]:
        # `python -m ...api_server`, not the `vllm` console script: that one is broken under
        # the `vllm-cpu` distribution name (its entry point looks up the `vllm` dist).
        cmd = [
            str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model),
            "--served-model-name", self.served_model_name,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--max-model-len", str(self.max_model_len),
            "--dtype", self.dtype,
            "-O0", "--enforce-eager",
            "--enable-prefix-caching",
            "--enable-prompt-tokens-details",
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        if self.max_num_seqs is not None:
            cmd += ["--max-num-seqs", str(self.max_num_seqs)]
        if self.structured_outputs_config is not None:
            config = json.dumps(dict(self.structured_outputs_config))
            cmd += ["--structured-outputs-config", config]
        cmd += self.extra_args
        return cmd

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib),
                "HF_HUB_OFFLINE": "1",  # no model hub here: never try to reach it
                "TRANSFORMERS_OFFLINE": "1",
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
                "PYTHONUNBUFFERED": "1",  # the log tail in errors should be current
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> VLLMServer:
        if self._proc is not None:
            return self
        if not self.model.is_dir():
            raise FileNotFoundError(self.model)
        t0 = time.monotonic()
        code: int | None = None
        # The port is probed then released, so another process may grab it first: retry.
        for _attempt in range(3):
            port = _free_port()
            with open(self.log_path, "wb") as log:
                self._proc = subprocess.Popen(
                    self.command(port),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.environment(),
                    start_new_session=True,  # own process group: stop() kills all of it
                )
            self.port = port
            atexit.register(self.stop)
            if self._wait_ready():
                self.startup_s = time.monotonic() - t0
                return self
            assert self._proc is not None
            code = self._proc.poll()
            tail = self.log_tail().lower()
            bind_failed = "address already in use" in tail
            self.stop()
            if not bind_failed:
                break
        if code is None:
            why = f"not ready within {self.START_TIMEOUT_S:.0f} s"
        else:
            why = f"exited with code {code}"
        raise RuntimeError(
            f"vLLM server {why} ({self.model}); log {self.log_path}:\n{self.log_tail()}"
        )

    def _wait_ready(self) -> bool:
        """Poll /health until 200 (refused while the engine loads); False if it died."""
        assert self._proc is not None
        deadline = time.monotonic() + self.START_TIMEOUT_S
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    return False
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/health").status_code == 200:
                        return True
                time.sleep(0.25)
        return False

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after STOP_TIMEOUT_S. Idempotent."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=self.STOP_TIMEOUT_S)
        # The engine core and worker may outlive the API server: always sweep the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def log_tail(self, n_bytes: int = 6000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-n_bytes:].decode("utf-8", errors="replace")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> VLLMServer:
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
        return f"VLLMServer({self.model.name}, {state})"


if __name__ == "__main__":  # manual use: python tests/support/vllm_server.py MODEL_DIR [NAME]
    name = sys.argv[2] if len(sys.argv) > 2 else None
    with VLLMServer(Path(sys.argv[1]), served_model_name=name) as server:
        print(server.url, server.log_path, f"ready in {server.startup_s:.1f} s", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
