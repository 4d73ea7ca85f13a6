"""ProgramState and ForkGroup: the user's view of one running program.

Every method here is a thin, thread-safe face over an `Execution` living on the background loop:
mutations hop onto the loop, reads wait (by suspending a program body's greenlet, or blocking a
plain thread) only for what they need.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

from lmprog import loop
from lmprog.cache_report import CacheReport
from lmprog.display import batch_html, state_html
from lmprog.errors import LmprogError, ProgramError
from lmprog.execution import Chunk, Execution
from lmprog.ir import Node, Role, RoleBegin, RoleEnd, VarScopeBegin, VarScopeEnd, as_node
from lmprog.partial import partial_reader
from lmprog.prefix_lint import caller_origin
from lmprog.trace import Span


async def _call(fn: Callable[[], Any]) -> Any:
    return fn()


def _on_loop(fn: Callable[[], Any]) -> Any:
    """Run `fn` on the loop thread (where Execution lives) and return its result."""
    if loop.on_loop_thread():
        return fn()
    return loop.wait(_call(fn))


class ProgramState:
    """One program's text, variables and metadata, filled in as its primitives run."""

    def __init__(self, execution: Execution) -> None:
        self._execution = execution
        self._done: asyncio.Future[Any] | None = None
        self._ret_value: Any = None

    # ----- appending --------------------------------------------------------------------

    def __iadd__(self, other: Node | str) -> ProgramState:
        if other is None:
            raise TypeError("cannot append None to a program state")
        node = as_node(other)
        origin = caller_origin() if self._execution.probe is not None else None
        _on_loop(lambda: self._execution.submit(node, origin))
        return self

    @contextmanager
    def _role(self, role: Role) -> Iterator[ProgramState]:
        self += RoleBegin(role)
        yield self
        self += RoleEnd(role)

    def system(self, expr: Node | str | None = None) -> Any:
        """`with s.system(): s += ...` writes a system turn; `s.system(x)` appends one at once
        (SGLang's spelling of `s += lp.system(x)`)."""
        return self._role_or_append("system", expr)

    def user(self, expr: Node | str | None = None) -> Any:
        return self._role_or_append("user", expr)

    def assistant(self, expr: Node | str | None = None) -> Any:
        return self._role_or_append("assistant", expr)

    def _role_or_append(self, role: Role, expr: Node | str | None) -> Any:
        if expr is None:
            return self._role(role)
        self += RoleBegin(role) + as_node(expr) + RoleEnd(role)
        return None

    @contextmanager
    def var_scope(self, name: str) -> Iterator[ProgramState]:
        """The text appended inside becomes variable `name`."""
        self += VarScopeBegin(name)
        yield self
        self += VarScopeEnd(name)

    # ----- values -----------------------------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        return loop.wait(self._execution.get(name))

    async def aget(self, name: str) -> Any:
        """`s[name]` for async code outside a program body."""
        return await loop.await_on_loop(self._execution.get(name))

    def __setitem__(self, name: str, value: Any) -> None:
        _on_loop(lambda: self._execution.set(name, value))

    def __contains__(self, name: str) -> bool:
        return bool(_on_loop(lambda: self._execution.has(name)))

    def get_var(self, name: str) -> Any:
        return self[name]

    def set_var(self, name: str, value: Any) -> None:
        self[name] = value

    def variables(self) -> dict[str, Any]:
        """Every named value the program produced (waits for the program to end)."""
        self._wait_done()
        return dict(self._execution.variables)

    def get_meta_info(self, name: str) -> dict[str, Any]:
        """Token counts, finish reason, latency, cache hits and (if asked) logprobs of a value."""
        self[name]
        return dict(self._execution.meta.get(name, {}))

    def text(self) -> str:
        """The whole text so far, once everything appended has run."""
        self.sync()
        return self._execution.text

    def messages(self) -> list[dict[str, Any]]:
        """The conversation as OpenAI-style messages (roles written so far)."""
        self.sync()
        return [dict(m) for m in self._execution.messages]

    def sync(self) -> None:
        """Wait until everything appended so far has run."""
        loop.wait(self._execution.wait_idle())

    def cache_report(self) -> CacheReport:
        """Prompt tokens this program sent, served from the engine's prefix cache, and
        computed, as the engine reported them (forks included; waits for the program to end)."""
        self._wait_done()
        return CacheReport(tuple(self._execution.all_requests()))

    def trace(self) -> list[Span]:
        """This run's spans: the program, each primitive, each backend request (forks
        included), with timings, token counts and cache hits (waits for the program to end).
        `lp.trace_to(path)` writes every run's spans as JSON lines instead."""
        self._wait_done()
        return list(self._execution.tracer.spans)

    def error(self) -> BaseException | None:
        """The error that stopped the program, if any (waits for the program to end).

        If the program's own code raised it, it is that exception itself (so
        `isinstance(state.error(), ValueError)` holds), with a note naming the program; an
        error lmprog met running a primitive is an `lp.ProgramError` naming the program, the
        primitive and the cause. `program_error()` is always the latter."""
        error = self.program_error()
        return error.as_raised() if error is not None else None

    def program_error(self) -> ProgramError | None:
        """The error that stopped the program as an `lp.ProgramError` (`.program`,
        `.primitive`, `.cause`, `.raised_by_program`), whoever raised it."""
        self._wait_done()
        return self._execution.error

    @property
    def ret_value(self) -> Any:
        """What the program function returned (waits for the program to end)."""
        self._wait_done()
        return self._ret_value

    def _wait_done(self) -> None:
        if self._done is not None and not loop.in_program_body():
            if not self._done.done():  # a finished program is read without a trip to the loop
                loop.wait(_settled(self._done))
        else:
            self.sync()

    # ----- forks ------------------------------------------------------------------------

    def fork(self, size: int = 1) -> ForkGroup:
        """`size` branches that share this state's text so far and run concurrently."""
        if size < 1:
            raise ValueError("fork size must be at least 1")

        def make() -> list[ProgramState]:
            snapshot = self._execution.fork_point(size)
            parent = self._execution
            branches = []
            for _ in range(size):
                child = Execution(
                    parent.backend,
                    parent.program,
                    parent.defaults,
                    stream=parent.stream,
                    fork_of=snapshot,
                    probe=parent.probe,
                    tracer=parent.tracer,
                    spec_tokens=parent.spec_tokens,
                )
                parent.children.append(child)
                branches.append(ProgramState(child))
            return branches

        return ForkGroup(_on_loop(make), self)

    def copy(self) -> ProgramState:
        """A one-way fork: `with s.copy() as c:` works on `c` without touching `s`."""
        return self.fork(1)[0]

    def __enter__(self) -> ProgramState:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    # ----- streaming --------------------------------------------------------------------

    def text_iter(self, var: str | None = None, *, var_name: str | None = None) -> Iterator[str]:
        """Yield text as it is produced (only `var`'s text if given; `var_name=` is SGLang's
        spelling); pieces add up to the text."""
        chosen = _one_var(var, var_name)
        return loop.iterate(lambda: self._texts(chosen))

    async def text_async_iter(
        self,
        var: str | None = None,
        return_meta_data: bool = False,
        *,
        var_name: str | None = None,
    ) -> AsyncIterator[Any]:
        """`text_iter` for async code. With `return_meta_data`, yields (piece, meta_info)
        pairs as SGLang does: a streamed gen piece's meta_info has `completion_tokens`, the
        tokens generated so far (streamed pieces so far, on engines that stream token by
        token) and `finish_reason` None; `get_meta_info(var)` has the final counts."""
        chunks = self._chunks(_one_var(var, var_name))
        while True:
            try:
                chunk = await loop.await_on_loop(chunks.__anext__())
            except StopAsyncIteration:
                return
            if return_meta_data:
                yield chunk.text, dict(chunk.meta or {})
            else:
                yield chunk.text

    async def _texts(self, var: str | None) -> AsyncIterator[str]:
        async for chunk in self._chunks(var):
            yield chunk.text

    async def _chunks(self, var: str | None) -> AsyncIterator[Chunk]:
        execution = self._execution
        index = 0
        while True:
            chunks: list[Chunk] = execution.chunks
            while index < len(chunks):
                chunk = chunks[index]
                index += 1
                if var is None or var in chunk.names:
                    yield chunk
            if self._finished(var):
                return
            await execution.changed()

    def _finished(self, var: str | None) -> bool:
        execution = self._execution
        if execution.error is not None or execution.finished:
            return True
        return var is not None and var in execution.variables and not execution.has_pending(var)

    def partial_iter(self, name: str) -> PartialStream:
        """Validated partial values of the JSON gen `name` (`json_schema=` or a JSON `type=`)
        as its tokens arrive (run with stream=True; otherwise only the final value comes).
        Iterate it with `for` or `async for`; the last item equals `state[name]`."""
        return PartialStream(self._execution, name)

    # ----- display ----------------------------------------------------------------------

    def _repr_html_(self) -> str:
        """Notebooks show the state as HTML: roles, literal and generated text, values."""

        def render() -> str:
            execution = self._execution
            report = CacheReport(tuple(execution.all_requests())) if execution.finished else None
            return state_html(execution, report)

        return str(_on_loop(render))

    def __repr__(self) -> str:
        execution = self._execution
        status = "failed" if execution.error else ("done" if execution.finished else "running")
        text = execution.text
        shown = text if len(text) <= 60 else text[:28] + " ... " + text[-27:]
        return f"<ProgramState {execution.program!r} {status}: {shown!r}>"


