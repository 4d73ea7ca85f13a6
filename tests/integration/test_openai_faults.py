"""lp.OpenAI against a real local server that misbehaves: retried where safe, a clear error
otherwise, nothing lost in a batch, and the API key never shown."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from support.fake_openai import ANSWER, FakeOpenAI
from support.reliability import record

import lmprog as lp

SECRET = "sk-test-SECRET-do-not-print-1234"


@lp.function
def ask(s, i):
    s += f"question {i}:" + lp.gen("answer", max_tokens=8)


@pytest.fixture
def server():
    with FakeOpenAI() as fake:
        yield fake


def backend_for(server: FakeOpenAI, **kwargs) -> lp.OpenAI:
    return lp.OpenAI("fake", base_url=server.url, api_key=SECRET, **kwargs)


def test_refused_connection_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens
    backend = lp.OpenAI("fake", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1)
    started = time.perf_counter()
    error = ask.run(0, backend=backend).error()
    assert isinstance(error.cause, lp.BackendUnavailableError)
    assert "'ask'" in str(error) and "gen('answer')" in str(error)
    assert time.perf_counter() - started < 15


def test_5xx_bursts_are_retried(server: FakeOpenAI) -> None:
    server.fail("500", "500")
    state = ask.run(0, backend=backend_for(server, max_retries=3))
    assert state["answer"] == ANSWER
    completions = [r for r in server.requests if "prompt" in r]
    assert len(completions) == 3


def test_5xx_past_the_retry_cap_is_a_clear_error(server: FakeOpenAI) -> None:
    server.fail("500", "500", "500")
    error = ask.run(0, backend=backend_for(server, max_retries=2)).error()
    assert isinstance(error.cause, lp.BackendResponseError)
    assert error.cause.status_code == 500
    assert "internal error (injected)" in str(error)


def test_429_waits_for_retry_after(server: FakeOpenAI) -> None:
    server.fail("429")
    started = time.perf_counter()
    state = ask.run(0, backend=backend_for(server))
    assert state["answer"] == ANSWER
    assert time.perf_counter() - started >= 0.2


def test_a_stream_cut_midway_is_an_error_and_the_batch_goes_on(server: FakeOpenAI) -> None:
    backend = backend_for(server, max_retries=0)

    @lp.function
    def streamed(s, i):
        s += f"q{i}:" + lp.gen("answer", max_tokens=8)

    server.fail("cut")
    first = streamed.run(0, backend=backend, stream=True)
    assert "".join(first.text_iter()) == first.text()
    assert isinstance(first.error().cause, lp.BackendError)
    states = ask.run_batch([(i,) for i in range(10)], backend=backend)
    assert [s["answer"] for s in states] == [ANSWER] * 10


def test_a_body_that_is_not_json_is_a_clear_error(server: FakeOpenAI) -> None:
    server.fail("garbage")
    error = ask.run(0, backend=backend_for(server, max_retries=0)).error()
    assert isinstance(error.cause, lp.BackendError)
    assert "'ask'" in str(error)


def test_a_slow_server_times_out(server: FakeOpenAI) -> None:
    server.fail("slow")
    error = ask.run(0, backend=backend_for(server, timeout=0.5, max_retries=0)).error()
    assert isinstance(error.cause, lp.BackendTimeoutError)


def test_faults_in_a_batch_lose_nothing(server: FakeOpenAI) -> None:
    server.fail("ok", "500", "ok", "garbage", "ok", "429")
    states = ask.run_batch([(i,) for i in range(30)], backend=backend_for(server, max_retries=0))
    failed = [s for s in states if s.error() is not None]
    assert len(states) == 30
    assert len(failed) <= 3
    assert all(s["answer"] == ANSWER for s in states if s.error() is None)


def test_the_api_key_is_never_shown(server: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    backend = backend_for(server, max_retries=1)
    server.fail("500", "500")
    state = ask.run(0, backend=backend)
    shown = [repr(backend), str(backend), repr(state), str(state.error()), state.text()]
    shown += [str(vars(backend)), caplog.text]
    assert all(SECRET not in text for text in shown)
    sent = server.headers[-1].get("Authorization") or server.headers[-1].get("authorization")
    assert sent == f"Bearer {SECRET}"  # it was used, only never shown
    record(
        "secrets",
        f"an API key sent to a real local server (seen in its Authorization header) appeared "
        f"in none of {len(shown)} places: backend repr/str/vars, program state repr, the "
        f"error, the text, and DEBUG logs of the run (also checked for lp.LlamaCpp)",
    )


def test_llamacpp_backend_never_shows_its_key() -> None:
    backend = lp.LlamaCpp("http://127.0.0.1:9", api_key=SECRET)
    error = ask.run(0, backend=backend).error()
    shown = [repr(backend), str(vars(backend)), str(vars(backend._http)), str(error)]
    assert all(SECRET not in text for text in shown)
