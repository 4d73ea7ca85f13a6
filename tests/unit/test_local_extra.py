"""lmprog without the `local` extra: everything but lp.Local imports, and lp.Local,
lp.LocalEmbeddings and a program run with no backend fail at once, saying what to install or
use instead.

The extra's modules are hidden in a child interpreter (`sys.modules[name] = None` makes their
import fail as if they were not installed); tests/integration/test_install.py checks a real
install without them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from lmprog.backends.local import LOCAL_MODULES

CHILD = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    for name in sys.argv[1].split(","):
        sys.modules[name] = None  # import fails with ModuleNotFoundError, find_spec gives None

    import lmprog as lp

    out = {"failed": {}, "errors": {}}
    for info in pkgutil.walk_packages(lp.__path__, "lmprog."):
        if info.name.startswith("lmprog.backends.local.") or info.name == "lmprog.__main__":
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            out["failed"][info.name] = repr(exc)

    @lp.function
    def prog(s):
        s += "Q: 1+1?\\nA:" + lp.gen("a", max_tokens=4)

    def error(fn):
        try:
            fn()
        except Exception as exc:
            kind = isinstance(exc, lp.LocalNotInstalledError) and isinstance(exc, ImportError)
            return [type(exc).__name__, kind, str(exc)]
        return None

    out["errors"]["Local"] = error(lambda: lp.Local())
    out["errors"]["LocalEmbeddings"] = error(lambda: lp.LocalEmbeddings())
    out["errors"]["run"] = error(lambda: prog.run())
    out["errors"]["run_batch"] = error(lambda: prog.run_batch([{}]))
    out["loaded"] = sorted(m for m in sys.modules if sys.modules[m] is not None
                           and m.partition(".")[0] in sys.argv[1].split(","))
    print(json.dumps(out))
    """
)


def test_lmprog_without_the_local_extra() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, ",".join(sorted(LOCAL_MODULES))],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    out = json.loads(result.stdout)
    assert out["failed"] == {}
    assert out["loaded"] == []
    for what, error in out["errors"].items():
        assert error is not None, what
        name, is_the_error, message = error
        assert name == "LocalNotInstalledError" and is_the_error, error
        assert "pip install 'lmprog[local]'" in message, message
        assert "'torch' is not installed" in message, message
        for server in ("lp.LlamaCpp(url)", "lp.VLLM(url)", "lp.SGLang(url)", "lp.OpenAI(model)"):
            assert server in message, message
    assert out["errors"]["run"][2].startswith("no backend was given or set")
    assert out["errors"]["Local"][2].startswith("lp.Local runs the model")