def _one_var(var: str | None, var_name: str | None) -> str | None:
    if var is not None and var_name is not None and var != var_name:
        raise TypeError(f"give the variable once: var={var!r} or var_name={var_name!r}")
    return var if var is not None else var_name


async def _settled(task: asyncio.Future[Any]) -> None:
    """Wait for a program's task without letting a cancelled waiter cancel the program."""
    await asyncio.wait({task})


class ForkGroup:
    """The branches of `s.fork(n)`."""

    def __init__(self, states: list[ProgramState], parent: ProgramState) -> None:
        self.states = states
        self._parent = parent

    def __getitem__(self, index: int) -> ProgramState:
        return self.states[index]

    def __len__(self) -> int:
        return len(self.states)

    def __setitem__(self, index: int, state: ProgramState) -> None:
        """Lets SGLang's `forks[i] += x` work: Python stores the branch back after appending."""
        if state is not self.states[index]:
            raise TypeError("a fork's branches cannot be replaced; append with forks[i] += ...")

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __iadd__(
        self, other: Node | str | Callable[[int], Node | str] | Sequence[Node | str]
    ) -> ForkGroup:
        """`forks += x` appends x to every branch; `forks += lambda i: ...` or
        `forks += [x0, x1, ...]` (one per branch) a value per branch."""
        if isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"{len(other)} values for {len(self.states)} branches")
            for state, value in zip(self.states, other, strict=True):
                state += value
            return self
        for i, state in enumerate(self.states):
            state += other(i) if callable(other) else cast(Node | str, other)
        return self

    def join(self, mode: str = "gather_variable") -> None:
        """Wait for every branch. "gather_variable" (default) gives the parent a list per new
        variable (`s[name][i]` is branch i's value); "concate_and_append" appends each branch's
        new text to the parent."""
        if mode not in ("gather_variable", "concate_and_append"):
            raise ValueError(f"unknown join mode {mode!r}")
        loop.wait(self._join(mode))

    async def _join(self, mode: str) -> None:
        parent = self._parent._execution
        branches = [s._execution for s in self.states]
        await parent.wait_idle()
        await asyncio.gather(*(b.wait_idle(with_children=True) for b in branches))
        failed = next((b.error for b in branches if b.error is not None), None)
        if failed is not None:
            raise failed
        if mode == "gather_variable":
            before = set(parent.variables)
            names = [n for b in branches for n in b.variables if n not in before]
            for name in dict.fromkeys(names):
                parent.set(name, [b.variables.get(name) for b in branches])
        else:
            start = len(parent.text)
            for b in branches:
                parent.submit(as_node(b.text[start:]))


