"""lp.Local: the in-process torch backend (the default when no backend is set).

It needs the `local` extra (`pip install 'lmprog[local]'`: torch, transformers, tokenizers,
safetensors, gguf, outlines-core, llguidance); the rest of lmprog needs none of them. This
package imports them only when `Local` is first used, so without them `lp.Local` (and a
program run with no backend) raises `LocalNotInstalledError`, which says what to install or
which server backend to use instead.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

from lmprog.errors import LocalNotInstalledError

if TYPE_CHECKING:
    from lmprog.backends.local.backend import Local

__all__ = ["Local", "LocalNotInstalledError"]

# The top-level modules the `local` extra installs (pyproject.toml).
LOCAL_MODULES = frozenset(
    {"torch", "transformers", "tokenizers", "safetensors", "gguf", "outlines_core", "llguidance"}
)


def missing_local_extra(exc: ModuleNotFoundError, what: str) -> LocalNotInstalledError | None:
    """The error to raise instead of `exc` when it is a module of the `local` extra."""
    top = (exc.name or "").partition(".")[0]
    if top not in LOCAL_MODULES:
        return None
    # Name torch when it is missing too: it is the one to install first.
    return LocalNotInstalledError(what, "torch" if find_spec("torch") is None else top)


def __getattr__(name: str) -> Any:
    if name == "Local":
        from lmprog.backends.local.backend import Local

        return Local
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
