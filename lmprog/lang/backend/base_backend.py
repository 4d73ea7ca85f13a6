"""`sglang.lang.backend.base_backend`: the class every backend derives from.

lmprog's `Backend` is abstract (a backend implements `generate`); SGLang's `BaseBackend()`
could be made bare to trace programs, which lmprog's `Program.trace()` does without one."""

from __future__ import annotations

from lmprog.backends.base import Backend as BaseBackend

__all__ = ["BaseBackend"]
