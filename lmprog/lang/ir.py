"""`sglang.lang.ir`'s names: the regex constants and the expression classes, as lmprog's."""

from __future__ import annotations

from typing import Any

from lmprog.ir import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR, REGEX_STRING
from lmprog.ir import Concat as SglExprList
from lmprog.ir import Gen as SglGen
from lmprog.ir import Image as SglImage
from lmprog.ir import Node as SglExpr
from lmprog.ir import RoleBegin as SglRoleBegin
from lmprog.ir import RoleEnd as SglRoleEnd
from lmprog.ir import SamplingParams as SglSamplingParams
from lmprog.ir import Select as SglSelect
from lmprog.ir import SeparateReasoning as SglSeparateReasoning
from lmprog.ir import Text as SglConstantText
from lmprog.ir import VarScopeBegin as SglVarScopeBegin
from lmprog.ir import VarScopeEnd as SglVarScopeEnd
from lmprog.lang import missing
from lmprog.program import Program as SglFunction
from lmprog.tracer import Argument as SglArgument
from lmprog.tracer import Fork as SglFork
from lmprog.tracer import GetForkItem as SglGetForkItem
from lmprog.tracer import Variable as SglVariable

__all__ = [
    "REGEX_BOOL",
    "REGEX_FLOAT",
    "REGEX_INT",
    "REGEX_STR",
    "REGEX_STRING",
    "SglArgument",
    "SglConstantText",
    "SglExpr",
    "SglExprList",
    "SglFork",
    "SglFunction",
    "SglGen",
    "SglGetForkItem",
    "SglImage",
    "SglRoleBegin",
    "SglRoleEnd",
    "SglSamplingParams",
    "SglSelect",
    "SglSeparateReasoning",
    "SglVarScopeBegin",
    "SglVarScopeEnd",
    "SglVariable",
]

_MISSING = {
    "SglVideo": "video input is not supported; pass frames as lp.image(...) parts",
    "SglCommitLazy": "lmprog sends text when a gen needs it; a prefix is cached with "
    "Program.cache() or Backend.warm()",
    "SglConcateAndAppend": "forks.join('concate_and_append') appends the branches' text",
}


def __getattr__(name: str) -> Any:
    if name in _MISSING:
        missing(__name__, name, _MISSING[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
