"""Smoke test of a real vLLM server (CPU build, own venv) started by lp.Runtime("vllm").

scripts/setup.sh installs vLLM (backends/vllm/install.sh, ~3 min, ~3.4 GB the first time); the
server needs ~25-50 s to start on 2 cores, so every test shares the session's server.
"""

from __future__ import annotations

import json

import httpx
import pytest

import lmprog as lp

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]

MODEL = "tiny"


def test_completion_returns_text(vllm_server: lp.Runtime) -> None:
    resp = httpx.post(
        f"{vllm_server.url}/v1/completions",
        json={
            "model": MODEL,
            "prompt": "def hello(world):\n    return",
            "max_tokens": 8,
            "temperature": 0,
            "ignore_eos": True,
        },
        timeout=60,
    )
    resp.raise_for_status()
    body = resp.json()
    choice = body["choices"][0]
    assert isinstance(choice["text"], str)
    assert choice["text"]
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 8
    # BOS (id 0) is prepended to text prompts: "<s>" + 13 prompt tokens.
    assert body["usage"]["prompt_tokens"] == 14


def test_regex_is_enforced(vllm_server: lp.Runtime) -> None:
    resp = httpx.post(
        f"{vllm_server.url}/v1/completions",
        json={
            "model": MODEL,
            "prompt": "Answer:",
            "max_tokens": 20,
            "temperature": 0,
            "structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"},
        },
        timeout=60,
    )
    resp.raise_for_status()
    text = resp.json()["choices"][0]["text"]
    assert len(text) == 6 and text[:3].isdigit() and text[3] == "-" and text[4:].isalpha()


def test_models_lists_served_name(vllm_server: lp.Runtime) -> None:
    data = httpx.get(f"{vllm_server.url}/v1/models", timeout=10).json()["data"]
    assert [m["id"] for m in data] == [MODEL]
    assert data[0]["max_model_len"] == 2048


def test_json_schema_is_compact_and_valid(vllm_server: lp.Runtime) -> None:
    schema = {
        "type": "object",
        # Bounded: an unbounded integer lets a random model write digits up to max_tokens.
        "properties": {
            "a": {"type": "integer", "minimum": 0, "maximum": 99},
            "ok": {"type": "boolean"},
        },
        "required": ["a", "ok"],
        "additionalProperties": False,
    }
    resp = httpx.post(
        f"{vllm_server.url}/v1/completions",
        json={
            "model": MODEL,
            "prompt": "Answer:",
            "max_tokens": 40,
            "temperature": 0,
            "structured_outputs": {"json": schema},
        },
        timeout=60,
    )
    resp.raise_for_status()
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert " " not in choice["text"] and "\n" not in choice["text"]
    value = json.loads(choice["text"])
    assert 0 <= value["a"] <= 99
    assert isinstance(value["ok"], bool)