class PartialStream:
    """`state.partial_iter(name)`: iterate with `for` (blocking) or `async for`."""

    def __init__(self, execution: Execution, name: str) -> None:
        self._execution = execution
        self._name = name

    def __iter__(self) -> Iterator[Any]:
        return loop.iterate(self._values)

    async def __aiter__(self) -> AsyncIterator[Any]:
        values = self._values()
        while True:
            try:
                yield await loop.await_on_loop(values.__anext__())
            except StopAsyncIteration:
                return

    async def _values(self) -> AsyncIterator[Any]:
        execution, name = self._execution, self._name
        while name not in execution.constraints and not _over(execution):
            await execution.changed()
        constraint = execution.constraints.get(name)
        if constraint is None or constraint.kind != "json_schema":
            raise LmprogError(
                f"partial_iter({name!r}) needs a gen named {name!r} with json_schema= or a "
                "JSON type= (a pydantic model, list, dict); use text_iter for plain text"
            )
        reader = partial_reader(constraint)
        text, last, index = "", None, 0
        while True:
            chunks = execution.chunks
            while index < len(chunks):  # every streamed piece counts, however they bunch up
                chunk = chunks[index]
                index += 1
                if chunk.kind != "gen" or chunk.names[:1] != (name,):
                    continue
                text += chunk.text
                value = reader.value(text)
                if value is not None and value != last:
                    last = value
                    yield value
            written = name in execution.variables and not execution.has_pending(name)
            if written or _over(execution):
                break
            await execution.changed()
        final = await execution.get(name)
        if final != last:
            yield final


def _over(execution: Execution) -> bool:
    return execution.error is not None or execution.finished


class Batch(list[ProgramState]):
    """What run_batch returns: the states in input order (a plain list), which also sum up
    their cache report and show themselves as a table in notebooks."""

    def cache_report(self) -> CacheReport:
        """Every program's report (forks included) merged into one."""
        return CacheReport.merge(state.cache_report() for state in self)

    def errors(self) -> list[BaseException]:
        """The errors of the programs that failed, in input order (each as `state.error()`)."""
        return [e for e in (state.error() for state in self) if e is not None]

    def _repr_html_(self) -> str:
        return str(_on_loop(lambda: batch_html(self)))
