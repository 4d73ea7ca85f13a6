"""Immutable primitive nodes: what `s += ...` appends to a program's log.

Nodes are plain values. `+` concatenates them into a `Concat`; the executor flattens and runs
them in order. They hold no reference to a backend, so one node can serve many programs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

# SGLang's patterns for `gen(dtype=...)`, importable from here as from `sglang.lang.ir`
from lmprog.constraints import REGEX_BOOL as REGEX_BOOL
from lmprog.constraints import REGEX_FLOAT as REGEX_FLOAT
from lmprog.constraints import REGEX_INT as REGEX_INT
from lmprog.constraints import REGEX_STR as REGEX_STR
from lmprog.constraints import REGEX_STRING as REGEX_STRING
from lmprog.constraints import Constraint
from lmprog.tools import ToolSpec

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; None means "not set here", so layers (gen > run > function) merge."""

    max_new_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    stop_token_ids: tuple[int, ...] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    min_tokens: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    ignore_eos: bool | None = None

    def merged_over(self, defaults: SamplingParams) -> SamplingParams:
        """These settings, with `defaults` filling whatever is unset."""
        theirs = defaults.__dict__
        return self._of({k: v if v is not None else theirs[k] for k, v in self.__dict__.items()})

    def replaced(self, **changes: Any) -> SamplingParams:
        """These settings with `changes` (field names) set."""
        unknown = changes.keys() - SAMPLING_NAMES
        if unknown:
            raise TypeError(f"SamplingParams has no field {', '.join(sorted(unknown))}")
        return self._of({**self.__dict__, **changes})

    @classmethod
    def _of(cls, values: dict[str, Any]) -> SamplingParams:
        """An instance holding `values` (every field), without the frozen `__init__`'s one
        `object.__setattr__` per field: settings are merged for every request sent."""
        params = object.__new__(cls)
        object.__setattr__(params, "__dict__", values)
        return params

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SamplingParams:
        stop = kwargs.pop("stop", None)
        stop_ids = kwargs.pop("stop_token_ids", None)
        return _UNSET.replaced(
            stop=(stop,) if isinstance(stop, str) else (tuple(stop) if stop is not None else None),
            stop_token_ids=tuple(stop_ids) if stop_ids is not None else None,
            **kwargs,
        )


SAMPLING_NAMES = frozenset(f.name for f in fields(SamplingParams))
_UNSET = SamplingParams()


class Node:
    """Base of every primitive; supports `+` with strings and other nodes."""

    def __add__(self, other: Node | str) -> Concat:
        return Concat((*_parts(self), *_parts(as_node(other))))

    def __radd__(self, other: Node | str) -> Concat:
        return Concat((*_parts(as_node(other)), *_parts(self)))


def _parts(node: Node) -> tuple[Node, ...]:
    return node.parts if isinstance(node, Concat) else (node,)


def as_node(value: Node | str) -> Node:
    if isinstance(value, Node):
        return value
    if isinstance(value, str):
        return Text(value)
    raise TypeError(
        f"cannot append {type(value).__name__} to a program state; append a str or an lmprog "
        "primitive (lp.gen, lp.select, lp.user, ...)"
    )


@dataclass(frozen=True)
class Concat(Node):
    parts: tuple[Node, ...]

    @property
    def expr_list(self) -> list[Node]:
        """The parts (SGLang's `SglExprList.expr_list`)."""
        return list(self.parts)


@dataclass(frozen=True)
class Text(Node):
    text: str


@dataclass(frozen=True)
class RoleBegin(Node):
    role: Role


@dataclass(frozen=True)
class RoleEnd(Node):
    role: Role


@dataclass(frozen=True)
class Gen(Node):
    name: str | None
    sampling: SamplingParams
    constraint: Constraint | None = None
    n: int = 1
    return_logprob: bool = False
    top_logprobs_num: int = 0
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "required"  # "auto", "none", or a tool's name (lmprog.tools)
    tool_path: str | None = None  # "native" or "constrained"; None: native where the server can
    validate_attempts: int = 0  # fallback="validate": attempts where the backend can't enforce

    def describe(self) -> str:
        return f"gen({self.name!r})" if self.name else "gen()"


@dataclass(frozen=True)
class Think(Node):
    """A free reasoning span before the gen or select that follows it (`gen(think=...)`):
    at most `budget` tokens between `delimiters` (None: the model's own, see the executor)."""

    name: str | None
    sampling: SamplingParams
    budget: int
    delimiters: tuple[str, str] | None = None

    def describe(self) -> str:
        return f"gen({self.name!r}, think=...)" if self.name else "gen(think=...)"


@dataclass(frozen=True)
class Select(Node):
    name: str | None
    choices: tuple[str, ...]
    method: Any  # a ChoicesMethod; typed loosely to keep ir free of scoring code
    temperature: float = 0.0
    python_type: Any = None

    def describe(self) -> str:
        return f"select({self.name!r})" if self.name else "select()"


@dataclass(frozen=True)
class SeparateReasoning(Node):
    """`lp.separate_reasoning(gen(...), model_type=...)`: once the gens named in `targets` have
    run, split each value into the reasoning and the answer by `model_type`'s markers; the
    value becomes the answer and `<name>_reasoning_content` the reasoning."""

    model_type: str | None
    targets: tuple[str, ...]

    @property
    def name(self) -> str:
        """The reasoning variable of the last gen or select it separates."""
        return self.process_name_for_reasoning(self.targets[-1])

    @staticmethod
    def process_name_for_reasoning(name: str | None) -> str:
        """The variable that keeps `name`'s reasoning (SGLang's naming)."""
        if not name:
            raise ValueError(
                "separate_reasoning needs a named gen or select: name must be provided"
            )
        return f"{name}_reasoning_content"

    def describe(self) -> str:
        return f"separate_reasoning({self.targets[-1]!r})"

    def __repr__(self) -> str:
        return f"SeparateReasoning(model_type={self.model_type}, name={self.name})"


@dataclass(frozen=True)
class Image(Node):
    """An image for the current user turn: raw bytes plus a MIME type, or (data None) an
    http(s) URL the executor downloads when the image's turn runs."""

    data: bytes | None = field(repr=False)
    mime_type: str
    source: str


@dataclass(frozen=True)
class ToolResult(Node):
    """`lp.tool_result(call)`: the result of tool call `call_id`, as the `tool` turn that
    answers it."""

    call_id: str
    tool: str
    content: str


@dataclass(frozen=True)
class VarScopeBegin(Node):
    name: str


@dataclass(frozen=True)
class VarScopeEnd(Node):
    name: str


def flatten(node: Node) -> Sequence[Node]:
    return node.parts if isinstance(node, Concat) else (node,)
