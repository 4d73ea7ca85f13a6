"""lp.Local on a CUDA GPU with the tiny model: the same answers as transformers on that device,
constraints, batched forks, the radix cache, seeded sampling and penalties (whose tensors must
live on the GPU), and the bfloat16 default.

These need a CUDA GPU and are skipped elsewhere (CI has none); run them on a GPU machine with
`pytest tests/integration/test_local_cuda.py`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import jsonschema
import pytest
import torch
from support.models import tiny_model_dir
from support.reference import transformers_greedy

import lmprog as lp

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine",
    ),
]

PROMPTS = ["def main(", "import os\nimport sys\n", "class Parser:\n    def __init__(self"]


@pytest.fixture(scope="module")
def cuda_f32() -> Iterator[lp.Local]:
    """float32 on the GPU: greedy text can be compared token for token with transformers."""
    backend = lp.Local(tiny_model_dir(), device="cuda", dtype=torch.float32)
    backend.load()
    yield backend
    backend.shutdown()


@pytest.fixture(scope="module")
def cuda_default() -> Iterator[lp.Local]:
    """No device or dtype given: CUDA and bfloat16 are the defaults where a GPU is present."""
    backend = lp.Local(tiny_model_dir())
    backend.load()
    yield backend
    backend.shutdown()


@lp.function
def complete(s, prompt, max_tokens):
    s += prompt + lp.gen("out", max_tokens=max_tokens, temperature=0)


def test_greedy_text_equals_transformers_generate_on_cuda(cuda_f32: lp.Local) -> None:
    reference = transformers_greedy(tiny_model_dir(), device="cuda", dtype=torch.float32)
    expected = [reference(prompt, 24) for prompt in PROMPTS]
    alone = [complete.run(p, 24, backend=cuda_f32)["out"] for p in PROMPTS]
    lp.flush_cache(cuda_f32)
    # a batch: the rows have different lengths, so all but the longest are left-padded
    together = [s["out"] for s in complete.run_batch([(p, 24) for p in PROMPTS], backend=cuda_f32)]
    assert alone == expected
    assert together == expected
    assert cuda_f32.stats()["peak_batch_size"] > 1


def test_cuda_and_cpu_select_the_same_choices(cuda_f32: lp.Local) -> None:
    @lp.function
    def route(s, i):
        s += f"Item {i} is" + lp.select("kind", [" red", " green", " blue", " transparent"])

    cpu = lp.Local(tiny_model_dir(), device="cpu")
    try:
        on_cpu = [s["kind"] for s in route.run_batch([(i,) for i in range(8)], backend=cpu)]
    finally:
        cpu.shutdown()
    on_cuda = [s["kind"] for s in route.run_batch([(i,) for i in range(8)], backend=cuda_f32)]
    assert on_cuda == on_cpu


def test_regex_and_json_schema_constraints_hold_on_cuda(cuda_default: lp.Local) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }

    @lp.function(temperature=0)
    def forms(s, i):
        s += f"Record {i}: " + lp.gen("code", regex=r"[A-Z]{2}-[0-9]{3}", max_tokens=16)
        s += "\nAs JSON: " + lp.gen("record", json_schema=schema, max_tokens=64)

    for state in forms.run_batch([(i,) for i in range(4)], backend=cuda_default):
        assert state.error() is None, state.error()
        assert re.fullmatch(r"[A-Z]{2}-[0-9]{3}", state["code"])
        jsonschema.validate(state["record"], schema)  # parsed by lmprog


def test_fork_branches_decode_together_on_cuda(cuda_default: lp.Local) -> None:
    @lp.function
    def branches(s):
        s += "shared prefix\n"
        forks = s.fork(6)
        forks += lambda i: (
            f"branch {i}:" + lp.gen("out", max_tokens=24, temperature=0, ignore_eos=True)
        )
        forks.join()
        return [f.get_meta_info("out")["completion_tokens"] for f in forks]

    state = branches.run(backend=cuda_default)
    assert state.error() is None, state.error()
    assert state.ret_value == [24] * 6
    assert cuda_default.stats()["peak_batch_size"] >= 4


def test_second_turn_reuses_the_first_from_the_radix_cache_on_cuda(cuda_default: lp.Local) -> None:
    @lp.function(temperature=0)
    def two_turns(s):
        s += '"""Helpers for parsing configuration files."""\n\ndef first(items):\n    return'
        s += lp.gen("a", max_tokens=12, ignore_eos=True)
        s += "\n\ndef second(items):\n    return" + lp.gen("b", max_tokens=12, ignore_eos=True)

    lp.flush_cache(cuda_default)
    state = two_turns.run(backend=cuda_default)
    first, second = state.get_meta_info("a"), state.get_meta_info("b")
    assert second["cached_tokens"] >= first["prompt_tokens"]  # the whole first prompt at least
    report = state.cache_report()
    assert report.computed_tokens is not None and report.prompt_tokens is not None
    assert 0 < report.computed_tokens < report.prompt_tokens
    # the same program again: all but the last prompt token of its first gen come from the cache
    again = two_turns.run(backend=cuda_default).get_meta_info("a")
    assert again["cached_tokens"] == again["prompt_tokens"] - 1


def test_seeded_sampling_and_penalties_run_on_cuda(cuda_default: lp.Local) -> None:
    """The seeded generator and the penalty amounts are tensors that must be on the GPU."""

    @lp.function
    def sample(s, seed):
        s += "x = " + lp.gen(
            "v", max_tokens=12, temperature=1.0, seed=seed, frequency_penalty=0.5, ignore_eos=True
        )

    alone = sample.run(7, backend=cuda_default)
    assert alone.error() is None, alone.error()
    crowd = sample.run_batch([(i,) for i in range(8)], backend=cuda_default)
    assert crowd[7]["v"] == alone["v"]
    assert len({s["v"] for s in crowd}) > 4


def test_bfloat16_is_the_default_and_decodes(cuda_default: lp.Local) -> None:
    assert cuda_default.device.type == "cuda"
    assert cuda_default.dtype == torch.bfloat16
    state = complete.run("def main(", 16, backend=cuda_default)
    assert state.error() is None, state.error()
    assert state.get_meta_info("out")["completion_tokens"] > 0
    # bf16 rounding may change later tokens, but the first follows transformers in bf16 too
    reference = transformers_greedy(tiny_model_dir(), device="cuda", dtype=torch.bfloat16)
    first = complete.run("def main(", 1, backend=cuda_default)["out"]
    assert first == reference("def main(", 1)
