"""One pooled httpx client per backend, with errors that say what to do."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from lmprog.errors import (
    BackendError,
    BackendResponseError,
    BackendTimeoutError,
    BackendUnavailableError,
)


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

    def __init__(self, base_url: str, server: str, timeout: float, api_key: Secret) -> None:
        self.base_url = base_url.rstrip("/")
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
        try:
            try:
                response = await self._http().request(method, path, json=body)
            except httpx.RemoteProtocolError:
                # A pooled keep-alive connection the server had already dropped (llama-server
                # does this right after a stream): nothing was processed, so send it again.
                response = await self._http().request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, path) from exc
        if response.status_code >= 400:
            raise self._status_error(response.status_code, response.text, path)
        try:
            return response.json()
        except json.JSONDecodeError as exc:
            raise BackendResponseError(
                f"{self.server} at {self.base_url}{path} sent a body that is not JSON: "
                f"{response.text[:200]!r}"
            ) from exc

    async def stream_events(self, path: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        """POST and yield the JSON payload of each `data:` line of a server-sent event stream."""
        try:
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
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, path) from exc

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
