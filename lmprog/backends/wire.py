"""Keep-alive HTTP/1.1 to one server, on asyncio's transports and httptools' parser.

lmprog's JSON client sends every request of a self-hosted engine (SGLang, vLLM, llama.cpp,
routers) through this. It is not aiohttp because, against an engine that answers at once,
aiohttp's request and response objects cost ~200-250 us of CPU per request on this project's
benchmark machine where this costs ~65-95 us (docs/performance.md): a batch of short programs
on a local server was bound by the client, not the engine. It does only what that client needs:
one origin (http or https), a body sent with Content-Length, answers with Content-Length,
chunked or read to the end, and nothing else: no proxies, cookies, redirects or compression
asked for.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from urllib.parse import urlsplit

import httptools


class WireError(Exception):
    """A request that got no usable answer."""


class ConnectionFailed(WireError):
    """No connection could be made, or it ended before the answer was complete."""


class ReadTimeout(WireError):
    """The server sent nothing for longer than the read timeout."""


class BadAnswer(WireError):
    """The server's bytes are not HTTP/1.1 this client can read."""


class Untrusted(WireError):
    """The server's TLS certificate is not signed by an authority trusted here."""


class Answer:
    """An answer's status and headers (names lower-cased; a repeated header keeps its last)."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers


class _Connection(asyncio.Protocol):
    """One socket. It carries one exchange at a time; callbacks come from httptools."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self._loop = loop
        self._read_timeout = read_timeout
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reset(None)

    def _reset(self, streaming: bool | None) -> None:
        self._streaming = streaming
        self._headers: dict[str, str] = {}
        self._answer: Answer | None = None
        self._body: list[bytes] = []
        self._complete = False
        self._keep_alive = False
        self._heard = False  # any byte of this exchange's answer arrived
        self._failure: WireError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._heard = True
        self._last_read = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadAnswer(f"the server's answer is not valid HTTP/1.1: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._streaming is None or self._complete:
            return
        if self._answer is not None and self._to_end():  # a body that ends where the socket does
            self.on_message_complete()
            return
        why = f": {exc}" if exc else ""
        self._fail(ConnectionFailed(f"the server closed the connection before answering{why}"))

    # --- httptools' callbacks ---
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._answer = Answer(self._parser.get_status_code(), self._headers)
        if self._streaming:
            self._wake()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        if self._streaming:
            self._wake()

    def on_message_complete(self) -> None:
        if self._complete:
            return
        self._complete = True
        self._keep_alive = not self.closed and self._parser.should_keep_alive()
        self._stop_timer()
        self._wake()

    # --- one exchange ---
    def send(self, head: bytes, body: bytes | None, streaming: bool) -> None:
        self._reset(streaming)
        if self.closed or self._transport is None:
            self._fail(ConnectionFailed("the server closed the connection before the request"))
            return
        self._transport.write(head + body if body else head)
        self._last_read = self._loop.time()
        self._timer = self._loop.call_at(self._last_read + self._read_timeout, self._check_timer)

    async def until_answered(self) -> None:
        """Wait for the answer's head (streaming) or for all of it."""
        while not (self._complete or (self._streaming and self._answer is not None)):
            await self._wait()

    def whole(self) -> tuple[Answer, bytes]:
        """The complete answer, its body joined."""
        assert self._answer is not None and self._complete
        return self._answer, b"".join(self._body)

    @property
    def answer(self) -> Answer:
        assert self._answer is not None
        return self._answer

    async def next_chunk(self) -> bytes | None:
        """The body as it arrives; None at its end."""
        while not self._body:
            if self._complete:
                return None
            await self._wait()
        chunk = b"".join(self._body)
        self._body.clear()
        return chunk

    @property
    def reusable(self) -> bool:
        return self._complete and self._keep_alive and not self.closed

    @property
    def heard(self) -> bool:
        return self._heard

    def abort(self) -> None:
        self._stop_timer()
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    # --- internals ---
    async def _wait(self) -> None:
        if self._failure is not None:
            raise self._failure
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._failure is not None:
            raise self._failure

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, failure: WireError) -> None:
        if self._failure is None:
            self._failure = failure
        self.abort()
        self._wake()

    def _to_end(self) -> bool:
        """Whether the body has no length and no chunks, so it ends when the socket closes."""
        headers = self._headers
        return "content-length" not in headers and "chunked" not in headers.get(
            "transfer-encoding", ""
        )

    def _check_timer(self) -> None:
        due = self._last_read + self._read_timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check_timer)
            return
        self._timer = None
        self._fail(ReadTimeout(f"no answer within {self._read_timeout:g}s"))

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class HttpPool:
    """Keep-alive connections to the origin of `url`, at most `limit` at once.

    `headers` go with every request; `tls` is the context an https URL connects with. A
    connection idle for `keepalive` seconds is not reused (servers close theirs: llama.cpp
    after 5 s), and one the server closed while idle is replaced by a fresh one without the
    caller seeing it. A request cancelled while in flight closes its connection, which tells
    an engine to stop generating.
    """

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        *,
        connect_timeout: float,
        read_timeout: float,
        limit: int = 256,
        keepalive: float = 2.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        # https: `tls`, else the system's certificate authorities, as aiohttp and the SDK use
        self._ssl = (tls or ssl.create_default_context()) if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        self._fixed = f"Host: {parts.netloc}\r\nUser-Agent: lmprog\r\n{_lines(headers)}"
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._keepalive = keepalive
        self._slots = asyncio.Semaphore(limit)
        self._idle: deque[_Connection] = deque()
        self._open: set[_Connection] = set()
        self.closed = False

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Answer, bytes]:
        """Send one request and read its whole answer."""
        head = self._head(method, path, body, headers)
        async with self._slots:
            connection = await self._exchange(head, body, streaming=False)
            answer, data = connection.whole()  # read before another request may reuse it
            self._release(connection)
        return answer, _decoded(answer, data)

    def stream(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Stream:
        """`async with pool.stream(...) as answer`, then `async for chunk in stream`."""
        return Stream(self, self._head(method, path, body, headers), body)

    async def close(self) -> None:
        self.closed = True
        for connection in list(self._open):
            connection.abort()
        self._open.clear()
        self._idle.clear()

    # --- connections ---
    async def _exchange(self, head: bytes, body: bytes | None, streaming: bool) -> _Connection:
        """A connection whose answer has begun (streaming) or ended. Where the server closed a
        kept-alive socket as the request went out, nothing reached it: the request goes once
        more on a new connection."""
        connection = await self._connection()
        try:
            return await self._answered(connection, head, body, streaming)
        except ConnectionFailed:
            if connection.idle_since == 0 or connection.heard:
                raise
        return await self._answered(await self._connect(), head, body, streaming)

    async def _answered(
        self, connection: _Connection, head: bytes, body: bytes | None, streaming: bool
    ) -> _Connection:
        try:
            connection.send(head, body, streaming)
            await connection.until_answered()
        except BaseException:  # failed, cancelled or timed out: the socket is spent
            self._drop(connection)
            raise
        return connection

    async def _connection(self) -> _Connection:
        """An idle connection still fresh enough to use, else a new one."""
        idle = self._idle
        if idle:
            now = asyncio.get_running_loop().time()
            while idle and (idle[0].closed or now - idle[0].idle_since > self._keepalive):
                self._drop(idle.popleft())
            if idle:
                return idle.pop()
        return await self._connect()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self.closed:
            raise ConnectionFailed("the client was closed")
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop, self._read_timeout),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                ),
                self._connect_timeout,
            )
        except asyncio.TimeoutError as exc:
            raise ConnectionFailed(f"no connection within {self._connect_timeout:g}s") from exc
        except ssl.SSLCertVerificationError as exc:  # sending again would not help
            raise Untrusted(
                f"the server's TLS certificate is not trusted here ({exc.verify_message}): add "
                "its certificate authority to the system's, or name a bundle in SSL_CERT_FILE"
            ) from exc
        except OSError as exc:
            raise ConnectionFailed(str(exc) or type(exc).__name__) from exc
        self._open.add(connection)
        return connection

    def _release(self, connection: _Connection) -> None:
        """Keep a connection whose answer was read to the end; close any other."""
        if connection.reusable and not self.closed:
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.append(connection)
        else:
            self._drop(connection)

    def _drop(self, connection: _Connection) -> None:
        connection.abort()
        self._open.discard(connection)

    def _head(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> bytes:
        length = f"Content-Length: {len(body)}\r\n" if body is not None else ""
        extra = _lines(headers) if headers else ""
        return (
            f"{method} {self._prefix}{path} HTTP/1.1\r\n{self._fixed}{extra}{length}\r\n"
        ).encode("latin-1")


class Stream:
    """One streamed answer: the head on entry, then the body's chunks as they arrive."""

    def __init__(self, pool: HttpPool, head: bytes, body: bytes | None) -> None:
        self._pool = pool
        self._request = (head, body)
        self._connection: _Connection | None = None

    async def __aenter__(self) -> Answer:
        pool = self._pool
        await pool._slots.acquire()
        try:
            self._connection = await pool._exchange(*self._request, streaming=True)
        except BaseException:
            pool._slots.release()
            raise
        return self._connection.answer

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        assert self._connection is not None
        while (chunk := await self._connection.next_chunk()) is not None:
            yield chunk

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._connection is not None:
            self._pool._release(self._connection)  # closed unless read to the end
            self._connection = None
        self._pool._slots.release()


def _lines(headers: Mapping[str, str]) -> str:
    """Header lines; a name or value that would break the request's framing is refused."""
    text = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    if text.count("\n") != len(headers) or text.count("\r") != len(headers):
        raise ValueError(f"an HTTP header name or value contains a line break: {list(headers)}")
    return text


def _decoded(answer: Answer, data: bytes) -> bytes:
    """The body without a compression the server applied although none was asked for."""
    coding = answer.headers.get("content-encoding", "identity")
    if coding in ("gzip", "deflate"):
        try:
            return zlib.decompress(data, zlib.MAX_WBITS | 32)
        except zlib.error as exc:
            raise BadAnswer(f"the {coding} body does not decompress: {exc}") from exc
    return data
