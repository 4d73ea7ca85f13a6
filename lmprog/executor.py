"""Runs one program state's primitives, in order, against a backend, on the background loop.

`submit` appends to the log and returns at once (after checking the backend can honour the
primitive); a worker task runs the log in order. Every named value has a future, so a reader
waits only for the primitive that produces it. A fork's branches start from a snapshot taken
when the parent's log reaches the fork point, and run as tasks of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from lmprog.backends.base import (
    Affinity,
    Backend,
    GenerateRequest,
    Generation,
    ImagePart,
    Routing,
    TextCallback,
    routed,
)
from lmprog.budget import request_cost
from lmprog.cache_report import CacheRow
from lmprog.choices import ChoiceLogprobs
from lmprog.constraints import Constraint, choices_constraint
from lmprog.errors import ConstraintError, LmprogError, ProgramError, UnsupportedFeatureError
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
from lmprog.logprobs import StreamedLogprobs, logprob_meta
from lmprog.prefix_lint import Origin, RunProbe
from lmprog.reasoning import reasoning_format
from lmprog.speculation import Speculation
from lmprog.tool_messages import (
    call_text,
    native_request,
    new_call_id,
    openai_tool_call,
    parse_native_call,
    tool_message,
)
from lmprog.tools import ANSWER_FIELD, ToolCall, run_tool
from lmprog.trace import Span, Tracer, cost_attributes, traceparent
from lmprog.usage import token_usage
from lmprog.validation import VALIDATABLE, generate_validated

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
    """The running log of one program state (a program, or one branch of a fork)."""

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
        self._span = self.tracer.root  # the primitive running now (parent of its requests)
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
        self._marks: list[tuple[int, Origin]] = []  # where each `s +=` line's text starts
        self._submitted_origin: Origin | None = None
        self._reasoning: str | None = None  # from gen(think=...), for the gen that follows
        self._role: str | None = None
        self._role_start = 0
        self._role_parts: list[dict[str, Any]] = []
        # the open assistant turn's tool calls: where each one's text starts and ends
        self._turn_calls: list[tuple[int, int, ToolCall]] = []
        self._images: list[ImagePart] = []
        self._scopes: dict[str, int] = {}
        self._text_len = 0
        self._loose_text = False  # text outside any role (a chat-only model cannot take it)
        self._pending: deque[Node] = deque()
        self._futures: dict[str, asyncio.Future[Any]] = {}
        self._separating: dict[str, int] = {}  # gens whose value a separate_reasoning rewrites
        self._worker: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._changed = asyncio.Event()
        self._fork_of = fork_of
        self.spec_tokens = spec_tokens
        self._speculation = Speculation(spec_tokens) if spec_tokens else None
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
                    self._separating[target] = self._separating.get(target, 0) + 1
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
            if not self._validates(node):
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
        await self._changed.wait()

    def mark_finished(self) -> None:
        self.finished = True
        self.tracer.finish(self.error)
        self._notify()

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
        self._notify()
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
            self._notify()

    def _resolve(self, node: Node) -> None:
        for name in _produces(node):
            if not isinstance(node, SeparateReasoning) and self._separating.get(name):
                continue  # the separate_reasoning that follows resolves it
            future = self._futures.pop(name, None)
            if future is not None and not future.done():
                future.set_result(self.variables.get(name))

    async def _run(self, node: Node) -> None:
        if self._speculation is not None and not isinstance(node, (Gen, _At, VarScopeBegin)):
            if isinstance(node, Text):
                self._speculation.consume(node.text)
            elif not isinstance(node, VarScopeEnd):
                self._speculation.discard()
        if isinstance(node, (Gen, Select, Think)):
            await self._traced(node)
        elif isinstance(node, Text):
            self._append(node.text, "text")
        elif isinstance(node, RoleBegin):
            await self._role_begin(node)
        elif isinstance(node, RoleEnd):
            await self._role_end(node)
        elif isinstance(node, Image):
            await self._image(node)
        elif isinstance(node, SeparateReasoning):
            self._separate_reasoning(node)
        elif isinstance(node, ToolResult):
            await self._tool_result(node)
        elif isinstance(node, VarScopeBegin):
            self._scopes[node.name] = self._text_len
        elif isinstance(node, VarScopeEnd):
            start = self._scopes.pop(node.name, None)
            if start is None:
                raise LmprogError(f"var_scope {node.name!r} ended without beginning")
            self.variables[node.name] = self.text[start:]
        elif isinstance(node, _At):
            if self.probe is not None:
                self._marks.append((self._text_len, node.origin))
        elif isinstance(node, _ForkPoint):
            if node.branches > 1 and len(self.text) >= WARM_PREFIX_CHARS:
                # Branches go out together: on engines whose prefix cache all requests share
                # (vLLM, SGLang), computing the shared prefix once first lets every branch
                # reuse it instead of each computing it at the same time.
                with self._routed(self._span):
                    await self.backend.warm(self.text)
            node.snapshot.set_result(self._snapshot())
        else:
            raise TypeError(f"unknown primitive {node!r}")

    def _append(
        self,
        text: str,
        kind: ChunkKind,
        name: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if not text:
            return
        if self._role is None and kind != "role":
            self._loose_text = True
        names = (name, *self._scopes) if name else tuple(self._scopes)
        self.chunks.append(Chunk(text, kind, names, meta))
        self._text_len += len(text)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _role_begin(self, node: RoleBegin) -> None:
        if self._role is not None:
            raise LmprogError(f"{node.role} turn opened inside an open {self._role} turn")
        template = await self.backend.chat_template()
        begin, _ = template.role_markers(node.role)
        self._append(begin, "role")
        self._role, self._role_start, self._role_parts = node.role, self._text_len, []
        self._turn_calls = []

    async def _role_end(self, node: RoleEnd) -> None:
        if self._role != node.role:
            raise LmprogError(f"{node.role} turn closed but the open turn is {self._role}")
        template = await self.backend.chat_template()
        _, end = template.role_markers(node.role)
        tail = self.text[self._role_start :]
        if self._turn_calls:
            self.messages.append(self._calling_message(tail))
        elif self._role_parts:
            text_part = [{"type": "text", "text": tail}] if tail else []
            self.messages.append({"role": node.role, "content": [*self._role_parts, *text_part]})
        else:
            self.messages.append({"role": node.role, "content": tail})
        self._append(end, "role")
        self._role = None

    def _calling_message(self, tail: str) -> dict[str, Any]:
        """The assistant message of a turn that called tools: its text without the calls'
        JSON (None if nothing else), and the calls as `tool_calls`."""
        kept, at = [], self._role_start
        for start, end, _ in self._turn_calls:
            kept.append(self.text[at:start])
            at = end
        kept.append(self.text[at : self._role_start + len(tail)])
        content = "".join(kept)
        calls = [openai_tool_call(call) for _, _, call in self._turn_calls]
        self._turn_calls = []
        return {"role": "assistant", "content": content or None, "tool_calls": calls}

    async def _tool_result(self, node: ToolResult) -> None:
        """The `tool` turn answering a call, laid out by the chat template's tool role."""
        if self._role is not None:
            raise LmprogError(f"lp.tool_result() must follow the {self._role} turn, not sit in it")
        template = await self.backend.chat_template()
        begin, end = template.role_markers("tool")
        self._append(begin, "role")
        self._role = "tool"
        self._append(node.content, "text")
        self._append(end, "role")
        self._role = None
        self.messages.append(tool_message(node.call_id, node.tool, node.content))

    async def _image(self, node: Image) -> None:
        if self._role != "user":
            raise LmprogError("lp.image() must be inside a user turn")
        data, mime_type = node.data, node.mime_type
        if data is None:
            data, mime_type = await _download(node.source)
        before = self.text[self._role_start :]
        if before:
            self._role_parts.append({"type": "text", "text": before})
        self._role_parts.append(
            {
                "type": "image",
                "mime_type": mime_type,
                "source": node.source,
                "image_index": len(self._images),
            }
        )
        self._images.append(ImagePart(data, mime_type))
        self._append(self.backend.image_marker, "text")
        self._role_start = self._text_len  # the marker is the backend's, not message text

    def _request(self, sampling: SamplingParams, **fields: Any) -> GenerateRequest:
        """Everything a backend may need: the text so far, and the same as chat messages."""
        stop = sampling.stop or ()
        chat_only = self.backend.capabilities.chat_only
        if chat_only:
            self._check_chat_shape()
        elif self._role is not None:
            template_end = self._end_marker()
            if template_end and template_end not in stop:
                stop = (*stop, template_end)
        return GenerateRequest(
            prompt=self.text,
            sampling=SamplingParams(**{**sampling.__dict__, "stop": stop or None}),
            images=tuple(self._images),
            messages=tuple(self.messages),
            prefill=self.text[self._role_start :] if self._role == "assistant" else "",
            **fields,
        )

    def _observe(self, primitive: str, prompt: str) -> None:
        """Show the lint this run's first prompt; then stop recording where text came from."""
        if self.probe is not None:
            self.probe.observe(self.backend.name, primitive, prompt, self._marks)
            self.probe, self._marks = None, []

    def _check_chat_shape(self) -> None:
        """A chat-only model sees messages: text outside a role, or a gen outside an assistant
        turn, has no place in them and would be lost, so it is refused instead."""
        if self._loose_text:
            raise UnsupportedFeatureError(
                self.backend.name,
                "take text outside a role: it is a chat model",
                "wrap the text in lp.system(...), lp.user(...) or lp.assistant(...)",
            )
        if self._role != "assistant":
            raise UnsupportedFeatureError(
                self.backend.name,
                "generate outside an assistant turn: it is a chat model",
                "put the gen inside lp.assistant(...)",
            )

    def _end_marker(self) -> str:
        template = self.backend.cached_chat_template()
        if template is None or self._role is None:
            return ""
        return template.role_markers(self._role)[1].strip()

    def _routed(self, span: Span) -> contextlib.AbstractContextManager[None]:
        """Requests sent within: this program's routing key, and `span` as their trace parent."""
        return routed(Routing(self.affinity, traceparent(span)))

    async def _traced(self, node: Gen | Select | Think) -> None:
        """Run a primitive that sends requests, inside a span of its own."""
        self._span = self.tracer.start("primitive", node.describe(), self.tracer.root)
        try:
            if isinstance(node, Gen):
                await self._gen(node)
            elif isinstance(node, Select):
                await self._select(node)
            else:
                await self._think(node)
        except BaseException as exc:
            self._span.finish(exc)
            raise
        else:
            self._span.finish()
        finally:
            self._span = self.tracer.root

    async def _send(
        self, request: GenerateRequest, label: str | None, on_text: TextCallback | None = None
    ) -> Generation:
        """One backend request, recorded as a span and as a row of the cache report."""
        sampling = request.sampling
        span = self.tracer.start(
            "request",
            "generate",
            self._span,
            backend=self.tracer.root.attributes["backend"],
            operation="chat" if self.backend.capabilities.chat_only else "text_completion",
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            constrained=request.constraint.kind if request.constraint else None,
        )
        try:
            with self._routed(span):
                generation = await self.backend.generate(request, on_text)
        except BaseException as exc:
            span.finish(exc)
            raise
        token_usage(self.backend).add(generation.prompt_tokens, generation.completion_tokens)
        cost = request_cost(self.backend, generation)
        span.text = generation.text
        span.finish(
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            cached_tokens=generation.cached_tokens,
            finish_reason=generation.finish_reason,
            **cost_attributes(cost),
        )
        self.requests.append(
            CacheRow("gen", label, 1, generation.prompt_tokens, generation.cached_tokens, cost)
        )
        return generation

    def _validates(self, node: Gen) -> bool:
        """Whether `node` takes the opt-in generate-validate-retry path on this backend."""
        if not node.validate_attempts or node.constraint is None:
            return False
        if node.constraint.kind not in VALIDATABLE:
            return False  # check_constraint then says what would work
        try:
            self.backend.check_constraint(node.constraint)
        except UnsupportedFeatureError:
            return True
        return False

    async def _gen(self, node: Gen) -> None:
        if node.tools and await self._takes_native_path(node):
            await self._native_tool_gen(node)
            return
        sampling = node.sampling.merged_over(self.defaults)
        validates = self._validates(node)
        # dtype=str: the quotes are written here and the engine generates what is between
        # them, stopping at the closing quote (a model may end with '",'; see dtype_constraint)
        quote = '"' if node.constraint is not None and node.constraint.quoted else ""
        if quote and not validates:
            self._append(quote, "gen", node.name)
            stops = (*(sampling.stop or ()), quote)
            sampling = SamplingParams(**{**sampling.__dict__, "stop": tuple(dict.fromkeys(stops))})
        else:
            quote = ""
        if self._speculation is not None:
            if self._speculation.eligible(node, sampling) and not validates:
                if await self._speculative_gen(node, sampling):
                    return
            else:
                self._speculation.discard()
        request = self._request(
            sampling,
            constraint=node.constraint,
            return_logprob=node.return_logprob,
            top_logprobs_num=node.top_logprobs_num,
        )
        self._observe(node.describe(), request.prompt)
        started = time.perf_counter()
        gen_start = self._text_len
        path = self.backend.capabilities.enforcement if node.constraint else None
        if validates:
            assert node.constraint is not None
            values = []
            generations = []
            for i in range(node.n):
                generation, parsed, attempts = await generate_validated(
                    lambda r, on_text: self._send(r, node.name, on_text),
                    self.backend.capabilities.streaming,
                    _reseeded(request, i * node.validate_attempts),
                    node.constraint,
                    node.validate_attempts,
                    lambda g: self._parse(node, g),
                )
                generations.append(generation)
                values.append(parsed)
            path = f"validated after {attempts} attempt{'s' * (attempts > 1)}"
            self._append(generations[0].text, "gen", node.name)
            value: Any = values if node.n > 1 else values[0]
            generation = generations[0]
        elif node.n > 1:
            generations = await asyncio.gather(
                *(self._send(_reseeded(request, i), node.name) for i in range(node.n))
            )
            values = [self._parse(node, g, quote) for g in generations]
            self._append(generations[0].text + _closing(generations[0], quote), "gen", node.name)
            value = values
            generation = generations[0]
        else:
            streamed: list[str] = []
            so_far = StreamedLogprobs()

            def on_text(piece: str, logprobs: Sequence[dict[str, Any]] = ()) -> None:
                streamed.append(piece)
                so_far.add(logprobs)
                # SGLang's per-chunk meta_info: the tokens generated so far (from their
                # logprobs, else one per piece: engines stream token by token)
                meta = {
                    "completion_tokens": len(so_far.tokens) or len(streamed),
                    "finish_reason": None,
                }
                if node.return_logprob or node.top_logprobs_num:
                    meta.update(so_far.meta())
                self._append(piece, "gen", node.name, meta)

            generation = await self._send(request, node.name, on_text if self.stream else None)
            value = self._parse(node, generation, quote)
            if streamed:
                _check_stream(streamed, generation)
            else:
                self._append(generation.text, "gen", node.name)
            self._append(_closing(generation, quote), "gen", node.name)
        if node.tools and node.n == 1 and node.constraint is not None:
            if ANSWER_FIELD in value:  # tool_choice="auto": the model answered in text
                value = value[ANSWER_FIELD]
            else:
                value = await run_tool(node.tools, value, new_call_id())
                self._record_call(gen_start, value)
        self._span.attributes.update(
            {"variable": node.name, "constraint": _described(node), "constraint_path": path}
        )
        if node.name is not None:
            self.variables[node.name] = value
            meta = _meta(generation, time.perf_counter() - started)
            if node.constraint is not None:
                meta.update(constraint=node.constraint.description, constraint_path=path)
            self.meta[node.name] = meta
            self._attach_reasoning(node.name)

    async def _speculative_gen(self, node: Gen, sampling: SamplingParams) -> bool:
        """Serve `node` from text the model wrote ahead (one request for several gens, see
        lmprog/speculation.py); False when it needs a request of its own after all."""
        speculation = self._speculation
        assert speculation is not None
        started = time.perf_counter()
        served = speculation.serve(sampling)
        generation: Generation | None = None
        if served is None:
            request = self._request(speculation.request_sampling(sampling, ()))
            # a chat model that cannot continue a turn's text writes the turn from its start;
            # the text the program put there must then be what the model wrote first
            capabilities = await self.backend.detected_capabilities()
            prefill = "" if capabilities.continues_turns else request.prefill
            if prefill:
                request = dataclasses.replace(request, prefill="")
            self._observe(node.describe(), request.prompt)
            generation = await self._send(request, node.name)
            speculation.begin(generation.text, sampling, generation.finish_reason)
            speculation.consume(prefill)
            served = speculation.serve(sampling)
            if served is None:
                return False
        self._append(served.value, "gen", node.name)
        if node.name is not None:
            self.variables[node.name] = served.value
            self.meta[node.name] = {
                **(_meta(generation, 0.0) if generation else {}),
                "finish_reason": "stop",
                "completion_tokens": None if generation is None else generation.completion_tokens,
                "speculative": "requested" if generation else "served from the text ahead",
                "latency_s": time.perf_counter() - started,
            }
        self._span.attributes.update({"variable": node.name, "speculative": generation is None})
        return True

    async def _takes_native_path(self, node: Gen) -> bool:
        """Whether a tool gen sends the tools to the server (which parses the call) rather
        than generating the call under a schema: where the server can, unless told."""
        if node.tool_path == "constrained" or node.n > 1:
            return False
        parsing = await self.backend.tool_call_parsing()
        if node.tool_path == "native":
            if parsing == "no":
                raise UnsupportedFeatureError(
                    self.backend.name,
                    "parse tool calls (the server does not)",
                    'use gen(..., tool_path="constrained")',
                )
            return True
        if parsing != "yes" and not self._validates(node):
            self.backend.check_constraint(node.constraint)  # deferred by _check
        return parsing == "yes"

    async def _native_tool_gen(self, node: Gen) -> None:
        """The server gets the tools and answers with a parsed call (checked against the
        tool's schema, then run) or, where tool_choice lets it, with text."""
        tools, tool_choice = native_request(node.tools, node.tool_choice)
        request = self._request(
            node.sampling.merged_over(self.defaults), tools=tools, tool_choice=tool_choice
        )
        self._observe(node.describe(), request.prompt)
        started = time.perf_counter()
        generation = await self._send(request, node.name)
        self._append(generation.text, "gen", node.name)
        value: Any = generation.text
        if generation.tool_calls:
            call, call_id = parse_native_call(generation.tool_calls, node.tools, node.tool_choice)
            start = self._text_len
            self._append(call_text(call), "gen", node.name)
            value = await run_tool(node.tools, call, call_id)
            self._record_call(start, value)
        elif node.tool_choice not in ("auto", "none"):
            raise ConstraintError(
                f"the server answered in text, not with the call tool_choice="
                f"{node.tool_choice!r} asks for: {generation.text[:80]!r}"
            )
        path = "native tool call"
        self._span.attributes.update(
            {"variable": node.name, "constraint": "a tool call", "constraint_path": path}
        )
        if node.name is not None:
            self.variables[node.name] = value
            meta = _meta(generation, time.perf_counter() - started)
            meta.update(constraint="a tool call", constraint_path=path)
            if len(generation.tool_calls) > 1:  # asked for one (parallel_tool_calls=false)
                meta["tool_calls_returned"] = len(generation.tool_calls)
            self.meta[node.name] = meta
            self._attach_reasoning(node.name)

    def _record_call(self, start: int, call: ToolCall) -> None:
        """Remember a call made in the open assistant turn, for that turn's message."""
        if self._role == "assistant":
            self._turn_calls.append((start, self._text_len, call))

    async def _think(self, node: Think) -> None:
        """The reasoning span of `gen(think=...)`: free text up to the closing delimiter or the
        budget, then the delimiter (also when the budget cut it short), so the constrained
        answer that follows starts in the right place."""
        opening, closing = node.delimiters or await self._think_delimiters()
        self._append(opening, "text")
        merged = node.sampling.merged_over(self.defaults).__dict__
        stops = tuple(dict.fromkeys((closing, closing.strip())))
        sampling = SamplingParams(**{**merged, "max_new_tokens": node.budget, "stop": stops})
        generation = await self._send(self._request(sampling), f"{node.name} (reasoning)")
        reasoning = generation.text.rstrip() if closing[:1].isspace() else generation.text
        self._append(reasoning, "text")
        self._append(closing, "text")
        self._reasoning = reasoning

    async def _think_delimiters(self) -> tuple[str, str]:
        """The model's own reasoning tags where its chat template uses them, else plain words
        (which a base model also follows)."""
        try:
            template = await self.backend.chat_template()
        except LmprogError:
            template = None
        if template is not None and "<think>" in template.source:
            return "<think>\n", "\n</think>\n\n"
        return " Reasoning:", "\nAnswer:"

    def _parse(self, node: Gen, generation: Generation, quote: str = "") -> Any:
        """The value of `generation` under the gen's constraint (`quote`: the quotes the
        executor wrote around it, for dtype=str)."""
        if node.constraint is None:
            return generation.text
        try:
            if node.constraint.kind == "grammar" and generation.finish_reason == "length":
                raise ConstraintError("the output may be incomplete under the grammar")
            text = quote + generation.text + _closing(generation, quote)
            return node.constraint.parse(text)
        except ConstraintError as exc:
            if generation.finish_reason == "length":
                raise ConstraintError(
                    f"{exc}; generation stopped at the token limit before the output was "
                    "complete: raise max_tokens"
                ) from exc
            raise

    async def _select(self, node: Select) -> None:
        started = time.perf_counter()
        context = self._request(self.defaults)
        self._observe(node.describe(), context.prompt)
        span = self.tracer.start(
            "request", "score_choices", self._span,
            backend=self.tracer.root.attributes["backend"], choices=len(node.choices),
        )  # fmt: skip
        row = CacheRow("select", node.name, 1, None, None)  # scoring: no token counts
        try:
            with self._routed(span):
                if node.method.decodes:
                    scored, generation = await self._decode_choice(context, node)
                    row = CacheRow(
                        "select", node.name, 1, generation.prompt_tokens,
                        generation.cached_tokens, request_cost(self.backend, generation),
                    )  # fmt: skip
                else:
                    scored = await self.backend.score_choices(context, node.choices, node.method)
        except BaseException as exc:
            span.finish(exc)
            raise
        span.finish()
        self.requests.append(row)
        path = scored[0].path if scored else None
        self._span.attributes.update(
            {"variable": node.name, "constraint": f"one of {len(node.choices)} choices",
             "constraint_path": path}
        )  # fmt: skip
        index = node.method.decide(scored, node.temperature)
        choice = node.choices[index]
        self._append(choice, "gen", node.name)
        if node.name is not None:
            value = choice
            if node.python_type is not None:
                value = choices_constraint(node.choices, node.python_type).parse(choice)
            self.variables[node.name] = value
            self.meta[node.name] = {
                **node.method.meta_info(scored),
                "constraint_path": path,
                "latency_s": time.perf_counter() - started,
            }
            self._attach_reasoning(node.name)

    async def _decode_choice(
        self, context: GenerateRequest, node: Select
    ) -> tuple[list[ChoiceLogprobs], Generation]:
        """lp.constrained_decoding: one generation under a choice constraint picks the choice."""
        request = dataclasses.replace(
            context,
            sampling=SamplingParams(
                max_new_tokens=max(len(c) for c in node.choices) + 8,
                temperature=node.temperature,
            ),
            constraint=choices_constraint(list(node.choices)),
        )
        generation = await self.backend.generate(request)
        token_usage(self.backend).add(generation.prompt_tokens, generation.completion_tokens)
        picked = generation.text
        if picked not in node.choices:
            raise ConstraintError(
                f"the engine decoded {picked[:80]!r} under a constraint to {len(node.choices)} "
                "choices, and it is none of them"
            )
        path = self.backend.capabilities.enforcement
        scored = [
            ChoiceLogprobs(c, (0.0 if c == picked else float("-inf"),), (c,), path=path)
            for c in node.choices
        ]
        return scored, generation

    def _separate_reasoning(self, node: SeparateReasoning) -> None:
        """Split each target's value into reasoning and answer (SGLang's separate_reasoning).
        The value becomes the answer and the text keeps only the answer, except while
        streaming: the raw text was already streamed, so it stays."""
        try:
            form = reasoning_format(node.model_type)
            for target in node.targets:
                raw = self.variables.get(target)
                if not isinstance(raw, str):
                    raise LmprogError(
                        f"separate_reasoning({target!r}) needs text, but {target!r} holds a "
                        f"{type(raw).__name__}"
                    )
                reasoning, answer = form.split(raw)
                self.variables[target] = answer
                self.variables[node.process_name_for_reasoning(target)] = reasoning
                self.meta.setdefault(target, {})["reasoning"] = reasoning
                if not self.stream:
                    self._rewrite_gen_text(target, raw, answer)
        finally:
            for target in node.targets:
                self._separating[target] -= 1
                if not self._separating[target]:
                    del self._separating[target]

    def _rewrite_gen_text(self, name: str, raw: str, answer: str) -> None:
        """Replace the text gen `name` appended (`raw`, its last chunk) with `answer`, keeping
        every position recorded after it (role start, open var scopes) in step."""
        index = next(
            (
                i
                for i in range(len(self.chunks) - 1, -1, -1)
                if self.chunks[i].kind == "gen"
                and self.chunks[i].names[:1] == (name,)
                and self.chunks[i].text == raw
            ),
            None,
        )
        if index is None:
            return
        start = sum(len(c.text) for c in self.chunks[:index])
        delta = len(answer) - len(raw)
        old = self.chunks[index]
        self.chunks[index] = Chunk(answer, old.kind, old.names, old.meta)
        self._text_len += delta
        if self._role_start > start:
            self._role_start += delta
            for message in reversed(self.messages):  # its turn ended: fix the message too
                content = message.get("content")
                if isinstance(content, str) and raw in content:
                    head, _, tail = content.rpartition(raw)
                    message["content"] = head + answer + tail
                    break
        self._scopes = {k: v + delta if v > start else v for k, v in self._scopes.items()}
        self._notify()

    def _attach_reasoning(self, name: str) -> None:
        if self._reasoning is not None:
            self.meta[name]["reasoning"] = self._reasoning
            self._reasoning = None

    # ----- forks ------------------------------------------------------------------------

    def _snapshot(self) -> _Snapshot:
        return _Snapshot(
            chunks=[Chunk(self.text, "text")] if self.chunks else [],
            variables=dict(self.variables),
            meta=dict(self.meta),
            messages=list(self.messages),
            role=self._role,
            role_start=self._role_start,
            role_parts=list(self._role_parts),
            images=list(self._images),
            scopes=dict(self._scopes),
            loose_text=self._loose_text,
            marks=list(self._marks),
            turn_calls=list(self._turn_calls),
        )

    def _restore(self, snapshot: _Snapshot) -> None:
        """Start from the parent's state at the fork point (copies: branches share nothing)."""
        self.chunks = list(snapshot.chunks)
        self._text_len = sum(len(c.text) for c in snapshot.chunks)
        self.variables.update(snapshot.variables)
        self.meta.update(snapshot.meta)
        self.messages = list(snapshot.messages)
        self._role = snapshot.role
        self._role_start = snapshot.role_start
        self._role_parts = list(snapshot.role_parts)
        self._images = list(snapshot.images)
        self._scopes = dict(snapshot.scopes)
        self._loose_text = snapshot.loose_text
        self._marks = list(snapshot.marks)
        self._turn_calls = list(snapshot.turn_calls)
        self._notify()


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


