"""The functions programs append with `s += ...`: gen, select, roles, images.

Each validates its arguments at once (a bad regex raises here, in the program body, before any
request) and returns an immutable node from ir.py.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from lmprog.choices import ChoicesMethod, token_length_normalized
from lmprog.constraints import Constraint, choices_constraint, make_constraint
from lmprog.errors import ConstraintError
from lmprog.ir import (
    Gen,
    Image,
    Node,
    Role,
    RoleBegin,
    RoleEnd,
    SamplingParams,
    Select,
    SeparateReasoning,
    Think,
    ToolResult,
    as_node,
    flatten,
)
from lmprog.tool_messages import result_text
from lmprog.tools import ToolCall, Tools, ToolSpec, chosen_specs, tool_specs, tools_constraint

DEFAULT_THINK_BUDGET = 256  # tokens of reasoning when gen(think=True) sets no budget


def gen(
    name: str | None = None,
    max_tokens: int | None = None,
    stop: str | Sequence[str] | None = None,
    stop_token_ids: Sequence[int] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    min_tokens: int | None = None,
    n: int = 1,
    regex: str | None = None,
    json_schema: dict[str, Any] | str | None = None,
    type: Any = None,
    choices: Sequence[str] | None = None,
    grammar: str | None = None,
    choices_method: ChoicesMethod | None = None,
    dtype: Any = None,
    return_logprob: bool = False,
    top_logprobs_num: int = 0,
    return_text_in_logprobs: bool | None = None,
    ignore_eos: bool = False,
    tools: Tools | None = None,
    tool_choice: str | None = None,
    tool_path: Literal["native", "constrained"] | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    seed: int | None = None,
    max_new_tokens: int | None = None,
    think: bool = False,
    think_budget: int | None = None,
    think_delimiters: tuple[str, str] | None = None,
    fallback: Literal["validate"] | None = None,
    max_attempts: int = 3,
) -> Node:
    """Generate text into variable `name`. Unset sampling values come from `run(...)`,
    then `@lp.function(...)`, then lmprog's defaults (128 new tokens).

    `think=True` (or `think_budget=N` tokens, default 256) lets the model reason freely first,
    between the model's own reasoning delimiters (`<think>`...`</think>` where its chat
    template has them, else `think_delimiters`, else "Reasoning:" ... "Answer:"); then the
    answer is generated under the constraint. `get_meta_info(name)["reasoning"]` keeps the
    reasoning; it is never parsed as the answer.

    `fallback="validate"` lets a backend that cannot enforce the constraint generate freely,
    validate, and retry up to `max_attempts` times (abandoning an attempt as soon as it goes
    wrong); without it such a backend raises UnsupportedFeatureError. The path taken is
    `get_meta_info(name)["constraint_path"]`.

    `dtype=` (int, float, bool, str: SGLang's spelling) generates text matching SGLang's
    regexes (`lmprog.ir.REGEX_INT` ...): a number stops where it ends (a space, newline,
    comma...), a str is a double-quoted string. `s[name]` is the value the text denotes (an
    int, a float, a bool, the string between the quotes); the text itself is in `s.text()`.
    `type=str` is lmprog's own spelling of free text. `return_text_in_logprobs` is accepted
    for SGLang: lmprog's logprob entries always carry each token's text.

    `tools=` lets the model call one of the tools (docs/tool-calls.md): `s[name]` is a
    `ToolCall` holding the result, or the model's text where `tool_choice` ("required" by
    default, a tool's name, "auto", "none") let it answer instead. `tool_path="native"` sends
    the tools to a server that parses calls itself, `"constrained"` generates the call under a
    JSON schema; by default native where the server can."""
    del return_text_in_logprobs  # every entry of output_token_logprobs has its "token" text
    if fallback not in (None, "validate"):
        raise ValueError(f'gen(fallback=...) must be "validate" or None, got {fallback!r}')
    if max_attempts < 1:
        raise ValueError(f"gen(max_attempts=...) must be at least 1, got {max_attempts}")
    if n < 1:
        raise ValueError(f"gen(n=...) must be at least 1, got {n}")
    limit = max_tokens if max_tokens is not None else max_new_tokens
    if limit is not None and limit < 0:
        raise ValueError(f"gen(max_tokens=...) must not be negative, got {limit}")
    answer: Node
    if choices is not None and (regex, json_schema, type, grammar, dtype) == (None,) * 5:
        method = choices_method or token_length_normalized
        answer = select(name, choices, choices_method=method, temperature=temperature or 0.0)
    else:
        constraint, specs = _gen_constraint(
            name, regex, json_schema, type, choices, grammar, dtype, tools, tool_choice
        )
        if tool_path not in (None, "native", "constrained"):
            raise ValueError(
                f'gen(tool_path=...) must be "native", "constrained" or None, got {tool_path!r}'
            )
        if (tool_choice is not None or tool_path is not None) and not specs:
            raise ValueError("gen(tool_choice=..., tool_path=...) need tools=")
        if tool_path == "native" and n > 1:
            raise ValueError("gen(tool_path='native') makes one call: use n=1")
        if constraint is not None and constraint.stops:
            stop = _with_stops(stop, constraint.stops)
        answer = Gen(
            name=name,
            sampling=SamplingParams.from_kwargs(
                max_new_tokens=limit,
                stop=stop,
                stop_token_ids=stop_token_ids,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                min_p=min_p,
                min_tokens=min_tokens,
                frequency_penalty=frequency_penalty,
                presence_penalty=presence_penalty,
                seed=seed,
                ignore_eos=ignore_eos or None,
            ),
            constraint=constraint,
            n=n,
            return_logprob=return_logprob,
            top_logprobs_num=top_logprobs_num,
            tools=specs,
            tool_choice=tool_choice or "required",
            tool_path=tool_path,
        )
    if fallback is not None and isinstance(answer, Gen) and answer.constraint is not None:
        answer = replace(answer, validate_attempts=max_attempts)
    if not think and think_budget is None:
        return answer
    budget = think_budget if think_budget is not None else DEFAULT_THINK_BUDGET
    if budget < 1:
        raise ValueError(f"gen(think_budget=...) must be at least 1, got {budget}")
    reasoning = Think(
        name=name,
        sampling=SamplingParams.from_kwargs(
            temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed
        ),
        budget=budget,
        delimiters=think_delimiters,
    )
    return reasoning + answer


def _gen_constraint(
    name: str | None,
    regex: str | None,
    json_schema: dict[str, Any] | str | None,
    type: Any,
    choices: Sequence[str] | None,
    grammar: str | None,
    dtype: Any,
    tools: Tools | None,
    tool_choice: str | None = None,
) -> tuple[Constraint | None, tuple[ToolSpec, ...]]:
    """The one constraint a gen's arguments ask for, and its tools; a ConstraintError names
    the gen."""
    try:
        constraint = make_constraint(
            regex=regex,
            json_schema=json_schema,
            type=type,
            choices=choices,
            grammar=grammar,
            dtype=dtype,
        )
        specs = tool_specs(tools) if tools is not None else ()
        if specs and constraint is not None:
            raise ConstraintError("tools= cannot be combined with another constraint")
        if specs:
            choice = tool_choice or "required"
            chosen_specs(specs, choice)  # a tool_choice naming no tool fails here
            constraint = None if choice == "none" else tools_constraint(specs, choice)
    except ConstraintError as exc:
        exc.primitive = f"gen({name!r})" if name else "gen()"
        raise
    return constraint, specs


def _with_stops(stop: str | Sequence[str] | None, more: Sequence[str]) -> tuple[str, ...]:
    """`stop` (None, one string or several) extended by `more`, each once, in order."""
    given = (stop,) if isinstance(stop, str) else tuple(stop or ())
    return tuple(dict.fromkeys((*given, *more)))


def gen_int(name: str | None = None, **kwargs: Any) -> Node:
    """An integer, generated as SGLang's `gen_int` generates it (`gen(name, dtype=int)`:
    REGEX_INT, stopping at the first space or newline after the number); `s[name]` is an int."""
    return gen(name, dtype=int, **kwargs)


def gen_string(name: str | None = None, **kwargs: Any) -> Node:
    """A double-quoted string, generated as SGLang's `gen_string` generates it
    (`gen(name, dtype=str)`: REGEX_STR), so JSON assembled from typed pieces is valid JSON;
    `s[name]` is the string between the quotes. (Free text is `gen(name)`.)"""
    return gen(name, dtype=str, **kwargs)


def select(
    name: str | None = None,
    choices: Sequence[str] | type | None = None,
    choices_method: ChoicesMethod = token_length_normalized,
    temperature: float = 0.0,
) -> Node:
    """Pick one of `choices` by the model's likelihood of each (see lp.token_length_normalized,
    lp.greedy_token_selection, lp.unconditional_likelihood_normalized)."""
    if choices is None:
        raise ConstraintError("select() needs choices")
    constraint: Constraint | None
    if isinstance(choices, (list, tuple)):
        constraint = choices_constraint(list(choices))
    else:
        constraint = make_constraint(type=choices)
        if constraint is None or constraint.kind != "choices":
            raise ConstraintError(
                f"select() choices must be strings, a Literal or an Enum: {choices!r}"
            )
    if not isinstance(choices_method, ChoicesMethod):
        raise TypeError(
            f"choices_method must be one of lp's choices methods, got {choices_method!r}"
        )
    return Select(
        name=name,
        choices=constraint.choices,
        method=choices_method,
        temperature=temperature,
        python_type=constraint.python_type,
    )


def _role(role: Role, content: Node | str | None) -> Node:
    if content is None:
        return RoleBegin(role) + RoleEnd(role)
    return RoleBegin(role) + as_node(content) + RoleEnd(role)


def system(content: Node | str | None = None) -> Node:
    return _role("system", content)


def user(content: Node | str | None = None) -> Node:
    return _role("user", content)


def assistant(content: Node | str | None = None) -> Node:
    return _role("assistant", content)


def system_begin() -> Node:
    return RoleBegin("system")


def system_end() -> Node:
    return RoleEnd("system")


def user_begin() -> Node:
    return RoleBegin("user")


def user_end() -> Node:
    return RoleEnd("user")


def assistant_begin() -> Node:
    return RoleBegin("assistant")


def assistant_end() -> Node:
    return RoleEnd("assistant")


def image(source: str | os.PathLike[str] | bytes) -> Node:
    """An image for the current user turn, from a path, an http(s) URL, a data URL or bytes.

    A file is read here, once, so a missing file fails in the program body at this line; a URL
    is downloaded asynchronously when the turn runs.
    """
    if isinstance(source, bytes):
        return Image(source, _sniff(source), "<bytes>")
    text = os.fspath(source)
    if text.startswith(("http://", "https://")):
        return Image(None, "", text)  # downloaded when its turn runs, without blocking others
    if text.startswith("data:"):
        import base64

        header, _, payload = text.partition(",")
        return Image(base64.b64decode(payload), header[5:].split(";")[0], "data URL")
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"lp.image(): no file at {text!r}")
    mime = mimetypes.guess_type(path.name)[0] or _sniff(path.read_bytes()[:16])
    return Image(path.read_bytes(), mime, path.name)


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"GIF8"):
        return "image/gif"
    return "application/octet-stream"


def tool_result(call: ToolCall, content: Any = None) -> Node:
    """The `tool` turn answering `call` (a gen's ToolCall): its result, or `content` in its
    place, as the chat template and the server expect it after the call (docs/tool-calls.md).
    A string goes as it is; anything else as JSON."""
    if not isinstance(call, ToolCall):
        raise TypeError(f"lp.tool_result() takes the ToolCall a gen(tools=...) made, got {call!r}")
    if call.id is None:
        raise ValueError(f"lp.tool_result(): the call to {call.name!r} has no id to answer")
    return ToolResult(call.id, call.name, result_text(call.result if content is None else content))


def separate_reasoning(expr: Node | str | None = None, model_type: str | None = None) -> Node:
    """SGLang's `separate_reasoning`: `expr` (a named gen or select, or several joined by `+`),
    then, once they have run, each one's value split into the model's reasoning and its answer
    by `model_type`'s markers ("deepseek-r1", "qwen3", "qwen3-thinking", "kimi", ...; see
    lmprog.reasoning). `s[name]` becomes the answer, `s[name + "_reasoning_content"]` and
    `get_meta_info(name)["reasoning"]` the reasoning, and the text keeps only the answer (when
    not streaming). An unknown `model_type` fails when the program runs, as in SGLang.

    For reasoning the model does before a constrained answer, lmprog's own
    `gen(..., think=True)` is the better tool: it never parses the answer out of free text."""
    if expr is None:
        raise ValueError("separate_reasoning() needs the gen or select whose output to split")
    node = as_node(expr)
    targets = []
    for part in flatten(node):
        if isinstance(part, (Gen, Select)):
            SeparateReasoning.process_name_for_reasoning(part.name)  # an unnamed one raises
            targets.append(str(part.name))
    if not targets:
        raise ValueError("separate_reasoning() needs a named gen or select in its expression")
    return node + SeparateReasoning(model_type, tuple(targets))
