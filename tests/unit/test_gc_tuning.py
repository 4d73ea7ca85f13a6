"""The collector's young generation while batches run (lmprog.gc_tuning)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import lmprog as lp
from lmprog.gc_tuning import young_generation
from lmprog.ir import SamplingParams
from lmprog.testing import ScriptedBackend


@pytest.fixture(autouse=True)
def default_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


def test_the_threshold_is_raised_inside_and_put_back_after() -> None:
    with young_generation(10_000):
        assert gc.get_threshold() == (10_000, 50, 10)
    assert gc.get_threshold() == (700, 10, 10)


def test_overlapping_batches_restore_only_when_the_last_one_ends() -> None:
    outer = young_generation(10_000)
    outer.__enter__()
    with young_generation(10_000):
        pass
    assert gc.get_threshold()[0] == 10_000  # the first batch is still running
    outer.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10)


def test_a_threshold_someone_set_meanwhile_is_kept() -> None:
    with young_generation(10_000):
        gc.set_threshold(2_000, 10, 10)
    assert gc.get_threshold() == (2_000, 10, 10)  # not put back to 700 over the user's


@pytest.mark.parametrize("threshold", [None, 500])
def test_none_or_a_smaller_threshold_leaves_the_collector_alone(threshold: int | None) -> None:
    with young_generation(threshold):
        assert gc.get_threshold() == (700, 10, 10)


def test_a_disabled_collector_stays_disabled() -> None:
    gc.set_threshold(0)
    with young_generation(10_000):
        assert gc.get_threshold()[0] == 0


def test_run_batch_raises_it_while_programs_run_and_honours_global_config() -> None:
    seen: list[int] = []

    @lp.function
    def program(s: lp.ProgramState, i: int) -> None:
        seen.append(gc.get_threshold()[0])
        s += f"{i}:" + lp.gen("x", max_tokens=2)

    program.run_batch([(i,) for i in range(3)], backend=ScriptedBackend())
    assert seen == [lp.global_config.batch_gc_threshold] * 3
    assert gc.get_threshold() == (700, 10, 10)

    saved = lp.global_config.batch_gc_threshold
    lp.global_config.batch_gc_threshold = None
    try:
        seen.clear()
        program.run_batch([(i,) for i in range(2)], backend=ScriptedBackend())
        assert seen == [700, 700]
    finally:
        lp.global_config.batch_gc_threshold = saved


def test_sampling_params_replaced_and_merged_keep_every_field() -> None:
    base = SamplingParams(max_new_tokens=8, stop=("\n",))
    merged = SamplingParams(temperature=0.5).merged_over(base)
    assert merged == SamplingParams(max_new_tokens=8, stop=("\n",), temperature=0.5)
    assert merged.replaced(seed=3) == SamplingParams(
        max_new_tokens=8, stop=("\n",), temperature=0.5, seed=3
    )
    assert hash(merged) == hash(SamplingParams(max_new_tokens=8, stop=("\n",), temperature=0.5))
    with pytest.raises(TypeError, match="no field colour"):
        base.replaced(colour=1)
