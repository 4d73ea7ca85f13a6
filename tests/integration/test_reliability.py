"""Load, faults and cancellation against real local servers. Each test is bounded in time and
records its figures for docs/reliability.md."""

from __future__ import annotations

import _thread
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.fake_openai import ANSWER, FakeOpenAI
from support.models import tiny_model_gguf
from support.reliability import record

import lmprog as lp

pytestmark = pytest.mark.engine

SUPPORT = Path(__file__).resolve().parents[1] / "support"


@lp.function
def ask(s, i):
    s += f"question {i}:" + lp.gen("answer", max_tokens=8)


@lp.function
async def ask_async(s, i):
    s += f"question {i}:" + lp.gen("answer", max_tokens=8)
    return await s.aget("answer")


# ----- load --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_server_process() -> Iterator[str]:
    """The zero-latency server in a process of its own, so it adds no threads or sockets to
    the process under measurement."""
    process = subprocess.Popen(
        [sys.executable, str(SUPPORT / "fake_openai.py")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=SUPPORT.parent,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    yield url
    process.terminate()
    process.wait(timeout=10)


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def _sockets_to(port: int) -> int:
    """This process's TCP connections to `port` (its socket inodes, matched in /proc/net/tcp)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    with open("/proc/self/net/tcp") as table:
        for row in list(table)[1:]:
            fields = row.split()
            if int(fields[2].split(":")[1], 16) == port and fields[9] in inodes:
                count += 1
    return count


class _Peak:
    """Samples RSS and connections to the server every 20 ms while a load runs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.rss, self.sockets = _rss_mb(), _sockets_to(port)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.rss = max(self.rss, _rss_mb())
            self.sockets = max(self.sockets, _sockets_to(self.port))

    def __enter__(self) -> _Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_load_of_10000_programs(fake_server_process: str, kind: str) -> None:
    backend = lp.OpenAI("fake", base_url=fake_server_process, max_retries=0)
    items = [(i,) for i in range(10_000)]
    lp.loop.get_loop()  # start lmprog's thread before counting threads
    port = int(fake_server_process.rsplit(":", 1)[1].split("/")[0])
    threads, rss = threading.active_count(), _rss_mb()
    started = time.perf_counter()
    with _Peak(port) as peak:
        if kind == "sync":
            states = ask.run_batch(items, backend=backend, max_concurrency=64)
        else:
            states = lp.loop.wait(ask_async.arun_batch(items, backend=backend, max_concurrency=64))
    elapsed = time.perf_counter() - started
    lp.loop.wait(backend.aclose())
    assert len(states) == 10_000
    assert all(s.error() is None and s["answer"] == ANSWER for s in states)
    # lmprog's fixed pool for blocking helpers (host-name lookups) is all that may appear
    assert threading.active_count() <= threads + lp.loop.EXECUTOR_THREADS
    assert peak.sockets <= 64 + 8  # bounded by max_concurrency, not by the batch
    assert _sockets_to(port) == 0  # a clean shutdown closes every connection
    growth = peak.rss - rss
    assert growth < 600
    record(
        f"load: 10,000 {kind} programs",
        f"10,000 programs through `{'run_batch' if kind == 'sync' else 'arun_batch'}` "
        f"(max_concurrency 64) against a local zero-latency server in {elapsed:.1f} s "
        f"({10_000 / elapsed:,.0f} programs/s); peak RSS +{growth:.0f} MB; at most "
        f"{peak.sockets} connections to the server open at once, 0 after `aclose()`; "
        f"threads {threads} before and {threading.active_count()} after",
    )


# ----- faults ------------------------------------------------------------------------------


def test_zero_latency_server_misbehaving() -> None:
    faults = ["500", "429", "garbage", "truncated", "cut", "slow", "500", "500", "500"]
    with FakeOpenAI() as server:
        server.fail(*faults)
        backend = lp.OpenAI("fake", base_url=server.url, max_retries=2, timeout=1.0)
        started = time.perf_counter()
        states = ask.run_batch([(i,) for i in range(200)], backend=backend, max_concurrency=8)
        elapsed = time.perf_counter() - started
    failed = [s for s in states if s.error() is not None]
    assert all(s["answer"] == ANSWER for s in states if s.error() is None)
    assert all(isinstance(s.error().cause, lp.BackendError) for s in failed)
    assert all("'ask'" in str(s.error()) for s in failed)
    assert len(failed) <= 4  # garbage, truncated, cut, and slow may fail; 5xx/429 are retried
    assert elapsed < 30
    nobody = lp.OpenAI("fake", base_url=f"http://127.0.0.1:{_free_port()}/v1", max_retries=1)
    refused = ask.run_batch([(i,) for i in range(5)], backend=nobody)
    assert all(isinstance(s.error().cause, lp.BackendUnavailableError) for s in refused)
    record(
        "faults: zero-latency server misbehaving",
        f"200 programs, faults injected: {', '.join(sorted(set(faults)))} ({len(faults)} in "
        f"all); retried: 429 and 5xx; {len(failed)} program(s) failed with a clear error, "
        f"{200 - len(failed)} finished; {elapsed:.1f} s. Plus 5 programs against a refused "
        f"connection: each failed with BackendUnavailableError after 1 retry",
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_llama_server_killed_mid_batch_and_restarted() -> None:
    port = _free_port()
    runtime = lp.Runtime("llama.cpp", tiny_model_gguf(), port=port, slots=4)
    backend = lp.LlamaCpp(runtime.url)
    restarted: list[lp.Runtime] = []

    def kill_and_restart() -> None:
        assert runtime._process is not None
        os.killpg(runtime._process.pid, signal.SIGKILL)
        time.sleep(0.3)
        restarted.append(lp.Runtime("llama.cpp", tiny_model_gguf(), port=port, slots=4))

    @lp.function
    def write(s, i):
        s += f"def f{i}():" + lp.gen("body", max_tokens=48, temperature=0, ignore_eos=True)

    timer = threading.Timer(0.5, kill_and_restart)
    timer.start()
    started = time.perf_counter()
    try:
        states = write.run_batch([(i,) for i in range(40)], backend=backend, max_concurrency=4)
    finally:
        timer.join()
        runtime.shutdown()
        for server in restarted:
            server.shutdown()
    elapsed = time.perf_counter() - started
    finished = [s for s in states if s.error() is None]
    failed = [s for s in states if s.error() is not None]
    assert all(len(s["body"]) > 0 for s in finished)
    assert all(isinstance(s.error().cause, lp.BackendUnavailableError) for s in failed)
    assert len(finished) >= 36  # retries with backoff carry programs over the restart
    assert elapsed < 60
    record(
        "faults: llama-server killed mid-batch and restarted",
        f"40 programs, max_concurrency 4; llama-server SIGKILLed 0.5 s in and restarted on "
        f"the same port; {len(finished)} finished (in-flight requests retried with backoff), "
        f"{len(failed)} failed with a clear error; {elapsed:.1f} s",
    )


def test_ctrl_c_cancels_in_flight_requests() -> None:
    @lp.function
    def long(s, i):
        s += f"def f{i}():" + lp.gen("body", max_tokens=1500, temperature=0, ignore_eos=True)

    with lp.Runtime("llama.cpp", tiny_model_gguf(), slots=4, threads=1) as runtime:
        backend = lp.LlamaCpp(runtime.url)
        lp.loop.wait(backend.props())
        timer = threading.Timer(1.0, _thread.interrupt_main)
        timer.start()
        started = time.perf_counter()
        with pytest.raises(lp.BatchInterrupted) as info:
            long.run_batch([(i,) for i in range(12)], backend=backend, max_concurrency=4)
        returned = time.perf_counter() - started - 1.0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            slots = httpx.get(f"{runtime.url}/slots", timeout=5).json()
            if not any(slot["is_processing"] for slot in slots):
                break
            time.sleep(0.05)
        idle_after = time.monotonic() - (deadline - 5)
    assert returned < 1.0
    assert not any(slot["is_processing"] for slot in slots)
    kept = [s for s in info.value.states if s is not None and s.error() is None]
    assert all(len(s["body"]) > 0 for s in kept)
    record(
        "cancellation: Ctrl-C during run_batch on llama-server",
        f"12 long programs, 4 in flight; Ctrl-C after 1 s: `run_batch` raised "
        f"`BatchInterrupted` {returned:.2f} s later with {len(kept)} finished results kept; "
        f"the server's slots were all idle {idle_after:.2f} s after that",
    )
