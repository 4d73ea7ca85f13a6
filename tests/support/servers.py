"""Servers the tests start from their own virtual environments: `transformers serve` and
infinity (`infinity-emb`). Each lives in a venv under ${LMPROG_CACHE_DIR:-~/.cache/lmprog} that
backends/<name>/install.sh builds (scripts/setup.sh runs it); where it is missing, the tests
that need it skip, saying which script installs it.

`ServerProcess` starts a command on a free 127.0.0.1 port in a process group of its own,
waits for its health endpoint, and on exit stops the whole group (transformers serve runs the
model in a second process), SIGTERM first, SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from support.models import cache_dir

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Venv:
    """One server's virtual environment, as its install script leaves it."""

    name: str  # what the server is called in messages
    folder: str  # under the cache root
    stamp_prefix: str  # the install script's stamp: <folder>/<prefix><version>.ok
    python_env: str  # an interpreter given here wins over the cached venv
    install_script: str  # relative to the repository root


TRANSFORMERS_SERVE = Venv(
    "transformers serve",
    "transformers-serve-venv",
    ".lmprog-transformers-serve-",
    "LMPROG_TRANSFORMERS_SERVE_PYTHON",
    "backends/transformers/install.sh",
)
INFINITY = Venv(
    "infinity",
    "infinity-venv",
    ".lmprog-infinity-",
    "LMPROG_INFINITY_PYTHON",
    "backends/infinity/install.sh",
)


def venv_python(venv: Venv) -> Path | None:
    """The venv's python where its install finished (its stamp is there), else None."""
    given = os.environ.get(venv.python_env)
    if given:
        return Path(given)
    folder = cache_dir() / venv.folder
    python = folder / "bin" / "python"
    if python.is_file() and any(folder.glob(f"{venv.stamp_prefix}*.ok")):
        return python
    return None


def not_installed_reason(venv: Venv) -> str:
    return (
        f"{venv.name} is not installed in {cache_dir() / venv.folder}: run "
        f"`bash {venv.install_script}` (scripts/setup.sh does), or set {venv.python_env}"
    )


def offline_env(**extra: str) -> dict[str, str]:
    """The environment a server gets: no model hub, no telemetry, unbuffered logs."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        DO_NOT_TRACK="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server process, its log file and its URL (`http://127.0.0.1:PORT`)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        *,
        health_path: str = "/health",
        env: dict[str, str] | None = None,
        ready_timeout: float = 240.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.health_path = health_path
        self.env = env if env is not None else offline_env()
        self.ready_timeout = ready_timeout
        self.ready_after_s: float | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        fd, log_name = tempfile.mkstemp(prefix=f"lmprog-{name.replace(' ', '-')}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_name)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=tempfile.gettempdir(),  # nothing the server writes lands in the repository
                start_new_session=True,  # its own process group: stop() ends its children too
            )
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.ready_after_s = time.monotonic() - started

    def _wait_ready(self, started: float) -> None:
        assert self.proc is not None
        deadline = started + self.ready_timeout
        with httpx.Client(timeout=5) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.proc.returncode} before it was ready:\n"
                        f"{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(self.url + self.health_path).status_code == 200:
                        return
                time.sleep(0.25)
        raise RuntimeError(
            f"{self.name} was not ready after {self.ready_timeout:.0f} s:\n{self.log_tail()}"
        )

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the process group; SIGKILL what is left after `grace` seconds."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        # The group may outlive its leader (the model process of transformers serve).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def requests_logged(self, method: str = "POST") -> int:
        """How many `method` requests uvicorn's access log shows so far."""
        return self.log_text().count(f'"{method} ')


def transformers_serve(
    python: Path, model_dir: Path, *, port: int | None = None, extra_args: Sequence[str] = ()
) -> ServerProcess:
    """`transformers serve` pinned to the model folder (the model id requests must carry is
    the folder path, as given here). Not started: use it as a context manager."""
    port = port or free_port()
    argv = [
        str(python),
        "-m",
        "transformers.cli.transformers",
        "serve",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        *extra_args,
    ]
    return ServerProcess("transformers serve", argv, port)


def infinity(
    python: Path,
    model_dir: Path,
    *,
    served_model_name: str,
    url_prefix: str = "/v1",
    port: int | None = None,
    extra_args: Sequence[str] = (),
) -> ServerProcess:
    """infinity's v2 server on a sentence-transformers folder, torch engine on the CPU, no
    warm-up (it benchmarks two batches first otherwise: ~10 s more), no disk cache of vectors.
    `url_prefix` puts the API under /v1 like other servers; /health stays at the root."""
    port = port or free_port()
    argv = [
        str(python),
        "-m",
        "infinity_emb.cli",
        "v2",
        "--model-id",
        str(model_dir),
        "--served-model-name",
        served_model_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--engine",
        "torch",
        "--no-model-warmup",
        "--no-vector-disk-cache",
        "--url-prefix",
        url_prefix,
        *extra_args,
    ]
    env = offline_env(INFINITY_ANONYMOUS_USAGE_STATS="0")
    return ServerProcess("infinity", argv, port, env=env)


def skip_unless_installed(venv: Venv) -> Path:
    """The venv's python, or skip the calling test (module) with the reason, printed too."""
    import pytest

    python = venv_python(venv)
    if python is None:
        reason = not_installed_reason(venv)
        print(f"\n[skip] {reason}", file=sys.__stderr__, flush=True)
        pytest.skip(reason)
    return python
