"""state.cache_report() against real engines: its numbers are the engines' own counters."""

from __future__ import annotations

import httpx
import pytest

import lmprog as lp

pytestmark = pytest.mark.engine

SHARED = "def add(a, b):\n    return a + b\n\n" * 12  # ~190 tokens every item shares


@lp.function(temperature=0)
def numbered(s, i):
    s += SHARED + f"# item {i}\n" + lp.gen("answer", max_tokens=4)
    s += "\n# next\n" + lp.gen("more", max_tokens=4)


def meta_sums(states: list[lp.ProgramState]) -> tuple[int, int]:
    """Prompt and cached tokens summed over every gen, as get_meta_info reports them."""
    metas = [s.get_meta_info(name) for s in states for name in ("answer", "more")]
    return sum(m["prompt_tokens"] for m in metas), sum(m["cached_tokens"] for m in metas)


def test_llamacpp_shared_prefix_batch_is_served_from_the_cache(
    tiny_server: lp.Runtime,
) -> None:
    backend = lp.LlamaCpp(tiny_server.url)
    states = numbered.run_batch([{"i": i} for i in range(8)], backend=backend)
    assert all(s.error() is None for s in states)
    report = lp.cache_report(states)
    assert report.requests == 16
    # The totals are llama-server's timings (prompt_n + cache_n, cache_n) per request, summed.
    assert (report.prompt_tokens, report.cached_tokens) == meta_sums(states)
    assert report.cached_tokens is not None and report.cached_tokens > 0
    assert report.computed_tokens == report.prompt_tokens - report.cached_tokens
    # Every program's second gen extends its first: its slot holds all but the new text.
    more = next(row for row in report.rows if row.name == "more")
    assert more.hit_rate is not None and more.hit_rate > 0.8


def test_llamacpp_counts_match_a_raw_request_with_the_same_prompt(
    tiny_server: lp.Runtime,
) -> None:
    @lp.function(temperature=0)
    def one(s):
        s += SHARED + "# the same prompt each time\n" + lp.gen("answer", max_tokens=4)

    backend = lp.LlamaCpp(tiny_server.url)
    one.run(backend=backend)  # a slot now holds the prompt
    prompt = SHARED + "# the same prompt each time\n"
    raw = httpx.post(
        tiny_server.url + "/completion",
        json={"prompt": prompt, "n_predict": 4, "temperature": 0, "cache_prompt": True},
        timeout=60,
    ).json()["timings"]
    report = one.run(backend=backend).cache_report()
    tokens = httpx.post(
        tiny_server.url + "/tokenize", json={"content": prompt, "add_special": True}, timeout=60
    ).json()["tokens"]
    # Both requests found the prompt in the slot: the same split, all but the last token cached.
    assert report.prompt_tokens == raw["prompt_n"] + raw["cache_n"] == len(tokens)
    assert report.cached_tokens == raw["cache_n"] == len(tokens) - 1
    assert report.computed_tokens == raw["prompt_n"] == 1


def test_local_report_equals_the_radix_cache_counters(tiny_local: lp.Local) -> None:
    numbered.run(i=-1, backend=tiny_local)  # the shared prefix is in the radix cache
    before = tiny_local.stats()
    states = numbered.run_batch([{"i": i} for i in range(6)], backend=tiny_local)
    after = tiny_local.stats()
    assert all(s.error() is None for s in states)
    report = lp.cache_report(states)
    assert report.cached_tokens == after["hit_tokens"] - before["hit_tokens"]
    assert report.computed_tokens == after["computed_tokens"] - before["computed_tokens"]
    assert (report.prompt_tokens, report.cached_tokens) == meta_sums(states)
    assert report.hit_rate is not None and report.hit_rate > 0.8
