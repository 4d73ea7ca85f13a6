"""lmprog.backends.wire against scripted servers on real sockets: each test's server writes the
bytes a real server could (framings, closes, silences), and the client must read them right."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from lmprog.backends import wire

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Scripted:
    """A TCP server running `handler` per connection, counting connections and requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.requests: list[bytes] = []
        self.disconnected = asyncio.Event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """The next request's body; the whole request is kept in `requests`."""
        head, body = await read_request(reader)
        self.requests.append(head + body)
        return body


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request from the socket: (head, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


def replying_once(raw: bytes, linger: float = 0.0) -> Handler:
    """A handler that reads one request, writes `raw`, and keeps the socket `linger` s more."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(linger)

    return handler


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[Scripted, wire.HttpPool]]]]:
    servers: list[asyncio.Server] = []
    pools: list[wire.HttpPool] = []

    async def start(handler: Handler, **options: float) -> tuple[Scripted, wire.HttpPool]:
        scripted = Scripted(handler)
        server = await asyncio.start_server(scripted._serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        settings = {"connect_timeout": 5.0, "read_timeout": 5.0, **options}
        limit = int(settings.pop("limit", 256))
        pool = wire.HttpPool(
            f"http://127.0.0.1:{port}/prefix",
            {"Content-Type": "application/json"},
            limit=limit,
            **settings,
        )
        pools.append(pool)
        return scripted, pool

    yield start
    for pool in pools:
        await pool.close()
    for server in servers:
        server.close()


def answer(body: bytes, *, status: str = "200 OK", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def test_a_kept_alive_connection_carries_the_next_request(serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await scripted.read_request(reader)
            writer.write(answer(b'{"echo": ' + body + b"}", extra="X-Session-Token: abc\r\n"))

    scripted, pool = await serve(handler)
    for n in range(3):
        got, data = await pool.request("POST", "/generate", b"%d" % n, {"X-Trace": "t"})
        assert (got.status, data) == (200, b'{"echo": %d}' % n)
        assert got.headers["x-session-token"] == "abc"  # names lower-cased
    assert scripted.connections == 1
    first = scripted.requests[0]
    assert first.startswith(b"POST /prefix/generate HTTP/1.1\r\n")
    assert b"\r\nX-Trace: t\r\n" in first and b"\r\nContent-Length: 1\r\n" in first


async def test_chunked_and_read_to_close_bodies_are_read_whole(serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.read_request(reader)
        if len(scripted.requests) == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b'{"a":', b" 1}"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await scripted.read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nto the end")  # no length: ends at the close
        await writer.drain()

    scripted, pool = await serve(handler)
    assert (await pool.request("GET", "/a"))[1] == b'{"a": 1}'
    assert (await pool.request("GET", "/b"))[1] == b"to the end"
    assert (await pool.request("GET", "/c"))[1] == b"to the end"
    assert scripted.connections == 2  # a read-to-close answer's connection is not reused


async def test_connection_close_is_honoured(serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.read_request(reader)
        writer.write(answer(b"{}", extra="Connection: close\r\n"))
        await writer.drain()
        await asyncio.sleep(0.2)  # the client must not reuse it meanwhile

    scripted, pool = await serve(handler)
    for _ in range(2):
        await pool.request("GET", "/")
    assert scripted.connections == 2


async def test_an_idle_connection_the_server_closed_is_replaced_unseen(serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.read_request(reader)
        writer.write(answer(b"{}"))
        await writer.drain()
        if scripted.connections == 1:
            await reader.read(1)  # the server drops the connection once the next request comes

    scripted, pool = await serve(handler)
    await pool.request("POST", "/", b"1")
    got, _ = await pool.request("POST", "/", b"2")  # reused, dropped, sent again
    assert got.status == 200 and scripted.connections == 2


async def test_a_connection_dropped_before_the_answer_fails(serve) -> None:
    _, pool = await serve(replying_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"))
    with pytest.raises(wire.ConnectionFailed, match="closed the connection"):
        await pool.request("GET", "/")


async def test_silence_is_a_read_timeout_and_a_refused_port_a_failed_connection(serve) -> None:
    started_answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n"
    _, pool = await serve(replying_once(started_answer, linger=10), read_timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(wire.ReadTimeout, match=r"0\.3s"):
        await pool.request("GET", "/")
    assert loop.time() - started < 2.0

    nobody = wire.HttpPool("http://127.0.0.1:9", {}, connect_timeout=5.0, read_timeout=5.0)
    with pytest.raises(wire.ConnectionFailed):
        await nobody.request("GET", "/")


async def test_bytes_that_are_not_http_are_a_bad_answer(serve) -> None:
    _, pool = await serve(replying_once(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", linger=1))
    with pytest.raises(wire.BadAnswer, match="not valid HTTP"):
        await pool.request("GET", "/")


async def test_a_stream_hands_over_each_chunk_as_it_comes(serve) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndata:1\r\n")
        await writer.drain()
        await release.wait()  # the second chunk only after the client read the first
        writer.write(b"6\r\ndata:2\r\n0\r\n\r\n")
        await writer.drain()
        await scripted.read_request(reader)
        writer.write(answer(b"again"))

    scripted, pool = await serve(handler)
    stream = pool.stream("POST", "/generate", b"{}")
    seen = []
    async with stream as got:
        assert got.status == 200
        async for chunk in stream:
            seen.append(chunk)
            release.set()
    assert seen == [b"data:1", b"data:2"]
    assert (await pool.request("GET", "/"))[1] == b"again"  # read to the end: reused
    assert scripted.connections == 1


async def test_cancelling_a_request_closes_its_connection(serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.read_request(reader)
        if scripted.connections == 1:
            await reader.read(1)  # returns when the client hangs up
            scripted.disconnected.set()
            return
        writer.write(answer(b"{}"))
        await writer.drain()

    scripted, pool = await serve(handler)
    task = asyncio.ensure_future(pool.request("POST", "/generate", b"{}"))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(scripted.disconnected.wait(), 2.0)  # an engine would stop generating
    assert (await pool.request("GET", "/"))[0].status == 200


async def test_at_most_limit_connections_are_open(serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await scripted.read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(answer(b"{}"))

    scripted, pool = await serve(handler, limit=2)
    await asyncio.gather(*(pool.request("GET", "/") for _ in range(8)))
    assert scripted.most_open == 2


async def test_a_connection_idle_past_keepalive_is_not_reused(serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await scripted.read_request(reader)
            writer.write(answer(b"{}"))

    scripted, pool = await serve(handler, keepalive=0.1)
    await pool.request("GET", "/")
    await asyncio.sleep(0.3)
    await pool.request("GET", "/")
    assert scripted.connections == 2


async def test_a_compressed_body_is_decompressed(serve) -> None:
    compressed = answer(gzip.compress(b'{"ok": true}'), extra="Content-Encoding: gzip\r\n")
    _, pool = await serve(replying_once(compressed))
    assert (await pool.request("GET", "/"))[1] == b'{"ok": true}'


def test_a_header_with_a_line_break_is_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        wire.HttpPool(
            "http://127.0.0.1:1",
            {"Authorization": "Bearer x\r\nEvil: 1"},
            connect_timeout=1.0,
            read_timeout=1.0,
        )
    with pytest.raises(ValueError, match="not an http"):
        wire.HttpPool("ftp://example.com", {}, connect_timeout=1.0, read_timeout=1.0)


async def test_https_is_spoken_with_the_given_authority_and_refused_without_it() -> None:
    import ssl

    import trustme

    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    authority.configure_trust(client_tls)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(answer(b'{"secure": true}' if head else b""))
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    trusted = wire.HttpPool(
        f"https://127.0.0.1:{port}", {}, connect_timeout=5.0, read_timeout=5.0, tls=client_tls
    )
    untrusted = wire.HttpPool(
        f"https://127.0.0.1:{port}", {}, connect_timeout=5.0, read_timeout=5.0
    )
    try:
        for _ in range(2):
            assert (await trusted.request("GET", "/"))[1] == b'{"secure": true}'
        with pytest.raises(wire.Untrusted, match=r"not trusted here.*SSL_CERT_FILE"):
            await untrusted.request("GET", "/")  # the system's authorities do not know it
    finally:
        await trusted.close()
        await untrusted.close()
        server.close()


async def test_json_client_reads_what_python_servers_write_beyond_json(serve) -> None:
    """orjson reads answers first; NaN and Infinity (Python's json writes them) and text that
    is not UTF-8 still read as json reads them."""
    from lmprog.backends.http import JsonClient, Secret

    bodies = [b'{"logprob": -Infinity, "x": NaN}', b'{"text": "caf\xe9"}', b'{"ok": 1}']

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while bodies:
            await scripted.read_request(reader)
            writer.write(answer(bodies.pop(0)))

    scripted, pool = await serve(handler)
    client = JsonClient(f"http://127.0.0.1:{pool._port}", "the test server", 5.0, Secret(None))
    try:
        first = await client.post("/generate", {})
        assert first["logprob"] == float("-inf") and first["x"] != first["x"]  # NaN
        assert await client.post("/generate", {}) == {"text": "caf\ufffd"}
        assert await client.get("/health") == {"ok": 1}
    finally:
        await client.aclose()
