"""Which run an MCP session belongs to: one session per server per program run or batch.

A batch (or a single run outside any batch) makes a `SessionScope` and sets it as the current
one; its programs' bodies and executors see it through a context variable, open each server's
session through it the first time a tool of that server is needed, and share it after that.
The scope closes every session it opened when the run or batch ends, however it ends: done,
failed, or cancelled (Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar


class Closable(Protocol):
    async def aclose(self) -> None: ...


S = TypeVar("S", bound=Closable)

_current: contextvars.ContextVar[SessionScope | None] = contextvars.ContextVar(
    "lmprog_mcp_scope", default=None
)


class SessionScope:
    """The sessions one run or batch opened, by server, closed together at its end."""

    def __init__(self) -> None:
        self._opening: dict[object, asyncio.Future[Any]] = {}

    async def session(self, key: object, open_session: Callable[[], Awaitable[S]]) -> S:
        """The session for `key` (a server): opened on first use, shared after. Programs that
        ask while it is opening wait for the same opening; a failed opening fails them all."""
        opening = self._opening.get(key)
        if opening is None:
            opening = asyncio.ensure_future(open_session())
            self._opening[key] = opening
        session: S = await asyncio.shield(opening)
        return session

    async def aclose(self) -> None:
        """Close every session this scope opened (shielded: a second Ctrl-C cannot leave a
        server process behind)."""
        openings, self._opening = list(self._opening.values()), {}
        if openings:
            await asyncio.shield(_close_all(openings))


async def _close_all(openings: list[asyncio.Future[Any]]) -> None:
    for opening in openings:
        opening.cancel()  # an opening still under way stops (and closes what it started)
    await asyncio.wait(openings)
    sessions = [o.result() for o in openings if not o.cancelled() and o.exception() is None]
    await asyncio.gather(*(session.aclose() for session in sessions), return_exceptions=True)


def current() -> SessionScope | None:
    """The scope of the run or batch this code belongs to, if any."""
    return _current.get()


def enter(scope: SessionScope) -> contextvars.Token[SessionScope | None]:
    """Make `scope` current in this task (or program body) and what it starts from now on;
    `leave(token)` undoes it."""
    return _current.set(scope)


def leave(token: contextvars.Token[SessionScope | None]) -> None:
    _current.reset(token)


def bound(scope: SessionScope, body: Callable[..., Any]) -> Callable[..., Any]:
    """`body`, made to run with `scope` current: a program body runs in a greenlet of its own,
    which starts with an empty context, so the scope is set again inside it."""

    def run(*args: Any) -> Any:
        enter(scope)
        return body(*args)

    return run
