"""A local HTTP server that speaks SGLang's documented `/generate` contract (ENGINES.md).

Not a model, and it enforces nothing: SGLang's runtime cannot be installed here, so this
checks that lp.SGLang sends what the contract says and reads what it answers. Tokens are
characters (id = code point + 10, BOS id 1 with a null logprob); a character's logprob is
-(code point % 10) / 10 - 0.05, so scores are predictable. `/generate` answers ANSWER, cut to
`max_new_tokens` characters; streaming sends the cumulative text, then `[DONE]`.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = "Paris is lovely"


def char_logprob(char: str) -> float:
    return -(ord(char) % 10) / 10 - 0.05


class FakeSGLang:
    def __init__(
        self,
        model_path: str = "/nonexistent",
        port: int = 0,
        chat_template: str | None = None,
        model_type: str = "llama",
    ) -> None:
        self.model_path = model_path
        self.chat_template = chat_template  # as given to --chat-template (a path or a name)
        self.model_type = model_type
        self.requests: list[dict[str, Any]] = []
        self.prompt_token_surplus = 0  # >0: prompt_tokens overstated (a client must cope)
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeSGLang:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeSGLang
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        if self.path == "/get_model_info":
            self._json(
                {
                    "model_path": self.fake.model_path,
                    "is_generation": True,
                    "model_type": self.fake.model_type,
                    "architectures": [self.fake.model_type.capitalize() + "ForCausalLM"],
                }
            )
        elif self.path == "/get_server_info":
            # the real server: its launch arguments (chat_template among them) and version
            self._json(
                {
                    "version": "stand-in",
                    "model_path": self.fake.model_path,
                    "chat_template": self.fake.chat_template,
                }
            )
        elif self.path == "/health":
            self._json({})
        else:
            self._json({"error": "not found"}, 404)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        self.fake.requests.append(body)
        if self.path == "/flush_cache":
            self._json({})
            return
        texts = body["text"]
        many = texts if isinstance(texts, list) else [texts]
        results = [self._result(t, body, i) for i, t in enumerate(many)]
        if body.get("stream"):
            self._stream(results[0])
        else:
            self._json(results if isinstance(texts, list) else results[0])

    def _result(self, text: str, body: dict[str, Any], index: int) -> dict[str, Any]:
        limit = body.get("sampling_params", {}).get("max_new_tokens", 128)
        output = ANSWER[:limit]
        meta: dict[str, Any] = {
            "prompt_tokens": len(text) + 1 + self.fake.prompt_token_surplus,
            "completion_tokens": len(output),
            "cached_tokens": max(0, len(text) - 4),
            "finish_reason": {"type": "length" if limit < len(ANSWER) else "stop"},
        }
        if body.get("return_logprob"):
            start = body.get("logprob_start_len", len(text))  # one, or one per text
            start = start[index] if isinstance(start, list) else start
            tokens = [[None, 1, "<s>"]] + [[char_logprob(c), ord(c) + 10, c] for c in text]
            meta["input_token_logprobs"] = tokens[start:]
            meta["output_token_logprobs"] = [[char_logprob(c), ord(c) + 10, c] for c in output]
        return {"text": output, "meta_info": meta}

    def _stream(self, result: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        text = result["text"]
        for end in range(3, len(text) + 3, 3):  # cumulative, as SGLang streams
            meta = dict(result["meta_info"])
            if "output_token_logprobs" in meta:  # one character is one token here
                meta["output_token_logprobs"] = meta["output_token_logprobs"][:end]
            chunk = {"text": text[:end], "meta_info": meta}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True

    def _json(self, payload: Any, status: int = 200) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":  # as a stand-in for `python -m sglang.launch_server ... --port P`
    import sys
    import time

    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1])
    with FakeSGLang(args[args.index("--model-path") + 1], port=port):
        time.sleep(3600)
