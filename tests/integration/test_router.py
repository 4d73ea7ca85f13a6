"""SGLang's router (`smg`) in front of two real llama-servers (the tiny model), started by
lp.Runtime: the program suite runs through it, a program's routing key keeps its requests on
one worker, cache-aware routing with the key computes fewer prompt tokens than round robin
(the workers' own counters), a worker killed mid-batch loses no result, and no Runtime form
leaves a process behind."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from support.models import tiny_model_gguf
from support.processes import alive
from test_program_suite import (
    CONSTRAINED,
    Tag,
    test_async_programs,
    test_batch_of_120_programs,
    test_few_shot_text_is_exact,
    test_fork_join_with_concurrent_branches,
    test_grammar_is_enforced,
    test_greedy_output_equals_a_raw_request,
    test_invalid_regex_fails_before_any_request,
    test_multi_turn_roles,
    test_select_by_constrained_decoding_is_the_constrained_gen,
    test_select_drives_control_flow,
    test_streaming_chunks_add_up_to_the_final_text,
)

import lmprog as lp

pytestmark = pytest.mark.engine

SUITE = (  # the program suite's tests, run here on the router (the `backend` fixture below)
    test_async_programs,
    test_batch_of_120_programs,
    test_few_shot_text_is_exact,
    test_fork_join_with_concurrent_branches,
    test_grammar_is_enforced,
    test_greedy_output_equals_a_raw_request,
    test_invalid_regex_fails_before_any_request,
    test_multi_turn_roles,
    test_select_by_constrained_decoding_is_the_constrained_gen,
    test_select_drives_control_flow,
    test_streaming_chunks_add_up_to_the_final_text,
)


def _worker() -> lp.Runtime:
    # one thread each: two tiny servers on a busy 2-core machine (see conftest's tiny_server)
    return lp.Runtime(
        "llama.cpp", tiny_model_gguf(), slots=2, ctx_per_slot=4096, threads=1, metrics=True
    )


@pytest.fixture(scope="module")
def workers() -> Iterator[list[lp.Runtime]]:
    started = [_worker(), _worker()]
    yield started
    for worker in started:
        worker.shutdown()


@pytest.fixture(scope="module")
def router(workers: list[lp.Runtime]) -> Iterator[lp.Runtime]:
    with lp.Runtime("sglang-router", workers=[w.url for w in workers]) as runtime:
        yield runtime


@pytest.fixture
def backend(router: lp.Runtime) -> lp.Backend:
    return router


@pytest.fixture
def raw_completion(router: lp.Runtime) -> Callable[[str, int], str]:
    """Greedy text straight from the router's OpenAI endpoint, without lmprog."""

    def complete(prompt: str, max_tokens: int) -> str:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        reply = httpx.post(f"{router.url}/v1/completions", json=body, timeout=120).json()
        return str(reply["choices"][0]["text"])

    return complete


def computed_prompt_tokens(workers: list[lp.Runtime]) -> list[int]:
    """Prompt tokens each worker evaluated (not served from its cache), from its /metrics."""
    counts = []
    for worker in workers:
        metrics = httpx.get(worker.url + "/metrics", timeout=10).text
        found = re.search(r"^llamacpp:prompt_tokens_total (\S+)$", metrics, re.M)
        assert found, metrics[:500]
        counts.append(int(float(found.group(1))))
    return counts


# ----- the program suite, through the router ----------------------------------------------------

NO_SCHEMA = [(kwargs, kind) for kwargs, kind in CONSTRAINED if kind not in (Tag, list, dict)]


@pytest.mark.parametrize(("kwargs", "python_type"), NO_SCHEMA)
def test_constraints_the_router_passes_are_enforced(
    router: lp.Runtime, kwargs: dict[str, object], python_type: type
) -> None:
    @lp.function
    def constrained(s, seed):
        s += f"value {seed}: " + lp.gen("v", max_tokens=400, temperature=1.0, seed=seed, **kwargs)

    states = constrained.run_batch([(seed,) for seed in range(8)], backend=router)
    for state in states:
        assert state.error() is None, state.error()
        assert isinstance(state["v"], python_type)
    if "regex" in kwargs:
        assert all(re.fullmatch(str(kwargs["regex"]), s["v"]) for s in states)


def test_a_json_schema_to_llama_server_workers_is_refused_with_the_cause(
    router: lp.Runtime,
) -> None:
    @lp.function
    def tagged(s):
        s += "tag: " + lp.gen("t", type=Tag, max_tokens=60)

    error = tagged.run(backend=router).error()
    assert isinstance(error, lp.ProgramError)
    assert isinstance(error.__cause__, lp.UnsupportedFeatureError)
    assert "json_schema" in str(error) and "as a string" in str(error)


def test_the_cache_report_reads_the_workers_cached_tokens(router: lp.Runtime) -> None:
    @lp.function
    def turns(s):
        s += "def shared_helper():\n" + "    value = 1\n" * 40
        for i in range(3):
            s += f"# turn {i}\n" + lp.gen(f"t{i}", max_tokens=8, temperature=0)

    state = turns.run(backend=router)
    assert state.error() is None
    rows = list(state._execution.all_requests())
    assert len(rows) == 3 and all(r.cached_tokens is not None for r in rows), rows
    assert all(r.cached_tokens > r.prompt_tokens / 2 for r in rows[1:]), rows  # type: ignore[operator]


# ----- program affinity ---------------------------------------------------------------------


