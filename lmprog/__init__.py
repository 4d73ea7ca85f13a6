"""lmprog: write LLM programs as ordinary Python functions.

import lmprog as lp

@lp.function
def qa(s, question):
    s += "Q: " + question + "\\nA:" + lp.gen("answer", stop="\\n")

state = qa.run(question="What is the capital of France?", backend=lp.LlamaCpp(url))
print(state["answer"])

`lp.Local` (the in-process backend, and the default) is imported on first use, so programs on
remote backends do not pay for importing torch.
"""

from typing import TYPE_CHECKING, Any

from lmprog.admin import flush_cache, get_server_info
from lmprog.backends.base import Backend, Capabilities
from lmprog.backends.llamacpp import LlamaCpp
from lmprog.backends.openai import OpenAI
from lmprog.backends.replicas import Replicas
from lmprog.backends.router import SGLangRouter
from lmprog.backends.sglang import RuntimeEndpoint, SGLang
from lmprog.backends.vllm import VLLM
from lmprog.budget import Budget
from lmprog.cache_report import CacheReport, cache_report
from lmprog.choices import (
    constrained_decoding,
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from lmprog.embed import aembed, embed
from lmprog.engine import Engine
from lmprog.errors import (
    BackendError,
    BackendResponseError,
    BackendTimeoutError,
    BackendUnavailableError,
    BatchError,
    BatchInterrupted,
    BudgetExceededError,
    ConstraintError,
    LmprogError,
    LocalNotInstalledError,
    MCPNotInstalledError,
    MCPServerError,
    ProgramError,
    TemplateError,
    ToolError,
    ToolTimeoutError,
    UnsupportedFeatureError,
)
from lmprog.global_config import global_config
from lmprog.hosted import Anthropic, LiteLLM, VertexAI
from lmprog.launch import Runtime
from lmprog.mcp import MCPTools, mcp_tools
from lmprog.prefix_lint import PrefixOrderWarning
from lmprog.pricing import Cost, Price
from lmprog.primitives import (
    assistant,
    assistant_begin,
    assistant_end,
    gen,
    gen_int,
    gen_string,
    image,
    select,
    separate_reasoning,
    system,
    system_begin,
    system_end,
    tool_result,
    user,
    user_begin,
    user_end,
)
from lmprog.program import (
    Program,
    function,
    get_default_backend,
    set_default_backend,
)
from lmprog.state import Batch, ForkGroup, PartialStream, ProgramState
from lmprog.templates import ChatTemplate, TemplateGuessWarning
from lmprog.tools import ToolCall
from lmprog.trace import OpenTelemetryTraces, Span, stop_tracing, trace_to, write_trace

if TYPE_CHECKING:
    from lmprog.backends.local import Local
    from lmprog.backends.local.embeddings import LocalEmbeddings


def __getattr__(name: str) -> Any:
    if name == "Local":
        from lmprog.backends.local import Local

        return Local
    if name == "LocalEmbeddings":
        from lmprog.backends.local.embeddings import LocalEmbeddings

        return LocalEmbeddings
    raise AttributeError(f"module 'lmprog' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "VLLM",
    "Anthropic",
    "Backend",
    "BackendError",
    "BackendResponseError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "Batch",
    "BatchError",
    "BatchInterrupted",
    "Budget",
    "BudgetExceededError",
    "CacheReport",
    "Capabilities",
    "ChatTemplate",
    "ConstraintError",
    "Cost",
    "Engine",
    "ForkGroup",
    "LiteLLM",
    "LlamaCpp",
    "LmprogError",
    "Local",
    "LocalEmbeddings",
    "LocalNotInstalledError",
    "MCPNotInstalledError",
    "MCPServerError",
    "MCPTools",
    "OpenAI",
    "OpenTelemetryTraces",
    "PartialStream",
    "PrefixOrderWarning",
    "Price",
    "Program",
    "ProgramError",
    "ProgramState",
    "Replicas",
    "Runtime",
    "RuntimeEndpoint",
    "SGLang",
    "SGLangRouter",
    "Span",
    "TemplateError",
    "TemplateGuessWarning",
    "ToolCall",
    "ToolError",
    "ToolTimeoutError",
    "UnsupportedFeatureError",
    "VertexAI",
    "aembed",
    "assistant",
    "assistant_begin",
    "assistant_end",
    "cache_report",
    "constrained_decoding",
    "embed",
    "flush_cache",
    "function",
    "gen",
    "gen_int",
    "gen_string",
    "get_default_backend",
    "get_server_info",
    "global_config",
    "greedy_token_selection",
    "image",
    "mcp_tools",
    "select",
    "separate_reasoning",
    "set_default_backend",
    "stop_tracing",
    "system",
    "system_begin",
    "system_end",
    "token_length_normalized",
    "tool_result",
    "trace_to",
    "unconditional_likelihood_normalized",
    "user",
    "user_begin",
    "user_end",
    "write_trace",
]
