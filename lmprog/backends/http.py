"""One pooled HTTP client per backend, with errors that say what to do.

It is httpx2 (the openai SDK's transport, with httpx's API): httpx 0.28's connection pool
scans every connection on every request, which took 60% of the CPU of a batch against a fast
server; on httpx2 the same batch ran 3.5x faster (bench/compare.py, lp.SGLang, zero target).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx2 as httpx

from lmprog.budget import note_retry
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


def _retry_after(response: httpx.Response) -> float | None:
    """The server's Retry-After in seconds (capped at 30 s), if it gave one."""
    try:
        return min(30.0, float(response.headers["retry-after"]))
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


class JsonClient:
    """POST/GET JSON and server-sent events against one server, mapping failures to lmprog
    errors. The httpx client is created lazily, on the loop that first uses it."""

    def __init__(
        self, base_url: str, server: str, timeout: float, api_key: Secret, max_retries: int = 3
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.server = server
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._api_key = api_key
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            key = self._api_key.reveal()
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                timeout=self.timeout,
                headers={"Authorization": f"Bearer {key}"} if key else {},
                # idle connections go before the server closes them (llama.cpp: after 5 s)
                limits=httpx.Limits(
                    max_connections=256, max_keepalive_connections=64, keepalive_expiry=2.0
                ),
            )
        return self._client

    async def get(self, path: str) -> Any:
        return await self._request("GET", path, None)

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        return await self._request("POST", path, body)

    async def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        attempt = 0
        while True:
            try:
                response = await self._http().request(method, path, json=body)
            except httpx.HTTPError as exc:
                if not self._retry(exc, attempt):
                    raise self._transport_error(exc, path) from exc
            else:
                if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
                    break
                note_retry()
                await asyncio.sleep(_retry_after(response) or _backoff(attempt))
                attempt += 1
                continue
            note_retry()
            await asyncio.sleep(_backoff(attempt))
            attempt += 1
        if response.status_code >= 400:
            raise self._status_error(response.status_code, response.text, path)
        try:
            return response.json()
        except json.JSONDecodeError as exc:
            raise BackendResponseError(
                f"{self.server} at {self.base_url}{path} sent a body that is not JSON: "
                f"{response.text[:200]!r}"
            ) from exc

    def _retry(self, exc: httpx.HTTPError, attempt: int) -> bool:
        """Retry what cannot have produced an answer: no connection, or one dropped before
        the answer came (generation has no side effects). A read timeout is the user's bound
        and is not stretched by retrying."""
        if attempt >= self.max_retries:
            return False
        if isinstance(exc, httpx.TimeoutException):
            return isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout))
        return isinstance(exc, httpx.TransportError)

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
            except httpx.HTTPError as exc:
                if started or not self._retry(exc, attempt):
                    raise self._transport_error(exc, path) from exc
            except BackendResponseError as exc:
                if started or exc.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
                    raise
            note_retry()
            await asyncio.sleep(_backoff(attempt))
            attempt += 1

    async def _events(self, path: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        async with self._http().stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                text = (await response.aread()).decode(errors="replace")
                raise self._status_error(response.status_code, text, path)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                try:
                    yield json.loads(payload)
                except json.JSONDecodeError as exc:
                    raise BackendResponseError(
                        f"{self.server} streamed a line that is not JSON: {payload[:200]!r}"
                    ) from exc

    def _transport_error(self, exc: httpx.HTTPError, path: str) -> BackendError:
        where = f"{self.server} at {self.base_url}{path}"
        if isinstance(exc, httpx.TimeoutException):
            return BackendTimeoutError(
                f"{where} did not answer within {self.timeout.read}s; raise timeout= or check "
                "the server's load"
            )
        if isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)):
            return BackendUnavailableError(
                f"cannot reach {where} ({type(exc).__name__}: {exc}); is the server running "
                "and is the URL right?"
            )
        return BackendError(f"request to {where} failed: {type(exc).__name__}: {exc}")

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
        if self._client is not None:
            await self._client.aclose()
            self._client = None