def test_a_programs_key_keeps_all_its_requests_on_one_worker(workers: list[lp.Runtime]) -> None:
    """The manual policy routes by X-SMG-Routing-Key alone: each program's turns, fork
    branches and select land on one worker, and programs spread over both."""

    @lp.function
    def program(s, i):
        s += f"program {i}\n"
        for turn in range(3):
            s += f"turn {turn}: " + lp.gen(max_tokens=4, temperature=0) + "\n"
        branches = s.fork(2)
        for branch in branches:
            branch += lp.gen(max_tokens=4, temperature=0)
        branches.join()
        s += lp.select("pick", ["yes", "no"])

    with lp.Runtime("sglang-router", workers=[w.url for w in workers], policy="manual") as router:
        served = []
        for i in range(10):  # keys go to workers at random: all on one, 1 time in 512
            before = computed_prompt_tokens(workers)
            assert program.run(i, backend=router).error() is None
            after = computed_prompt_tokens(workers)
            served.append(tuple(b != a for b, a in zip(before, after, strict=True)))
    assert all(sum(used) == 1 for used in served), served  # one worker per program
    assert len(set(served)) == 2, served  # and not the same one for all


def test_cache_aware_with_the_key_computes_fewer_prompt_tokens_than_round_robin(
    workers: list[lp.Runtime],
) -> None:
    """Shared-prefix multi-turn programs, run once per policy with a prefix no worker has
    seen; the workers' own counters say how many prompt tokens they computed."""
    computed = {}
    for policy in ("round_robin", "cache_aware"):

        @lp.function
        def chat(s, i, prefix):
            s += prefix + f"# session {i}\n"
            for turn in range(4):
                s += f"# turn {turn}\n" + lp.gen(max_tokens=16, temperature=0, ignore_eos=True)

        prefix = f"# policy {policy}\n" + "".join(f"x_{policy}_{n} = {n}\n" for n in range(60))
        with lp.Runtime("sglang-router", workers=[w.url for w in workers], policy=policy) as rt:
            before = sum(computed_prompt_tokens(workers))
            states = chat.run_batch([(i, prefix) for i in range(8)], backend=rt)
            assert all(s.error() is None for s in states)
            computed[policy] = sum(computed_prompt_tokens(workers)) - before
    print(f"prompt tokens computed: {computed}")
    assert computed["cache_aware"] < 0.85 * computed["round_robin"], computed


# ----- failover ------------------------------------------------------------------------------


def test_a_worker_killed_mid_batch_loses_no_result() -> None:
    @lp.function
    def long_program(s, i):
        s += f"def task_{i}():\n"
        for turn in range(3):
            s += lp.gen(f"t{turn}", max_tokens=48, temperature=0, ignore_eos=True)

    with lp.Runtime(
        "llama.cpp", tiny_model_gguf(), replicas=2, slots=2, threads=1, metrics=True
    ) as router:
        victim = router._workers[1]
        assert victim._process is not None
        [engine] = _children(victim._process.pid)  # the guard's llama-server
        killed = threading.Event()

        def kill_when_busy() -> None:
            while computed_prompt_tokens([victim])[0] == 0:
                time.sleep(0.02)
            victim._process.send_signal(signal.SIGKILL)  # the guard: the kernel kills its engine
            killed.set()

        killer = threading.Thread(target=kill_when_busy)
        killer.start()
        states = long_program.run_batch([(i,) for i in range(40)], backend=router)
        killer.join(timeout=30)
        assert killed.is_set()
        assert [s.error() for s in states] == [None] * 40
        assert all(len(s["t2"]) > 0 for s in states)
    deadline = time.monotonic() + 10
    while alive(engine) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(engine)  # a killed guard leaves no orphaned engine


# ----- no process left behind ----------------------------------------------------------------


def test_no_runtime_form_leaves_a_process_when_the_program_raises(
    workers: list[lp.Runtime],
) -> None:
    @lp.function
    def broken(s):
        s += "x" + lp.gen("a", max_tokens=2)
        raise ValueError("bug in the program")

    pids = []
    with pytest.raises(ValueError), lp.Runtime(
        "sglang-router", workers=[w.url for w in workers]
    ) as router:
        pids.append(router._process.pid)
        assert "bug in the program" in str(broken.run(backend=router).error())
        raise ValueError("leaving the block with an exception")
    with pytest.raises(ValueError), lp.Runtime(
        "llama.cpp", tiny_model_gguf(), replicas=2, slots=1, threads=1
    ) as router:
        started = [router._process.pid, *(w._process.pid for w in router._workers)]
        assert all(alive(pid) for pid in started)
        pids += started
        assert "bug in the program" in str(broken.run(backend=router).error())
        raise ValueError("leaving the block with an exception")
    assert not any(alive(pid) for pid in pids)


def test_a_killed_parent_leaves_no_router_or_worker_behind(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        "import time\n"
        "import lmprog as lp\n"
        f"rt = lp.Runtime('llama.cpp', {str(tiny_model_gguf())!r}, replicas=2, slots=1)\n"
        "print(*(r._process.pid for r in [rt, *rt._workers]), flush=True)\n"
        "time.sleep(600)\n"
    )
    for how in (signal.SIGKILL, signal.SIGTERM):
        parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        assert parent.stdout is not None
        guards = [int(pid) for pid in parent.stdout.readline().split()]
        started = [*guards, *(c for g in guards for c in _children(g))]
        assert len(started) == 6 and all(alive(pid) for pid in started)  # 3 guards, 3 servers
        parent.send_signal(how)
        parent.wait()
        deadline = time.monotonic() + 20
        while any(alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in started), how


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found
