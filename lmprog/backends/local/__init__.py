"""lp.Local: the in-process torch backend (the default when no backend is set)."""

from lmprog.backends.local.backend import Local

__all__ = ["Local"]
