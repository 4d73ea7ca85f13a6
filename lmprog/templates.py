"""Chat templates: the model's own Jinja template, run in a sandbox, turned into role markers.

A program writes roles one piece at a time (`s += lp.user("...")`), so each role needs the text
that opens and closes it. They are found by rendering the template around a placeholder and
taking the difference, which keeps every rendering append-only: each request extends the
previous one byte for byte, and the engine's prefix cache can reuse it.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmprog.errors import TemplateError

_PLACEHOLDER = "LMPROGCONTENT7f3a"
_CONTEXT = [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]


def _raise_exception(message: str) -> None:
    raise TemplateError(f"the chat template raised: {message}")


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = _tojson
    return env


class TemplateGuessWarning(UserWarning):
    """A backend could not read the model's own chat template and uses a built-in one of the
    same family; pass chat_template= to choose (and silence this)."""


class ChatTemplate:
    """A compiled chat template. Untrusted templates from model files cannot reach Python
    internals or the filesystem: they run in jinja2's immutable sandbox."""

    def __init__(
        self, source: str, *, bos_token: str = "", eos_token: str = "", name: str = ""
    ) -> None:
        self.source = source
        self.name = name or "custom"
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"chat template {self.name!r} does not compile: {exc}") from exc
        self._markers: dict[str, tuple[str, str]] = {}

    @classmethod
    def builtin(cls, name: str) -> ChatTemplate:
        """One of the templates shipped in lmprog/templates ("gemma3", "chatml")."""
        return _builtin(name)

    @classmethod
    def builtin_for(cls, family: str) -> ChatTemplate | None:
        """The built-in template of a model family named in `family` (a model type such as
        "gemma3", an architecture, or a template name such as SGLang's "gemma-it"), if lmprog
        ships one; None otherwise."""
        lowered = family.lower()
        for fragment, name in _FAMILIES:
            if fragment in lowered:
                return _builtin(name)
        return None

    @classmethod
    def given(cls, choice: str | ChatTemplate | None) -> ChatTemplate | None:
        """What a backend's `chat_template=` names: a ChatTemplate, a built-in name
        ("gemma3", "chatml"), or Jinja source; None when nothing was given."""
        if choice is None or isinstance(choice, ChatTemplate):
            return choice
        return cls.builtin(choice) if "{" not in choice else cls(choice, name="given")

    @classmethod
    def from_model_dir(cls, path: str | os.PathLike[str]) -> ChatTemplate | None:
        """The template in a transformers model folder (chat_template.jinja, or the
        tokenizer_config.json entry), or None if there is none or the folder is not here."""
        folder = Path(path)
        if not folder.is_dir():
            return None
        jinja_file = folder / "chat_template.jinja"
        if jinja_file.is_file():
            return cls(jinja_file.read_text(), name=folder.name)
        config_file = folder / "tokenizer_config.json"
        if not config_file.is_file():
            return None
        source = json.loads(config_file.read_text()).get("chat_template")
        if isinstance(source, list):  # named templates: take the default one
            named = {t.get("name"): t.get("template") for t in source}
            source = named.get("default") or next(iter(named.values()), None)
        return cls(source, name=folder.name) if isinstance(source, str) else None

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError:
            raise
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(
                f"chat template {self.name!r} tried an unsafe operation and was stopped: {exc}"
            ) from exc
        except Exception as exc:
            raise TemplateError(f"chat template {self.name!r} failed to render: {exc}") from exc

    def role_markers(self, role: str) -> tuple[str, str]:
        """The text before and after a message's content for `role`."""
        if role not in self._markers:
            self._markers[role] = self._derive_markers(role)
        return self._markers[role]

    def _derive_markers(self, role: str) -> tuple[str, str]:
        message = {"role": role, "content": _PLACEHOLDER}
        try:
            before = self.render(_CONTEXT)
            after = self.render([*_CONTEXT, message])
        except TemplateError:
            before, after = "", ""
        if not after.startswith(before) or _PLACEHOLDER not in after[len(before) :]:
            if role == "system":  # templates that only allow a leading system message
                return self._leading_markers(message)
            raise TemplateError(
                f"chat template {self.name!r} does not render a {role!r} message after others; "
                "pass chat_template= with a template that does"
            )
        begin, end = after[len(before) :].split(_PLACEHOLDER, 1)
        if role == "assistant":
            prompt = self.render(_CONTEXT, add_generation_prompt=True)[len(before) :]
            if prompt and begin.startswith(prompt):
                begin = prompt + begin[len(prompt) :]
        return begin, end

    def _leading_markers(self, message: dict[str, Any]) -> tuple[str, str]:
        text = self.render([message, *_CONTEXT])
        if _PLACEHOLDER not in text:
            return self.role_markers("user")
        begin, rest = text.split(_PLACEHOLDER, 1)
        user_begin = self.role_markers("user")[0]
        if user_begin and user_begin in rest:
            return begin, rest[: rest.index(user_begin)]
        return self.role_markers("user")

    def __repr__(self) -> str:
        return f"ChatTemplate({self.name!r})"


# Model families whose chat format a built-in template writes (a fragment of the family name).
_FAMILIES = (("gemma", "gemma3"), ("chatml", "chatml"), ("qwen", "chatml"))


@cache
def _builtin(name: str) -> ChatTemplate:
    try:
        source = resources.files("lmprog").joinpath(f"templates/{name}.jinja").read_text()
    except FileNotFoundError:
        raise TemplateError(
            f"no built-in chat template {name!r}; use 'gemma3' or 'chatml'"
        ) from None
    return ChatTemplate(source, name=name)
