"""A real local OpenAI-compatible HTTP server that answers instantly and misbehaves on command.

Not a model: it answers every completion with a fixed text. It exists to inject faults over a
real socket (refusals aside): HTTP 500s, 429 with Retry-After, a stream cut in the middle, a
body that is not JSON, a response slower than the client's timeout. Tests queue the faults with
`server.fail(...)`; each request takes the next one, and "ok" when the queue is empty.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = "hello world"


class FakeOpenAI:
    """`with FakeOpenAI() as server:` serves on 127.0.0.1 (`server.url` ends in /v1)."""

    def __init__(self, identity: str = "") -> None:
        self.identity = identity  # "sglang": also answer SGLang's /get_model_info
        self.faults: deque[str] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def fail(self, *faults: str) -> None:
        """Queue faults: "500", "429", "cut" (reset mid-stream), "garbage" (not JSON),
        "truncated" (a body shorter than announced), "slow" (3 s), or "ok"."""
        with self._lock:
            self.faults.extend(faults)

    def next_fault(self, body: dict[str, Any], headers: dict[str, str]) -> str:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            return self.faults.popleft() if self.faults else "ok"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog (5) refuses bursts of new connections


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        return

    def setup(self) -> None:
        super().setup()
        # Headers and body are separate writes: without this, Nagle's algorithm and delayed
        # ACKs add ~40 ms to every answer and the "zero-latency" server is not.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        if self.path == "/get_server_info" and self.fake.identity == "sglang":
            self._json(200, {"version": "0.5.10", "tp_size": 1})
        elif self.path == "/get_model_info" and self.fake.identity == "sglang":
            self._json(200, {"model_path": "/nonexistent", "is_generation": True})
        elif self.path.endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        fault = self.fake.next_fault(body, dict(self.headers))
        if fault == "500":
            self._json(500, {"error": {"message": "internal error (injected)"}})
        elif fault == "429":
            self._json(429, {"error": {"message": "slow down (injected)"}}, {"Retry-After": "0.2"})
        elif fault == "garbage":
            self._raw(200, b"<html>this is not json</html>", "application/json")
        elif fault == "truncated":  # promises 500 bytes, sends 20, hangs up
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", "500")
            self.end_headers()
            self.wfile.write(json.dumps(self._completion(body)).encode()[:20])
            self.wfile.flush()
            self.close_connection = True
        elif fault == "slow":
            time.sleep(3)
            self._json(200, self._completion(body))
        elif body.get("stream"):
            self._stream(body, cut=fault == "cut")
        else:
            self._json(200, self._completion(body))

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        chat = "messages" in body
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": ANSWER}
            kind = "chat.completion"
        else:
            choice["text"] = ANSWER
            kind = "text_completion"
        return {
            "id": "x",
            "object": kind,
            "created": 0,
            "model": body.get("model", "fake"),
            "choices": [choice],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        }

    def _stream(self, body: dict[str, Any], cut: bool) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        chat = "messages" in body
        for word in ANSWER.split(" "):
            piece = word if word == "hello" else " " + word
            delta = {"delta": {"content": piece}} if chat else {"text": piece}
            chunk = {"id": "x", "object": "chunk", "created": 0, "model": "fake",
                     "choices": [{"index": 0, "finish_reason": None, **delta}]}  # fmt: skip
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            if cut:  # the connection is reset mid-stream (RST, not a clean close)
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
                self.close_connection = True
                return
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._raw(status, json.dumps(payload).encode(), "application/json", headers)

    def _raw(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":  # a server in its own process, for load tests: prints its URL
    with FakeOpenAI() as fake:
        print(fake.url, flush=True)
        threading.Event().wait()
