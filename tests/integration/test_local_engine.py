"""lp.Local's engine on the tiny model: cancellation, isolation of failures, seeded sampling
inside a batch, and errors that say what to do."""

from __future__ import annotations

import _thread
import threading
import time

import pytest

import lmprog as lp

pytestmark = pytest.mark.engine


@lp.function
def long(s, i):
    s += f"def f{i}():" + lp.gen("body", max_tokens=1000, temperature=0, ignore_eos=True)


def test_ctrl_c_stops_the_batch_and_the_engine_drops_its_requests(tiny_local: lp.Local) -> None:
    tiny_local.load()
    timer = threading.Timer(1.0, _thread.interrupt_main)
    timer.start()
    started = time.perf_counter()
    with pytest.raises(lp.BatchInterrupted) as info:
        long.run_batch([(i,) for i in range(40)], backend=tiny_local, max_concurrency=8)
    returned = time.perf_counter() - started - 1.0
    deadline = time.monotonic() + 5
    while tiny_local.stats()["active_requests"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert returned < 1.0
    assert tiny_local.stats()["active_requests"] == 0
    kept = [s for s in info.value.states if s is not None and s.error() is None]
    assert all(len(s.get_meta_info("body")["finish_reason"]) > 0 for s in kept)


def test_seeded_samples_do_not_depend_on_the_rest_of_the_batch(tiny_local: lp.Local) -> None:
    @lp.function
    def sample(s, seed):
        s += "x = " + lp.gen("v", max_tokens=12, temperature=1.0, seed=seed, ignore_eos=True)

    alone = sample.run(7, backend=tiny_local)["v"]
    crowd = sample.run_batch([(i,) for i in range(8)], backend=tiny_local)
    assert crowd[7]["v"] == alone
    assert len({s["v"] for s in crowd}) > 4


def test_a_prompt_longer_than_the_context_fails_alone(tiny_local: lp.Local) -> None:
    @lp.function
    def prog(s, words):
        s += "word " * words + lp.gen("v", max_tokens=4, temperature=0)

    states = prog.run_batch([(5,), (100_000,), (5,)], backend=tiny_local)
    assert states[0].error() is None and states[2].error() is None
    error = states[1].error()
    assert error is not None and "context" in str(error) and "gen('v')" in str(error)


def test_no_request_is_active_once_every_answer_is_in(
    tiny_local: lp.Local, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request leaves `active_requests` before its answer is delivered. The engine gives a
    finished row's KV to the radix cache after answering it (slowed down here); counting the
    rows still in the batch once showed a finished batch as 6 active requests."""

    @lp.function
    def short(s, i):
        s += f"x{i} = " + lp.gen("v", max_tokens=2, temperature=0, ignore_eos=True)

    tiny_local.load()
    engine = tiny_local._loaded.engine  # type: ignore[union-attr]
    retire = engine._retire

    def slow_retire(*args: object) -> None:
        time.sleep(0.5)
        retire(*args)

    monkeypatch.setattr(engine, "_retire", slow_retire)
    states = short.run_batch([(i,) for i in range(6)], backend=tiny_local)
    assert all(s.error() is None for s in states)
    assert tiny_local.stats()["active_requests"] == 0