async def _download(url: str) -> tuple[bytes, str]:
    try:
        async with httpx.AsyncClient(timeout=30, follow_redirects=True) as client:
            response = await client.get(url)
            response.raise_for_status()
    except httpx.HTTPError as exc:
        raise LmprogError(f"could not download the image at {url}: {exc}") from exc
    return response.content, response.headers.get("content-type", "image/png").split(";")[0]


def _reseeded(request: GenerateRequest, index: int) -> GenerateRequest:
    seed = request.sampling.seed
    sampling = SamplingParams(
        **{**request.sampling.__dict__, "seed": None if seed is None else seed + index}
    )
    return GenerateRequest(**{**request.__dict__, "sampling": sampling})


def _closing(generation: Generation, quote: str) -> str:
    """The closing quote of a dtype=str gen, unless the token limit cut the string short."""
    return quote if quote and generation.finish_reason != "length" else ""


def _check_stream(pieces: list[str], generation: Generation) -> None:
    streamed = "".join(pieces)
    if streamed != generation.text:
        raise LmprogError(
            f"the backend streamed {streamed[:80]!r} but returned {generation.text[:80]!r}"
        )


def _described(node: Gen) -> str | None:
    if node.tools:
        return "a tool call"
    return node.constraint.description if node.constraint else None


def _meta(generation: Generation, latency: float) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "finish_reason": generation.finish_reason,
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "cached_tokens": generation.cached_tokens,
        "latency_s": latency,
    }
    if generation.logprobs is not None:
        meta.update(logprob_meta(generation.logprobs))
    meta.update(generation.extra)
    return meta
