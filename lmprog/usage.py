"""Token usage per backend: SGLang's `backend.token_usage` (prompt and completion tokens of
every request a backend served, as the engine reported them, with `reset()`).

Counting happens in the executor after each request, into the usage of the backend the user
made (wrappers such as a budget or a batch scheduler count into the backend they wrap), so
every backend has one without counting anything itself. Requests whose engine reports no
counts (select scoring on most engines) add nothing.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any


@dataclass
class TokenUsage:
    """Tokens a backend's requests used so far (SGLang's `TokenUsage`)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def reset(self) -> None:
        self.prompt_tokens = self.completion_tokens = 0

    def add(self, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        with _lock:
            self.prompt_tokens += prompt_tokens or 0
            self.completion_tokens += completion_tokens or 0


_lock = threading.Lock()
_usages: weakref.WeakKeyDictionary[Any, TokenUsage] = weakref.WeakKeyDictionary()


def innermost(backend: Any) -> Any:
    """The backend a wrapper (budget, batch item, lp.Runtime) passes its requests to."""
    seen = set()
    while getattr(backend, "inner", None) is not None and id(backend) not in seen:
        seen.add(id(backend))
        backend = backend.inner
    return backend


def token_usage(backend: Any) -> TokenUsage:
    """The usage of `backend` (of the backend it wraps, for a wrapper), made on first use."""
    target = innermost(backend)
    with _lock:
        usage = _usages.get(target)
        if usage is None:
            usage = _usages[target] = TokenUsage()
        return usage
