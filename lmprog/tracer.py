"""Tracing a program without a model: SGLang's `Program.trace()`, and the constant prefix
`Program.cache()` puts in the engine's cache.

The body runs once on a `TracedProgram` instead of a real state: what it appends is recorded
as nodes, nothing is sent. Arguments not given are `Argument` placeholders (putting one in an
f-string raises TypeError, as in SGLang: its value is unknown), and a value read with `s[name]`
is a `Variable` placeholder that can be appended like text. A program called from a traced
body is traced too, and returns its own TracedProgram.

(lmprog's `run_batch` does not trace to find a batch's shared prefix: running a body on
placeholders repeats its side effects and stops at the first argument. It learns the prefix
from the first item's real prompt instead; see scheduling.py.)
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmprog.ir import (
    Gen,
    Node,
    Role,
    RoleBegin,
    RoleEnd,
    Select,
    Text,
    VarScopeBegin,
    VarScopeEnd,
    as_node,
    flatten,
)

if TYPE_CHECKING:
    from lmprog.backends.base import Backend

_current: contextvars.ContextVar[TracedProgram | None] = contextvars.ContextVar(
    "lmprog_tracer", default=None
)


def current_tracer() -> TracedProgram | None:
    """The program being traced in this context, if any."""
    return _current.get()


class _StopTracing(Exception):
    """The constant prefix has ended (tracing for `Program.cache()`)."""


@dataclass(frozen=True)
class Argument(Node):
    """An argument the trace was not given (SGLang's `SglArgument`): its value is unknown."""

    name: str

    def __format__(self, spec: str) -> str:
        raise TypeError(
            f"argument {self.name!r} cannot go inside an f-string while tracing: its value is "
            'not known; concatenate it instead ("Q: " + question)'
        )

    def __bool__(self) -> bool:
        raise TypeError(f"argument {self.name!r} has no truth value while tracing")

    def __len__(self) -> int:
        raise TypeError(f"argument {self.name!r} has no length while tracing")

    def __repr__(self) -> str:
        return f"Argument(name={self.name})"


@dataclass(frozen=True)
class Variable(Node):
    """A value read with `s[name]` while tracing (SGLang's `SglVariable`)."""

    name: str
    source: int | None = None  # the node_id of the gen or select that produces it

    def __repr__(self) -> str:
        where = f", source=%{self.source}" if self.source is not None else ""
        return f"Variable({self.name!r}{where})"


@dataclass(frozen=True)
class Fork(Node):
    size: int


@dataclass(frozen=True)
class GetForkItem(Node):
    index: int


class TraceNode:
    """One appended primitive in the traced graph (SGLang's node, with `prev_node`)."""

    _count = 0

    def __init__(self, expr: Node, prev_node: TraceNode | None) -> None:
        self.node_id = TraceNode._count
        TraceNode._count += 1
        self.expr = expr
        self.prev_node = prev_node

    def print_graph_dfs(self) -> str:
        """Every node this one depends on, then this one: `%id = %prev + node` per line."""
        lines: list[str] = []
        seen: set[int] = set()
        stack: list[tuple[TraceNode, bool]] = [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                prev = f"%{node.prev_node.node_id} + " if node.prev_node is not None else ""
                lines.append(f"%{node.node_id} = {prev}{_shown(node.expr)}")
                continue
            if node.node_id in seen:
                continue
            seen.add(node.node_id)
            stack.append((node, True))
            if node.prev_node is not None:
                stack.append((node.prev_node, False))
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return f"%{self.node_id} = {_shown(self.expr)}"


def _shown(expr: Node) -> str:
    """A node as SGLang prints it in a graph: `Gen('answer')`, `Constant('Q: ')`, ..."""
    if isinstance(expr, Gen):
        return f"Gen({expr.name!r})"
    if isinstance(expr, Select):
        return f"Select({expr.name!r}, choices={list(expr.choices)})"
    if isinstance(expr, Text):
        return f"Constant({expr.text!r})"
    if isinstance(expr, (RoleBegin, RoleEnd)):
        return f"{type(expr).__name__}({expr.role})"
    return repr(expr)


class TracedProgram:
    """What `Program.trace()` returns (SGLang's `TracerProgramState`): the traced body's
    nodes in order, the last one (`print_graph_dfs()` draws the graph), the variables it
    read or produced, and what the function returned. It is also the `s` the body sees."""

    def __init__(
        self,
        program: str,
        arguments: dict[str, Any],
        backend: Backend | None = None,
        only_prefix: bool = False,
    ) -> None:
        self.program = program
        self.arguments = arguments
        self.backend = backend
        self.only_prefix = only_prefix
        self.nodes: list[TraceNode] = []
        self.last_node: TraceNode | None = None
        self.variables: dict[str, Any] = {}
        self.ret_value: Any = None
        self.child_states: list[TracedProgram] = []

    # ----- what the body calls ----------------------------------------------------------

    def __iadd__(self, other: Node | str) -> TracedProgram:
        if other is None:
            raise TypeError("cannot append None to a program state")
        for part in flatten(as_node(other)):
            self._record(part)
        return self

    def _record(self, node: Node) -> None:
        if self.only_prefix and not isinstance(
            node, (Text, RoleBegin, RoleEnd, VarScopeBegin, VarScopeEnd)
        ):
            raise _StopTracing
        entry = TraceNode(node, self.last_node)
        if isinstance(node, (Gen, Select)):
            kind = "gen" if isinstance(node, Gen) else "select"
            name = node.name or f"{kind}_{len(self.variables)}"
            self.variables[name] = Variable(name, entry.node_id)
        self.nodes.append(entry)
        self.last_node = entry

    def __getitem__(self, name: str) -> Any:
        if name in self.arguments:
            return self.arguments[name]
        if name not in self.variables:
            known = ", ".join(sorted(self.variables)) or "none yet"
            raise KeyError(f"traced program {self.program!r} has no variable {name!r} ({known})")
        return self.variables[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self.variables[name] = value

    def __contains__(self, name: str) -> bool:
        return name in self.variables

    def get_var(self, name: str) -> Any:
        return self[name]

    def set_var(self, name: str, value: Any) -> None:
        self[name] = value

    def system(self, expr: Node | str | None = None) -> Any:
        return self._role("system", expr)

    def user(self, expr: Node | str | None = None) -> Any:
        return self._role("user", expr)

    def assistant(self, expr: Node | str | None = None) -> Any:
        return self._role("assistant", expr)

    def _role(self, role: Role, expr: Node | str | None) -> Any:
        if expr is not None:
            self += RoleBegin(role) + as_node(expr) + RoleEnd(role)
            return None
        return self._role_scope(role)

    @contextmanager
    def _role_scope(self, role: Role) -> Iterator[TracedProgram]:
        self += RoleBegin(role)
        yield self
        self += RoleEnd(role)

    @contextmanager
    def var_scope(self, name: str) -> Iterator[TracedProgram]:
        self += VarScopeBegin(name)
        yield self
        self += VarScopeEnd(name)
        self.variables[name] = Variable(name, self.last_node.node_id if self.last_node else None)

    def fork(self, size: int = 1) -> TracedForks:
        if size < 1:
            raise ValueError("fork size must be at least 1")
        if self.only_prefix:
            raise _StopTracing
        self._record(Fork(size))
        fork_node = self.last_node
        branches = []
        for i in range(size):
            branch = TracedProgram(self.program, self.arguments, self.backend)
            branch.variables = dict(self.variables)
            branch.last_node = TraceNode(GetForkItem(i), fork_node)
            branch.nodes.append(branch.last_node)
            branches.append(branch)
        return TracedForks(branches)

    def copy(self) -> TracedProgram:
        return self.fork(1)[0]

    def __enter__(self) -> TracedProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _unknown(self, what: str) -> Any:
        raise TypeError(f"{what} is not known while tracing: nothing has been generated")

    def text(self) -> str:
        return str(self._unknown("the text"))

    def messages(self) -> list[dict[str, Any]]:
        return list(self._unknown("the messages"))

    def get_meta_info(self, name: str) -> dict[str, Any]:
        return dict(self._unknown(f"the meta info of {name!r}"))

    def sync(self) -> None:
        return None

    # ----- reading the trace ------------------------------------------------------------

    def flatten_nodes(self) -> list[Node]:
        """The appended primitives in order (roles, text, gens, selects, placeholders)."""
        return [entry.expr for entry in self.nodes]

    def __repr__(self) -> str:
        return f"<TracedProgram {self.program!r}: {len(self.nodes)} nodes>"


class TracedForks:
    """`s.fork(n)` while tracing: branches that record what each is given."""

    def __init__(self, states: list[TracedProgram]) -> None:
        self.states = states

    def __getitem__(self, index: int) -> TracedProgram:
        return self.states[index]

    def __setitem__(self, index: int, state: TracedProgram) -> None:
        if state is not self.states[index]:
            raise TypeError("a fork's branches cannot be replaced; append with forks[i] += ...")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[TracedProgram]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> TracedForks:
        for i, state in enumerate(self.states):
            if isinstance(other, (list, tuple)):
                state += other[i]
            else:
                state += other(i) if callable(other) else other
        return self

    def join(self, mode: str = "gather_variable") -> None:
        if mode not in ("gather_variable", "concate_and_append"):
            raise ValueError(f"unknown join mode {mode!r}")


def _arguments(
    func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The body's arguments by name: the given ones, placeholders for the rest."""
    parameters = list(inspect.signature(func).parameters.values())[1:]
    named: dict[str, Any] = {}
    for parameter, value in zip(parameters, args, strict=False):
        named[parameter.name] = value
    named.update(kwargs)
    for parameter in parameters:
        if parameter.name not in named and parameter.kind not in (
            parameter.VAR_POSITIONAL,
            parameter.VAR_KEYWORD,
        ):
            named[parameter.name] = Argument(parameter.name)
    return named


def _call(func: Callable[..., Any], state: TracedProgram, arguments: dict[str, Any]) -> Any:
    """Run the body on `state` in this context (an async body must not await anything)."""
    token = _current.set(state)
    try:
        result = func(state, **arguments)
        if inspect.iscoroutine(result):
            try:
                result.send(None)
            except StopIteration as done:
                return done.value
            result.close()
            raise TypeError("an async program that awaits cannot be traced")
        return result
    finally:
        _current.reset(token)


def trace_program(
    func: Callable[..., Any],
    program: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    backend: Backend | None,
) -> TracedProgram:
    """Trace `func` (see the module); the current tracer, if any, records it as a child."""
    arguments = _arguments(func, args, kwargs)
    state = TracedProgram(program, arguments, backend)
    parent = current_tracer()
    if parent is not None:
        parent.child_states.append(state)
    state.ret_value = _call(func, state, arguments)
    return state


def prefix_nodes(func: Callable[..., Any], program: str, bound: dict[str, Any]) -> list[Node]:
    """The text and roles the body appends before its first argument, gen, select or fork
    (what SGLang caches). A body that trips over a placeholder (TypeError, AttributeError,
    as SGLang allows) simply ends the prefix there."""
    arguments = _arguments(func, (), bound)
    state = TracedProgram(program, arguments, only_prefix=True)
    with suppress(_StopTracing, TypeError, AttributeError):
        _call(func, state, arguments)
    return state.flatten_nodes()


async def render_prefix(nodes: Sequence[Node], backend: Backend) -> str:
    """The prefix's text as the executor would write it (roles by the backend's template)."""
    text = []
    template = None
    for node in nodes:
        if isinstance(node, Text):
            text.append(node.text)
        elif isinstance(node, (RoleBegin, RoleEnd)):
            template = template or await backend.chat_template()
            begin, end = template.role_markers(node.role)
            text.append(begin if isinstance(node, RoleBegin) else end)
    return "".join(text)


async def cached_prefix(
    func: Callable[..., Any], program: str, bound: dict[str, Any], backend: Backend
) -> str:
    """The constant prefix `Program.cache()` computes in the engine."""
    return await render_prefix(prefix_nodes(func, program, bound), backend)
