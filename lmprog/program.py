"""`@lp.function` and Program: run, run_batch, arun, arun_batch, bind.

A program's body runs in a greenlet on lmprog's loop (see loop.py), so a batch of ten
thousand programs is ten thousand greenlets and tasks, bounded by `max_concurrency`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Any, overload

from tqdm.auto import tqdm

from lmprog import gc_tuning, loop, prefix_lint
from lmprog.backends.base import Backend
from lmprog.budget import Budget, BudgetedBackend, BudgetMeter
from lmprog.errors import BatchError, BatchInterrupted, LmprogError, LocalNotInstalledError
from lmprog.execution import Execution
from lmprog.global_config import global_config, plug_default_backend
from lmprog.ir import SAMPLING_NAMES, SamplingParams
from lmprog.mcp import scope as mcp_scope
from lmprog.scheduling import BatchScheduler
from lmprog.state import Batch, ProgramState
from lmprog.tracer import TracedProgram, cached_prefix, current_tracer, trace_program

_default_backend: Backend | None = None

BatchItem = dict[str, Any] | Sequence[Any]


def set_default_backend(backend: Backend | None) -> None:
    """The backend programs use when `backend=` is not given."""
    global _default_backend
    _default_backend = backend


def get_default_backend() -> Backend | None:
    return _default_backend


plug_default_backend(get_default_backend, set_default_backend)  # lp.global_config.default_backend


class Program:
    """A program: a function whose first parameter is the state `s`."""

    def __init__(
        self,
        func: Callable[..., Any],
        defaults: SamplingParams | None = None,
        bound: dict[str, Any] | None = None,
        spec_tokens: int = 0,
    ) -> None:
        self.func = func
        self.spec_tokens = spec_tokens  # API speculative execution (lmprog/speculation.py)
        self.name = getattr(func, "__name__", "program")
        self.defaults = defaults or SamplingParams()
        self.bound = bound or {}
        parameters = list(inspect.signature(func).parameters)
        if not parameters:
            raise TypeError(f"program {self.name!r} must take the state `s` as first parameter")
        self._own_params = set(parameters[1:])
        self.__doc__ = func.__doc__
        self.__wrapped__ = func

    def bind(self, **kwargs: Any) -> Program:
        """A new program with these arguments fixed."""
        return Program(self.func, self.defaults, {**self.bound, **kwargs}, self.spec_tokens)

    # ----- single runs ------------------------------------------------------------------

    def run(
        self,
        *args: Any,
        backend: Backend | None = None,
        stream: bool = False,
        budget: Budget | None = None,
        **kwargs: Any,
    ) -> ProgramState:
        """Run the program; returns its state when done (at once with stream=True).

        A failure does not raise here: it is on `state.error()`, and reading a value that
        failed raises it. With `budget`, requests stop at its limits (lmprog.budget).
        """
        chosen = _budgeted(resolve_backend(backend), budget)
        state: ProgramState = loop.wait(self._launch(args, kwargs, chosen, stream))
        if not stream:
            state._wait_done()
        return state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """`run(...)`; while another program is being traced (`Program.trace()`), this
        program's trace instead, as in SGLang."""
        if current_tracer() is not None:
            kwargs.pop("backend", None)
            return self.trace(*args, **kwargs)
        return self.run(*args, **kwargs)

    # ----- SGLang's tracing and prefix caching ------------------------------------------

    def trace(self, *args: Any, backend: Backend | None = None, **kwargs: Any) -> TracedProgram:
        """Run the body without a model, on placeholders for the arguments not given, and
        return what it appends (SGLang's traced program: `.nodes`, `.last_node`,
        `.variables`, `.flatten_nodes()`). Nothing is sent; a value read with `s[name]` is a
        placeholder, and putting an argument placeholder in an f-string raises TypeError.
        `backend` is kept for rendering roles in `prefix()`."""
        return trace_program(self.func, self.name, args, {**self.bound, **kwargs}, backend)

    def cache(self, backend: Backend | None = None) -> str:
        """Compute the program's constant prefix (its text up to the first argument, gen or
        select, roles rendered by the backend's chat template) in the engine's prefix cache,
        as SGLang's `cache()` does; returns that prefix. Engines whose cache is not shared
        between requests (llama-server's per-slot caches) do nothing with it, as with every
        warm-up (`Backend.warm`). Prefixes of 64 characters or fewer are not worth a request
        and are not sent (SGLang's threshold)."""
        chosen = resolve_backend(backend)
        prefix: str = loop.wait(cached_prefix(self.func, self.name, self.bound, chosen))
        if len(prefix) > 64:
            loop.wait(chosen.warm(prefix))
        return prefix

    def compile(self, *, backend: Backend | None = None) -> Program:
        """SGLang's `compile()`: this program (lmprog's executor already shares prefixes and
        runs forks concurrently, so there is nothing to compile); `backend` is not needed."""
        del backend
        return self

    async def arun(
        self,
        *args: Any,
        backend: Backend | None = None,
        stream: bool = False,
        budget: Budget | None = None,
        **kwargs: Any,
    ) -> ProgramState:
        """`run` for asyncio code and notebooks."""
        chosen = _budgeted(resolve_backend(backend), budget)

        async def go() -> ProgramState:
            state = await self._launch(args, kwargs, chosen, stream)
            if not stream:
                assert state._done is not None
                await state._done
            return state

        result: ProgramState = await loop.await_on_loop(go())
        return result

    # ----- batches ----------------------------------------------------------------------

    def run_batch(
        self,
        batch: Sequence[BatchItem],
        backend: Backend | None = None,
        max_concurrency: int | None = None,
        progress_bar: bool = False,
        return_exceptions: bool = True,
        num_threads: int | str | None = None,
        budget: Budget | None = None,
        **sampling: Any,
    ) -> list[ProgramState]:
        """Run the program once per item (a dict of kwargs or a tuple of args), concurrently.

        Results come back in input order; a failed program's state carries its error. On Ctrl-C
        in-flight programs are cancelled and `BatchInterrupted.states` keeps what finished.
        With `budget`, the whole batch shares it (lmprog.budget).
        """
        slots: list[ProgramState | None] = [None] * len(batch)
        chosen = _budgeted(resolve_backend(backend), budget)
        future = loop.submit(
            self._batch(batch, slots, chosen, max_concurrency, num_threads, progress_bar, sampling)
        )
        try:
            loop.result_of(future)
        except KeyboardInterrupt:
            future.cancel()
            loop.submit(asyncio.sleep(0.05)).result(timeout=5)
            raise BatchInterrupted(slots) from None
        return _finish_batch(slots, return_exceptions)

    async def arun_batch(
        self,
        batch: Sequence[BatchItem],
        backend: Backend | None = None,
        max_concurrency: int | None = None,
        progress_bar: bool = False,
        return_exceptions: bool = True,
        num_threads: int | str | None = None,
        budget: Budget | None = None,
        **sampling: Any,
    ) -> list[ProgramState]:
        """`run_batch` for asyncio code and notebooks."""
        slots: list[ProgramState | None] = [None] * len(batch)
        chosen = _budgeted(resolve_backend(backend), budget)
        await loop.await_on_loop(
            self._batch(batch, slots, chosen, max_concurrency, num_threads, progress_bar, sampling)
        )
        return _finish_batch(slots, return_exceptions)

    async def _batch(
        self,
        batch: Sequence[BatchItem],
        slots: list[ProgramState | None],
        chosen: Backend,
        max_concurrency: int | None,
        num_threads: int | str | None,
        progress_bar: bool,
        sampling: dict[str, Any],
    ) -> None:
        if max_concurrency is None and isinstance(num_threads, int):
            max_concurrency = num_threads
        limit = asyncio.Semaphore(max_concurrency or await chosen.concurrency_hint())
        bar = tqdm(total=len(batch), desc=self.name, unit="prog") if progress_bar else None
        failed = 0

        scheduler = BatchScheduler(chosen, len(batch))  # prefix order, shared prefixes warmed
        tool_scope = mcp_scope.SessionScope()  # one session per MCP server for the batch
        entered = mcp_scope.enter(tool_scope)

        async def one(index: int) -> None:
            nonlocal failed
            args, kwargs = _split_item(batch[index])
            async with limit:
                item_backend = scheduler.backend_for(index)
                state = await self._launch(args, {**sampling, **kwargs}, item_backend, False)
                slots[index] = state
                assert state._done is not None
                await state._done
            if bar is not None:
                failed += state._execution.error is not None
                bar.update(1)
                if failed:
                    bar.set_postfix(failed=failed)

        try:
            with gc_tuning.young_generation(global_config.batch_gc_threshold):
                await scheduler.run(batch, one)
        finally:
            if bar is not None:
                bar.close()
            mcp_scope.leave(entered)
            await tool_scope.aclose()

    # ----- the core -----------------------------------------------------------------------

    async def _launch(
        self,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        backend: Backend,
        stream: bool,
    ) -> ProgramState:
        """Start the program on the loop (on the backend its caller resolved); its state's
        `_done` completes when it ends."""
        program_kwargs = {**self.bound}
        sampling: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in SAMPLING_NAMES and key not in self._own_params:
                sampling[key] = value
            else:
                program_kwargs[key] = value
        defaults = SamplingParams.from_kwargs(**sampling).merged_over(self.defaults)
        execution = Execution(
            backend,
            self.name,
            defaults,
            stream=stream,
            probe=prefix_lint.probe(self.func, self.name),
            spec_tokens=self.spec_tokens,
        )
        state = ProgramState(execution)
        state._done = asyncio.get_running_loop().create_task(
            self._drive(state, tuple(args), program_kwargs)
        )
        return state

    async def _drive(
        self, state: ProgramState, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        execution = state._execution
        tool_scope = mcp_scope.current()  # a batch's, shared; else this run's own
        entered = None
        if tool_scope is None:
            tool_scope = mcp_scope.SessionScope()
            entered = mcp_scope.enter(tool_scope)
        body = mcp_scope.bound(tool_scope, lambda s: self.func(s, *args, **kwargs))
        try:
            state._ret_value = await loop.run_body(body, state)
            await execution.wait_idle(with_children=True)
        except asyncio.CancelledError as exc:
            execution.fail("program", exc)
            execution.cancel()
            raise
        except Exception as exc:
            own = not isinstance(exc, LmprogError)  # the program's code raised it itself
            execution.fail(getattr(exc, "primitive", None) or "the program function", exc, own)
        else:
            if global_config.verbosity >= 2:
                print(execution.text)
        finally:
            execution.mark_finished()
            if entered is not None:
                mcp_scope.leave(entered)
                await tool_scope.aclose()  # the run's MCP sessions (lp.mcp_tools)

    def __repr__(self) -> str:
        return f"<lmprog program {self.name!r}>"


def resolve_backend(backend: Backend | None) -> Backend:
    """`backend`, else the default; with none set, lp.Local() on the default model (made once)."""
    global _default_backend
    if backend is not None:
        return backend
    if _default_backend is None:
        try:
            from lmprog.backends.local import Local
        except LocalNotInstalledError as exc:  # no `local` extra: fail now, saying what to do
            raise LocalNotInstalledError.for_default(exc.name or "torch") from None
        _default_backend = Local()
    return _default_backend


def _budgeted(backend: Backend, budget: Budget | None) -> Backend:
    """The backend a run uses: with a budget, one meter charged by all its programs."""
    return backend if budget is None else BudgetedBackend(backend, BudgetMeter(budget))


def _split_item(item: BatchItem) -> tuple[Sequence[Any], dict[str, Any]]:
    if isinstance(item, dict):
        return (), item
    if isinstance(item, (tuple, list)):
        return item, {}
    raise TypeError(f"a batch item must be a dict of kwargs or a tuple of args, got {item!r}")


def _finish_batch(slots: list[ProgramState | None], return_exceptions: bool) -> Batch:
    states = Batch(s for s in slots if s is not None)
    assert len(states) == len(slots), "every program of a finished batch has a state"
    errors = [s._execution.error for s in states if s._execution.error is not None]
    if errors and not return_exceptions:
        raise BatchError(states, errors)
    return states


@overload
def function(func: Callable[..., Any], /) -> Program: ...
@overload
def function(func: None = None, /, **defaults: Any) -> Callable[[Callable[..., Any]], Program]: ...


def function(
    func: Callable[..., Any] | None = None, /, **defaults: Any
) -> Program | Callable[[Callable[..., Any]], Program]:
    """Turn `def f(s, ...)` (or `async def`) into a program. `@lp.function(temperature=0)`
    sets sampling defaults for every gen in it; `num_api_spec_tokens=N` turns on SGLang's
    API speculative execution (lmprog/speculation.py)."""
    spec_tokens = defaults.pop("num_api_spec_tokens", None)
    spec_tokens = defaults.pop("api_num_spec_tokens", None) or spec_tokens  # older spelling
    if spec_tokens is not None and (not isinstance(spec_tokens, int) or spec_tokens < 0):
        raise TypeError(
            f"@lp.function(num_api_spec_tokens=...) must be a whole number of tokens, "
            f"got {spec_tokens!r}"
        )
    unknown = set(defaults) - SAMPLING_NAMES
    if unknown:
        raise TypeError(
            f"@lp.function got unknown defaults {sorted(unknown)}; "
            f"it accepts {sorted(SAMPLING_NAMES)}"
        )
    sampling = SamplingParams.from_kwargs(**defaults)

    def wrap(f: Callable[..., Any]) -> Program:
        return Program(f, sampling, spec_tokens=spec_tokens or 0)

    return wrap(func) if func is not None else wrap
