"""`sglang.lang.chat_template`'s lookups, on lmprog's chat templates (the model's own Jinja
template, or the built-in "gemma3" and "chatml")."""

from __future__ import annotations

import os
from typing import Any

from lmprog.lang import missing
from lmprog.templates import ChatTemplate

__all__ = ["ChatTemplate", "get_chat_template", "get_chat_template_by_model_path"]

# SGLang's registered names for the templates lmprog ships
_ALIASES = {"chatml": "chatml", "qwen": "chatml", "gemma-it": "gemma3", "gemma3": "gemma3"}


def get_chat_template(name: str) -> ChatTemplate:
    """The built-in template SGLang registers as `name` ("chatml", "gemma-it", ...); other
    names raise, saying what lmprog has (a model's own template is read from its files)."""
    return ChatTemplate.builtin(_ALIASES.get(name, name))


def get_chat_template_by_model_path(model_path: str | os.PathLike[str]) -> ChatTemplate:
    """The template in the model's folder (its chat_template.jinja or tokenizer config)."""
    template = ChatTemplate.from_model_dir(model_path)
    if template is None:
        raise LookupError(
            f"no chat template in {os.fspath(model_path)!r}: lmprog reads the model's own "
            "template from a local model folder; pass chat_template='chatml' or 'gemma3', or "
            "Jinja source, to the backend"
        )
    return template


def __getattr__(name: str) -> Any:
    if name in ("register_chat_template", "chat_template_registry"):
        missing(__name__, name, "pass Jinja source as chat_template= to the backend")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
