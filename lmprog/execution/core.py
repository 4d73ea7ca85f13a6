"""Runs one program state's primitives, in order, against a backend, on the background loop.

`submit` appends to the log and returns at once (after checking the backend can honour the
primitive); a worker task runs the log in order. Every named value has a future, so a reader
waits only for the primitive that produces it. A fork's branches start from a snapshot taken
when the parent's log reaches the fork point, and run as tasks of their own.

This module is the log itself; each primitive that does more than append text runs in a module
of its own, as a function of the `Execution`: `turns` (roles, images, tool results), `gen`,
`select`, `tool_calls` (native tool calls), `thinking` (think and separate_reasoning), all
sending through `request`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from lmprog.backends.base import Affinity, Backend, ImagePart
from lmprog.cache_report import CacheRow
from lmprog.constraints import Constraint, choices_constraint
from lmprog.errors import LmprogError, ProgramError, UnsupportedFeatureError
from lmprog.execution.gen import gen, validates
from lmprog.execution.request import routing
from lmprog.execution.select import select
from lmprog.execution.thinking import separate_reasoning, think
from lmprog.execution.tool_calls import native_tool_gen, takes_native_path
from lmprog.execution.turns import image, role_begin, role_end, tool_result
from lmprog.ir import (
    Gen,
    Image,
    Node,
    RoleBegin,
    RoleEnd,
    SamplingParams,
    Select,
    SeparateReasoning,
    Text,
    Think,
    ToolResult,
    VarScopeBegin,
    VarScopeEnd,
    flatten,
)
from lmprog.prefix_lint import Origin, RunProbe
from lmprog.speculation import Speculation
from lmprog.tools import ToolCall
from lmprog.trace import Tracer

ChunkKind = Literal["text", "role", "gen"]


@dataclass(frozen=True)
class Chunk:
    """A piece of the state's text: who made it, and which variables it belongs to."""

    text: str
    kind: ChunkKind
    names: tuple[str, ...] = ()
    meta: dict[str, Any] | None = None  # a streamed gen piece's: tokens so far (SGLang's)


@dataclass
class _Snapshot:
    chunks: list[Chunk]
    variables: dict[str, Any]
    meta: dict[str, dict[str, Any]]
    messages: list[dict[str, Any]]
    role: str | None
    role_start: int
    role_parts: list[dict[str, Any]]
    images: list[ImagePart]
    scopes: dict[str, int]
    loose_text: bool
    marks: list[tuple[int, Origin]]
    turn_calls: list[tuple[int, int, ToolCall]]


@dataclass(frozen=True)
class _ForkPoint(Node):
    snapshot: asyncio.Future[_Snapshot] = field(compare=False)
    branches: int = 1


@dataclass(frozen=True)
class _At(Node):
    """The text that follows was appended by the `s += ...` at `origin` (for the lint)."""

    origin: Origin


DEFAULT_SAMPLING = SamplingParams(max_new_tokens=128)
WARM_PREFIX_CHARS = 1000  # below ~250 tokens a warm-up request costs more than it saves


