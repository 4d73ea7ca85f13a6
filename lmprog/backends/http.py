"""One pooled HTTP client per backend, with errors that say what to do.

Its transport is lmprog.backends.wire (asyncio and httptools): against a server that answers at
once, httpx's connection pool capped a batch at ~700 requests/s on this project's benchmark
machine, aiohttp's request objects cost ~200-250 us of CPU a request, and the wire's ~65-95 us
(docs/performance.md).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import orjson

from lmprog import loop as lmprog_loop
from lmprog.backends import wire
from lmprog.backends.base import current_routing, note_retry
from lmprog.errors import (
    BackendError,
    BackendResponseError,
    BackendTimeoutError,
    BackendUnavailableError,
)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def _backoff(attempt: int) -> float:
    """0.5 s, 1 s, 2 s, ... (at most 8 s), with jitter so retries of a batch spread out."""
    return float(min(8.0, 0.5 * 2**attempt) * random.uniform(0.75, 1.25))


def _retry_after(headers: Any) -> float | None:
    """The server's Retry-After in seconds (capped at 30 s), if it gave one."""
    try:
        return min(30.0, float(headers["retry-after"]))
    except (KeyError, ValueError):
        return None


class Secret:
    """Holds a credential; prints as *** so no repr, log or error can show it."""

    def __init__(self, value: str | None) -> None:
        self._value = value

    def reveal(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "'***'" if self._value else "None"


class _Dropped(Exception):
    """The connection failed or was dropped before an answer came: safe to send again."""


class JsonClient:
    """POST/GET JSON and server-sent events against one server, mapping failures to lmprog
    errors. The connection pool is made on the loop that first uses it (again if another loop
    uses it later) and closed when the client is, or when it is garbage-collected."""

    def __init__(
        self, base_url: str, server: str, timeout: float, api_key: Secret, max_retries: int = 3
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.server = server
        self.timeout = timeout
        self._api_key = api_key
        self._pool: wire.HttpPool | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> wire.HttpPool:
        running = asyncio.get_running_loop()
        pool = self._pool
        if pool is None or pool.closed or self._pool_loop is not running:
            key = self._api_key.reveal()
            pool = wire.HttpPool(
                self.base_url,
                {**_JSON, **({"Authorization": f"Bearer {key}"} if key else {})},
                connect_timeout=min(self.timeout, 10.0),
                read_timeout=self.timeout,
                # idle connections go before the server closes them (llama.cpp: after 5 s)
                keepalive=2.0,
            )
            self._pool, self._pool_loop = pool, running
            lmprog_loop.close_with(self, running, pool.close)
        return pool

    async def get(self, path: str) -> Any:
        return await self._request("GET", path, None)

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        return await self._request("POST", path, body)

    async def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        attempt = 0
        while True:
            try:
                status, headers, raw = await self._exchange(method, path, data)
            except _Dropped as dropped:
                if attempt >= self.max_retries:
                    raise self._unavailable(dropped.__cause__, path) from dropped.__cause__
                note_retry()
                await asyncio.sleep(_backoff(attempt))
                attempt += 1
                continue
            if status not in RETRY_STATUSES or attempt >= self.max_retries:
                break
            note_retry()
            await asyncio.sleep(_retry_after(headers) or _backoff(attempt))
            attempt += 1
        if status >= 400:
            raise self._status_error(status, raw.decode(errors="replace"), path)
        if status >= 300:
            raise BackendResponseError(
                f"{self.server} at {self.base_url}{path} answered HTTP {status}, a redirect to "
                f"{headers.get('location')!r}, which lmprog does not follow: give the backend "
                "the URL it redirects to",
                status,
            )
        return self._parsed(raw, path)

    def _parsed(self, raw: bytes, path: str) -> Any:
        """A JSON body, read as bytes (JSON is UTF-8: RFC 8259). orjson reads a select's
        logprob lists ~4x faster than json; json reads what orjson refuses: NaN and Infinity
        (Python servers write them), and text that is not UTF-8 (bad bytes replaced)."""
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        try:
            try:
                return json.loads(raw)
            except UnicodeDecodeError:
                return json.loads(raw.decode(errors="replace"))
        except json.JSONDecodeError as exc:
            raise BackendResponseError(
                f"{self.server} at {self.base_url}{path} sent a body that is not JSON: "
                f"{raw[:200].decode(errors='replace')!r}"
            ) from exc

    async def _exchange(self, method: str, path: str, data: bytes | None) -> tuple[int, Any, bytes]:
        """One request: (status, headers, body bytes)."""
        routing = current_routing()
        try:
            answer, raw = await self._http().request(
                method, path, data, routing.headers() if routing is not None else None
            )
        except wire.WireError as exc:
            raise self._failure(exc, path) from exc
        if routing is not None:
            routing.observe(answer.headers)
        return answer.status, answer.headers, raw

    def _failure(self, exc: wire.WireError, path: str) -> Exception:
        """The transport's failures as lmprog's errors, or _Dropped where sending again is
        safe: no connection, or one dropped before the answer came (generation has no side
        effects). A read timeout is the user's bound and is not stretched by retrying."""
        if isinstance(exc, wire.ReadTimeout):
            return self._timeout(path)
        if isinstance(exc, wire.ConnectionFailed):
            return _Dropped(str(exc))
        if isinstance(exc, wire.Untrusted):
            return BackendError(f"cannot connect to {self.server} at {self.base_url}: {exc}")
        return BackendResponseError(f"{self.server} at {self.base_url}{path}: {exc}")

    async def stream_events(self, path: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        """POST and yield the JSON payload of each `data:` line of a server-sent event stream.

        Retried like `post` only until the first event: after that, text has been shown."""
        attempt = 0
        while True:
            started = False
            try:
                async for event in self._events(path, body):
                    started = True
                    yield event
                return
            except _Dropped as dropped:
                if started or attempt >= self.max_retries:
                    raise self._unavailable(dropped.__cause__, path) from dropped.__cause__
            except BackendResponseError as exc:
                if started or exc.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
                    raise
            note_retry()
            await asyncio.sleep(_backoff(attempt))
            attempt += 1

    async def _events(self, path: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        routing = current_routing()
        headers = routing.headers() if routing is not None else None
        stream = self._http().stream("POST", path, json.dumps(body).encode(), headers)
        try:
            async with stream as answer:
                if routing is not None:
                    routing.observe(answer.headers)
                if answer.status >= 400:
                    text = b"".join([chunk async for chunk in stream])
                    raise self._status_error(answer.status, text.decode(errors="replace"), path)
                pending = b""
                async for data in stream:
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        event = self._event(line)
                        if event is _DONE:
                            return
                        if event is not None:
                            yield event
                event = self._event(pending)
                if event is not None and event is not _DONE:
                    yield event
        except wire.WireError as exc:
            raise self._failure(exc, path) from exc

    def _event(self, line: bytes) -> Any:
        """The payload of one `data:` line: None for other lines, _DONE for [DONE]."""
        text = line.decode(errors="replace").strip()
        if not text.startswith("data:"):
            return None
        payload = text[5:].strip()
        if payload == "[DONE]":
            return _DONE
        try:
            return json.loads(payload)
        except json.JSONDecodeError as exc:
            raise BackendResponseError(
                f"{self.server} streamed a line that is not JSON: {payload[:200]!r}"
            ) from exc

    def _timeout(self, path: str) -> BackendTimeoutError:
        return BackendTimeoutError(
            f"{self.server} at {self.base_url}{path} did not answer within {self.timeout}s; "
            "raise timeout= or check the server's load"
        )

    def _unavailable(self, cause: BaseException | None, path: str) -> BackendUnavailableError:
        why = f"{type(cause).__name__}: {cause}" if cause else "connection dropped"
        return BackendUnavailableError(
            f"cannot reach {self.server} at {self.base_url}{path} ({why}); is the server "
            "running and is the URL right?"
        )

    def _status_error(self, status: int, text: str, path: str) -> BackendResponseError:
        detail = text[:500]
        try:
            parsed = json.loads(text)
            error = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
            detail = error.get("message", detail) if isinstance(error, dict) else str(error)
        except (json.JSONDecodeError, AttributeError):
            pass
        return BackendResponseError(
            f"{self.server} at {self.base_url}{path} answered HTTP {status}: {detail}", status
        )

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


_JSON = {"Content-Type": "application/json"}  # every body is JSON: set once, on the pool
_DONE = object()
