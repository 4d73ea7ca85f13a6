"""A plain `pip install lmprog` (no extras) in a fresh virtual environment: it pulls neither
torch nor transformers, lmprog imports, a program runs against a real llama-server, and a
program with no backend fails at once naming the `local` extra.

The venv with lmprog's core dependencies is cached under lmprog's cache, keyed by
pyproject.toml, so a rerun only reinstalls lmprog itself (a wheel built from this checkout);
the first run installs the dependencies from pip's cache or PyPI (~30 s).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.models import cache_dir

import lmprog as lp

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parents[2]
# Distributions of the `local` extra (pyproject.toml) that a core install must not pull in.
LOCAL_ONLY = {
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "gguf",
    "outlines-core",
    "outlines_core",
    "llguidance",
}


def run(*args: str | Path, timeout: float = 600, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        env=env,
    )
    if result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_wheel(into: Path) -> Path:
    """A wheel of this checkout, built with this venv's setuptools (no build isolation: nothing
    to download), from a copy of its sources so the checkout gets no build/ folder."""
    source = into / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "lmprog", source / "lmprog", ignore=shutil.ignore_patterns("__pycache__")
    )
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        into,
        source,
    )
    (wheel,) = into.glob("lmprog-*.whl")
    return wheel


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding lmprog installed without extras, from a wheel of this checkout."""
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    root = cache_dir() / "install-test"
    venv = root / f"py{sys.version_info.major}{sys.version_info.minor}-{key}"
    wheel = build_wheel(tmp_path_factory.mktemp("wheel"))
    with locked(root / f".{venv.name}.lock"):
        python = venv / "bin" / "python"
        if not python.is_file():
            tmp = Path(tempfile.mkdtemp(prefix=f".{venv.name}-", dir=root))
            try:
                run(sys.executable, "-m", "venv", tmp)
                run(tmp / "bin" / "python", "-m", "pip", "install", "--quiet", wheel)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            tmp.rename(venv)  # console scripts name the tmp path: use `python -m` only
            for stale in root.glob(f"py{sys.version_info.major}{sys.version_info.minor}-*"):
                if stale != venv:  # made for an older pyproject.toml
                    shutil.rmtree(stale, ignore_errors=True)
        else:  # dependencies in place: replace lmprog only (pip resolves, downloads nothing)
            run(python, "-m", "pip", "uninstall", "--quiet", "--yes", "lmprog")
            run(python, "-m", "pip", "install", "--quiet", wheel)
    return venv


def venv_python(venv: Path, code: str, *args: str) -> str:
    """Run `code` in the venv, from a folder without this checkout's lmprog on sys.path."""
    python = venv / "bin" / "python"
    return run(python, "-c", textwrap.dedent(code), *args, timeout=300, cwd=venv)


def test_core_install_has_no_torch(core_venv: Path) -> None:
    listed = json.loads(run(core_venv / "bin" / "python", "-m", "pip", "list", "--format=json"))
    installed = {p["name"].lower() for p in listed}
    assert "lmprog" in installed
    assert not installed & LOCAL_ONLY, installed & LOCAL_ONLY
    where = venv_python(core_venv, "import lmprog; print(lmprog.__file__)")
    assert str(core_venv) in where  # the installed copy, not this checkout


def test_a_program_runs_on_llama_server_without_torch(
    core_venv: Path, tiny_server: lp.Runtime
) -> None:
    out = venv_python(
        core_venv,
        """
        import json, sys
        import lmprog as lp

        @lp.function
        def prog(s):
            s += "def add(a, b):" + lp.gen("body", max_tokens=8, temperature=0)
            s += "\\nok?" + lp.select("answer", [" yes", " no"])
            s += "\\nn=" + lp.gen("n", regex="[0-9]{2}", max_tokens=4)

        state = prog.run(backend=lp.LlamaCpp(sys.argv[1]))
        heavy = sorted(m for m in ("torch", "transformers", "tokenizers") if m in sys.modules)
        print(json.dumps([state["body"], state["answer"], state["n"], heavy]))
        """,
        tiny_server.url,
    )
    body, answer, number, heavy = json.loads(out)
    assert isinstance(body, str) and body
    assert answer in (" yes", " no")
    assert len(number) == 2 and number.isdigit()
    assert heavy == []


def test_a_program_without_a_backend_names_the_extra(core_venv: Path) -> None:
    out = venv_python(
        core_venv,
        """
        import json
        import lmprog as lp

        @lp.function
        def prog(s):
            s += "Q: 1+1?\\nA:" + lp.gen("a", max_tokens=4)

        try:
            prog.run()
        except lp.LmprogError as exc:
            print(json.dumps([type(exc).__name__, str(exc)]))
        """,
    )
    kind, message = json.loads(out)
    assert kind == "LocalNotInstalledError"
    assert "pip install 'lmprog[local]'" in message
    assert "lp.LlamaCpp(url)" in message and "lp.OpenAI(model)" in message


def test_the_installed_package_carries_lp_locals_kernel_source(core_venv: Path) -> None:
    """lp.Local compiles kernels.c on first use (native.py): it must be in the wheel."""
    found = venv_python(
        core_venv,
        """
        from importlib import resources
        source = resources.files("lmprog.backends.local").joinpath("kernels.c")
        print(len(source.read_bytes()))
        """,
    )
    assert int(found) > 1000