class Execution:
    """The running log of one program state (a program, or one branch of a fork).

    The public attributes are the state the primitive modules of this package read and write
    (the text, the open turn, positions in the text); the underscored ones are the worker's."""

    def __init__(
        self,
        backend: Backend,
        program: str,
        defaults: SamplingParams,
        *,
        stream: bool = False,
        fork_of: asyncio.Future[_Snapshot] | None = None,
        probe: RunProbe | None = None,
        tracer: Tracer | None = None,
        spec_tokens: int = 0,
    ) -> None:
        self.backend = backend
        self.tracer = tracer or Tracer(program, backend.name)
        self.span = self.tracer.root  # the primitive running now (parent of its requests)
        # one key per program run, its forks included (they share the tracer): a router keeps
        # all its requests on the worker that holds its prefix
        self.affinity = Affinity(self.tracer.trace_id)
        self.program = program
        self.defaults = defaults.merged_over(DEFAULT_SAMPLING)
        self.stream = stream
        self.chunks: list[Chunk] = []
        self.variables: dict[str, Any] = {}
        self.meta: dict[str, dict[str, Any]] = {}
        self.messages: list[dict[str, Any]] = []
        self.error: ProgramError | None = None
        self.children: list[Execution] = []
        self.requests: list[CacheRow] = []  # this state's own, for cache_report()
        self.constraints: dict[str, Constraint | None] = {}  # by gen name, for partial_iter
        self.probe = probe  # the prefix-order lint's, until this run's first request
        self.marks: list[tuple[int, Origin]] = []  # where each `s +=` line's text starts
        self._submitted_origin: Origin | None = None
        # from gen(think=...), for the gen that follows
        self.pending_reasoning: str | None = None
        self.role: str | None = None
        self.role_start = 0
        self.role_parts: list[dict[str, Any]] = []
        # the open assistant turn's tool calls: where each one's text starts and ends
        self.turn_calls: list[tuple[int, int, ToolCall]] = []
        self.images: list[ImagePart] = []
        self.scopes: dict[str, int] = {}
        self.text_len = 0
        self.loose_text = False  # text outside any role (a chat-only model cannot take it)
        self._pending: deque[Node] = deque()
        self._futures: dict[str, asyncio.Future[Any]] = {}
        self.separating: dict[str, int] = {}  # gens whose value a separate_reasoning rewrites
        self._worker: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._changed: asyncio.Event | None = None  # made when a reader waits (`changed`)
        self._fork_of = fork_of
        self.spec_tokens = spec_tokens
        self.speculation = Speculation(spec_tokens) if spec_tokens else None
        self.finished = False
        if fork_of is not None:
            self._ensure_worker()

    # ----- submitting -------------------------------------------------------------------

    def submit(self, node: Node, origin: Origin | None = None) -> None:
        """Check and enqueue `node`; raises ProgramError at once if the backend can't run it.
        `origin`, the `s += ...` line, is kept only while the lint still needs it."""
        if origin is not None and self.probe is not None and origin != self._submitted_origin:
            self._pending.append(_At(origin))
            self._submitted_origin = origin
        for primitive in flatten(node):
            try:
                self._check(primitive)
            except LmprogError as exc:
                raise ProgramError(self.program, describe(primitive), exc) from exc
            for name in _produces(primitive):
                if isinstance(primitive, SeparateReasoning) and name in primitive.targets:
                    continue  # the gen's own future waits for the separation (_resolve)
                self._futures[name] = asyncio.get_running_loop().create_future()
                if isinstance(primitive, Gen):
                    self.constraints[name] = primitive.constraint
            if isinstance(primitive, SeparateReasoning):
                for target in primitive.targets:  # readers get the answer, not the raw text
                    self.separating[target] = self.separating.get(target, 0) + 1
            self._pending.append(primitive)
        self._ensure_worker()

    def _check(self, node: Node) -> None:
        if isinstance(node, Gen):
            native = self.backend.capabilities.native_tools
            if node.tools and node.tool_path == "native" and not native:
                raise UnsupportedFeatureError(
                    self.backend.name,
                    "send tools to a server that parses tool calls",
                    'use gen(..., tool_path="constrained"), or a chat model on such a server',
                )
            if node.tools and node.tool_path != "constrained" and native:
                return  # the constraint is checked if the server turns out not to parse calls
            if not validates(self, node):
                self.backend.check_constraint(node.constraint)
        elif isinstance(node, Select):
            if node.method.decodes:
                self.backend.check_constraint(choices_constraint(list(node.choices)))
            else:
                self.backend.check_choices_method(node.method)
        elif isinstance(node, Image):
            self.backend.check_images()

    def _ensure_worker(self) -> None:
        if self._worker is None and (self._pending or self._fork_of is not None):
            self._idle.clear()
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def fork_point(self, branches: int = 1) -> asyncio.Future[_Snapshot]:
        """A future snapshot of this state once everything submitted so far has run."""
        future: asyncio.Future[_Snapshot] = asyncio.get_running_loop().create_future()
        self._pending.append(_ForkPoint(future, branches))
        self._ensure_worker()
        return future

    # ----- reading ----------------------------------------------------------------------

    @property
    def text(self) -> str:
        return "".join(chunk.text for chunk in self.chunks)

    async def get(self, name: str) -> Any:
        future = self._futures.get(name)
        if future is not None:
            return await asyncio.shield(future)
        if name in self.variables:
            return self.variables[name]
        if self.error is not None:
            raise self.error
        known = ", ".join(sorted(self.variables)) or "none yet"
        raise KeyError(f"program {self.program!r} has no variable {name!r} (known: {known})")

    def set(self, name: str, value: Any) -> None:
        self.variables[name] = value
        future = self._futures.pop(name, None)
        if future is not None and not future.done():
            future.set_result(value)

    def has(self, name: str) -> bool:
        return name in self.variables or name in self._futures

    def has_pending(self, name: str) -> bool:
        return name in self._futures

    def all_requests(self) -> Iterator[CacheRow]:
        """The cache-report rows of this state and of all its forks."""
        yield from self.requests
        for child in self.children:
            yield from child.all_requests()

    async def wait_idle(self, with_children: bool = False) -> None:
        await self._idle.wait()
        if with_children:
            for child in list(self.children):
                await child.wait_idle(with_children=True)

    async def changed(self) -> None:
        """Wait until a chunk is added or the state finishes."""
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()

    def mark_finished(self) -> None:
        self.finished = True
        self.tracer.finish(self.error)
        self.notify()

    def cancel(self) -> None:
        """Stop the requests in flight, here and in every fork (the program was cancelled)."""
        if self._worker is not None:
            self._worker.cancel()
        for child in self.children:
            child.cancel()

    def fail(
        self, primitive: str, exc: BaseException, raised_by_program: bool = False
    ) -> ProgramError:
        """Record the first failure, drop what is queued, and fail every waiting reader.
        `raised_by_program`: the program's own code raised `exc` (state.error() returns it)."""
        error = (
            exc
            if isinstance(exc, ProgramError)
            else ProgramError(self.program, primitive, exc, raised_by_program)
        )
        if self.error is None:
            self.error = error
        for future in self._futures.values():
            if not future.done():
                future.set_exception(self.error)
                future.exception()  # read now, so asyncio never logs it as unretrieved
        self._futures.clear()
        for node in self._pending:
            if isinstance(node, _ForkPoint) and not node.snapshot.done():
                node.snapshot.set_exception(self.error)
                node.snapshot.exception()
        self._pending.clear()
        self.notify()
        return self.error

    # ----- running ----------------------------------------------------------------------

    async def _work(self) -> None:
        node: Node | None = None
        try:
            if self._fork_of is not None:
                fork_of, self._fork_of = self._fork_of, None
                self._restore(await fork_of)
            while self._pending:
                node = self._pending.popleft()
                await self._run(node)
                self._resolve(node)
        except asyncio.CancelledError as exc:
            self.fail(describe(node) if node else "start", exc)
            raise
        except Exception as exc:
            self.fail(describe(node) if node else "fork", exc)
        finally:
            self._worker = None
            self._idle.set()
            self.notify()

    def _resolve(self, node: Node) -> None:
        for name in _produces(node):
            if not isinstance(node, SeparateReasoning) and self.separating.get(name):
                continue  # the separate_reasoning that follows resolves it
            future = self._futures.pop(name, None)
            if future is not None and not future.done():
                future.set_result(self.variables.get(name))

    async def _run(self, node: Node) -> None:
        if self.speculation is not None and not isinstance(node, (Gen, _At, VarScopeBegin)):
            if isinstance(node, Text):
                self.speculation.consume(node.text)
            elif not isinstance(node, VarScopeEnd):
                self.speculation.discard()
        if isinstance(node, (Gen, Select, Think)):
            await self._traced(node)
        elif isinstance(node, Text):
            self.append(node.text, "text")
        elif isinstance(node, RoleBegin):
            await role_begin(self, node)
        elif isinstance(node, RoleEnd):
            await role_end(self, node)
        elif isinstance(node, Image):
            await image(self, node)
        elif isinstance(node, SeparateReasoning):
            separate_reasoning(self, node)
        elif isinstance(node, ToolResult):
            await tool_result(self, node)
        elif isinstance(node, VarScopeBegin):
            self.scopes[node.name] = self.text_len
        elif isinstance(node, VarScopeEnd):
            start = self.scopes.pop(node.name, None)
            if start is None:
                raise LmprogError(f"var_scope {node.name!r} ended without beginning")
            self.variables[node.name] = self.text[start:]
        elif isinstance(node, _At):
            if self.probe is not None:
                self.marks.append((self.text_len, node.origin))
        elif isinstance(node, _ForkPoint):
            if node.branches > 1 and len(self.text) >= WARM_PREFIX_CHARS:
                # Branches go out together: on engines whose prefix cache all requests share
                # (vLLM, SGLang), computing the shared prefix once first lets every branch
                # reuse it instead of each computing it at the same time.
                with routing(self, self.span):
                    await self.backend.warm(self.text)
            node.snapshot.set_result(self._snapshot())
        else:
            raise TypeError(f"unknown primitive {node!r}")

    def append(
        self,
        text: str,
        kind: ChunkKind,
        name: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Add a piece of text made by `kind` (of gen `name`, and of every open var scope)."""
        if not text:
            return
        if self.role is None and kind != "role":
            self.loose_text = True
        names = (name, *self.scopes) if name else tuple(self.scopes)
        self.chunks.append(Chunk(text, kind, names, meta))
        self.text_len += len(text)
        self.notify()

    def notify(self) -> None:
        """Wake the readers waiting in `changed`."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _traced(self, node: Gen | Select | Think) -> None:
        """Run a primitive that sends requests, inside a span of its own."""
        self.span = self.tracer.start("primitive", node.describe(), self.tracer.root)
        try:
            if isinstance(node, Gen):
                if node.tools and await takes_native_path(self, node):
                    await native_tool_gen(self, node)
                else:
                    await gen(self, node)
            elif isinstance(node, Select):
                await select(self, node)
            else:
                await think(self, node)
        except BaseException as exc:
            self.span.finish(exc)
            raise
        else:
            self.span.finish()
        finally:
            self.span = self.tracer.root

    # ----- forks ------------------------------------------------------------------------

    def _snapshot(self) -> _Snapshot:
        return _Snapshot(
            chunks=[Chunk(self.text, "text")] if self.chunks else [],
            variables=dict(self.variables),
            meta=dict(self.meta),
            messages=list(self.messages),
            role=self.role,
            role_start=self.role_start,
            role_parts=list(self.role_parts),
            images=list(self.images),
            scopes=dict(self.scopes),
            loose_text=self.loose_text,
            marks=list(self.marks),
            turn_calls=list(self.turn_calls),
        )

    def _restore(self, snapshot: _Snapshot) -> None:
        """Start from the parent's state at the fork point (copies: branches share nothing)."""
        self.chunks = list(snapshot.chunks)
        self.text_len = sum(len(c.text) for c in snapshot.chunks)
        self.variables.update(snapshot.variables)
        self.meta.update(snapshot.meta)
        self.messages = list(snapshot.messages)
        self.role = snapshot.role
        self.role_start = snapshot.role_start
        self.role_parts = list(snapshot.role_parts)
        self.images = list(snapshot.images)
        self.scopes = dict(snapshot.scopes)
        self.loose_text = snapshot.loose_text
        self.marks = list(snapshot.marks)
        self.turn_calls = list(snapshot.turn_calls)
        self.notify()


def describe(node: Node | None) -> str:
    """How a primitive is named in errors: `gen('answer')`, `select('tool')`, `user turn`..."""
    if isinstance(node, (Gen, Select, SeparateReasoning)):
        return node.describe()
    if isinstance(node, Text):
        return "text"
    if isinstance(node, (RoleBegin, RoleEnd)):
        return f"{node.role} turn"
    if isinstance(node, Image):
        return f"image({node.source!r})"
    if isinstance(node, ToolResult):
        return f"tool_result({node.tool!r})"
    if isinstance(node, (VarScopeBegin, VarScopeEnd)):
        return f"var_scope({node.name!r})"
    if isinstance(node, _ForkPoint):
        return "fork"
    return "program"


def _produces(node: Node) -> tuple[str, ...]:
    """The variables `node` writes (a separate_reasoning: its gens' answers and reasoning)."""
    if isinstance(node, (Gen, Select, VarScopeEnd)):
        return (node.name,) if node.name is not None else ()
    if isinstance(node, SeparateReasoning):
        return (
            *node.targets,
            *(node.process_name_for_reasoning(t) for t in node.targets),
        )
    return ()
