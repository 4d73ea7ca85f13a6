"""A zero-latency server for frontend-overhead benchmarks: it answers instantly, it is not a model.

It speaks what the benchmarked tools send: vLLM's flavour of the OpenAI API (`/version` makes
lmprog treat it as vLLM: `structured_outputs`, `/tokenize`, prompt logprobs) and SGLang's
native `/generate` (for SGLang's RuntimeEndpoint); since lmprog probes for SGLang first, lp.OpenAI
sees an SGLang server, so the OpenAI endpoints also honour SGLang's top-level `regex` and
`json_schema` fields. Plain gens answer ANSWER; a choice
constraint (or a regex alternation) answers its first choice; a JSON schema answers a small
instance of the schema; logprobs are -1 per token. Tokens are whitespace-led words (ids from crc32).

It is one asyncio process with keep-alive HTTP/1.1, so that it costs a small fraction of what a
client spends per request: `python bench/zero_server.py` prints its URL and serves until killed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import zlib
from typing import Any

ANSWER = " hello world"
_WORD = re.compile(r"\s*\S+|\s+")


def tokenize(text: str) -> list[int]:
    return [1] + [_word_id(w) for w in _WORD.findall(text)]


@functools.lru_cache(maxsize=65536)
def _word_id(word: str) -> int:
    return zlib.crc32(word.encode()) % 30000 + 10


def count_tokens(text: str) -> int:
    """len(tokenize(text)), without the ids (what a plain /generate reports)."""
    return 1 + len(_WORD.findall(text))


def instance(schema: dict[str, Any]) -> Any:
    """The smallest value that satisfies the simple schemas the workloads use."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: instance(v) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return [instance(schema.get("items", {}))] * schema.get("minItems", 0)
    simple = {"integer": 1, "number": 1.5, "boolean": True, "null": None}
    return simple.get(str(kind), "x")


def answer(body: dict[str, Any], sampling: dict[str, Any]) -> str:
    structured = body.get("structured_outputs") or {}
    if "choice" in structured:
        return str(structured["choice"][0])
    schema = structured.get("json") or sampling.get("json_schema")
    if schema is not None:
        return json.dumps(instance(json.loads(schema) if isinstance(schema, str) else schema))
    if sampling.get("max_new_tokens") == 0:
        return ""
    if "regex" in sampling:  # lmprog sends choices as an alternation of escaped literals
        return re.sub(r"\\(.)", r"\1", re.split(r"(?<!\\)\|", str(sampling["regex"]))[0])
    return ANSWER


def completions(body: dict[str, Any]) -> dict[str, Any]:
    prompts = body.get("prompt", "")
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    choices = []
    for index, prompt in enumerate(prompts):
        choice: dict[str, Any] = {
            "index": index,
            "text": answer(body, body),
            "finish_reason": "stop",
        }
        if body.get("prompt_logprobs") is not None:
            ids = prompt if isinstance(prompt, list) else tokenize(prompt)
            choice["prompt_logprobs"] = [None] + [
                {str(i): {"logprob": -1.0, "rank": 1, "decoded_token": " w"}} for i in ids[1:]
            ]
        choices.append(choice)
    return {
        "id": "zero",
        "object": "text_completion",
        "created": 0,
        "model": "zero",
        "choices": choices,
        "usage": _usage(prompts),
    }


def chat(body: dict[str, Any]) -> dict[str, Any]:
    message = {"role": "assistant", "content": answer(body, body)}
    return {
        "id": "zero",
        "object": "chat.completion",
        "created": 0,
        "model": "zero",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": _usage([json.dumps(body.get("messages"))]),
    }


def generate(body: dict[str, Any]) -> Any:
    texts = body.get("text", body.get("input_ids", ""))
    many = isinstance(texts, list) and not (texts and isinstance(texts[0], int))
    results = []
    for index, text in enumerate(texts if many else [texts]):
        logprobs = body.get("return_logprob")
        ids = text if isinstance(text, list) else tokenize(text) if logprobs else None
        meta: dict[str, Any] = {
            "prompt_tokens": len(ids) if ids is not None else count_tokens(text),
            "completion_tokens": 2,
            "cached_tokens": 0,
            "finish_reason": {"type": "stop"},
        }
        if ids is not None and logprobs:
            start = body.get("logprob_start_len", 0)  # one, or one per text
            start = start[index] if isinstance(start, list) else start
            meta["input_token_logprobs"] = [[-1.0, i, " w"] for i in ids[start:]]
            meta["output_token_logprobs"] = []
        results.append({"text": answer(body, body.get("sampling_params", {})), "meta_info": meta})
    return results if many else results[0]


def _usage(prompts: list[Any]) -> dict[str, int]:
    tokens = sum(len(p) if isinstance(p, list) else len(p) // 4 for p in prompts)
    return {"prompt_tokens": tokens, "completion_tokens": 2, "total_tokens": tokens + 2}


ROUTES_GET: dict[str, Any] = {
    "/health": {},
    "/version": {"version": "zero"},
    "/v1/models": {"object": "list", "data": [{"id": "zero", "object": "model"}]},
    "/get_model_info": {"model_path": "zero", "is_generation": True},
}
ROUTES_POST = {
    "/v1/completions": completions,
    "/v1/chat/completions": chat,
    "/generate": generate,
    "/tokenize": lambda body: {"tokens": tokenize(body.get("prompt", "")), "count": 0},
}


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            method, path, _ = head.split(b" ", 2)
            length = 0
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            body = json.loads(await reader.readexactly(length)) if length else {}
            route = path.decode().split("?")[0]
            status, payload = 200, ROUTES_GET.get(route) if method == b"GET" else None
            if method == b"POST" and route in ROUTES_POST:
                payload = ROUTES_POST[route](body)
            if payload is None:
                status, payload = 404, {"error": {"message": f"no route {route}"}}
            data = json.dumps(payload).encode()
            writer.write(
                b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                % (status, len(data))
                + data
            )
            if b"connection: close" in head.lower():
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
