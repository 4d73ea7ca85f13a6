"""lmprog: write LLM programs as ordinary Python functions.

import lmprog as lp

@lp.function
def qa(s, question):
    s += "Q: " + question + "\\nA:" + lp.gen("answer", stop="\\n")

state = qa.run(question="What is the capital of France?", backend=lp.LlamaCpp(url))
print(state["answer"])
"""

from lmprog.backends.base import Backend, Capabilities
from lmprog.backends.llamacpp import LlamaCpp
from lmprog.backends.openai import VLLM, OpenAI
from lmprog.backends.sglang import RuntimeEndpoint, SGLang
from lmprog.choices import (
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from lmprog.embed import aembed, embed
from lmprog.errors import (
    BackendError,
    BackendResponseError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConstraintError,
    LmprogError,
    ProgramError,
    UnsupportedFeatureError,
)
from lmprog.launch import Runtime
from lmprog.primitives import (
    assistant,
    assistant_begin,
    assistant_end,
    gen,
    gen_int,
    gen_string,
    image,
    select,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
)
from lmprog.program import (
    BatchError,
    BatchInterrupted,
    Program,
    function,
    get_default_backend,
    set_default_backend,
)
from lmprog.state import ForkGroup, ProgramState
from lmprog.templates import ChatTemplate, TemplateError
from lmprog.tools import ToolCall

__version__ = "0.1.0"

__all__ = [
    "VLLM",
    "Backend",
    "BackendError",
    "BackendResponseError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "BatchError",
    "BatchInterrupted",
    "Capabilities",
    "ChatTemplate",
    "ConstraintError",
    "ForkGroup",
    "LlamaCpp",
    "LmprogError",
    "OpenAI",
    "Program",
    "ProgramError",
    "ProgramState",
    "Runtime",
    "RuntimeEndpoint",
    "SGLang",
    "TemplateError",
    "ToolCall",
    "UnsupportedFeatureError",
    "aembed",
    "assistant",
    "assistant_begin",
    "assistant_end",
    "embed",
    "function",
    "gen",
    "gen_int",
    "gen_string",
    "get_default_backend",
    "greedy_token_selection",
    "image",
    "select",
    "set_default_backend",
    "system",
    "system_begin",
    "system_end",
    "token_length_normalized",
    "unconditional_likelihood_normalized",
    "user",
    "user_begin",
    "user_end",
]
