"""Splitting a reasoning model's output into its reasoning and its answer, by model family
(`lp.separate_reasoning(..., model_type=...)`, SGLang's reasoning parser names).

Each family marks its reasoning with a pair of tags. Families that always start by reasoning
(DeepSeek-R1, whose template opens the `<think>` tag itself) count the text before the closing
tag as reasoning even without an opening tag; the others only when the text has the opening
tag. Reasoning that never closed (the token limit cut it) is all reasoning, and the answer is
empty. The opening tag is not part of the reasoning; the text after the closing tag is the
answer, as the model wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReasoningFormat:
    """How one model family marks its reasoning."""

    start: str
    end: str
    always: bool = False  # the output starts inside the reasoning (no opening tag needed)
    interrupted_by: str | None = None  # a tag that ends the reasoning without the closing tag

    def split(self, text: str) -> tuple[str, str]:
        """(reasoning, answer) of one complete output."""
        if not self.always and self.start not in text:
            return "", text
        body = text
        while body.startswith(self.start):
            body = body[len(self.start) :]
        if self.end in body:
            reasoning, answer = body.split(self.end, 1)
            return reasoning, answer
        if self.interrupted_by and self.interrupted_by in body:
            cut = body.index(self.interrupted_by)
            return body[:cut], body[cut:]
        return body, ""  # the reasoning never closed: it was cut short


_THINK = ReasoningFormat("<think>", "</think>")
_ALWAYS_THINK = ReasoningFormat("<think>", "</think>", always=True)
_QWEN3 = ReasoningFormat("<think>", "</think>", interrupted_by="<tool_call>")

FORMATS: dict[str, ReasoningFormat] = {
    "deepseek-r1": _ALWAYS_THINK,
    "step3": _ALWAYS_THINK,
    "step3p5": _ALWAYS_THINK,
    "qwen3": _QWEN3,
    "interns1": _QWEN3,
    "qwen3-thinking": ReasoningFormat("<think>", "</think>", True, "<tool_call>"),
    "minimax": ReasoningFormat("<think>", "</think>", True, "<tool_call>"),
    "glm45": _THINK,
    "kimi": ReasoningFormat("\u25c1think\u25b7", "\u25c1/think\u25b7"),
    "kimi_k2": ReasoningFormat(
        "<think>", "</think>", interrupted_by="<|tool_calls_section_begin|>"
    ),
}


def reasoning_format(model_type: str | None) -> ReasoningFormat:
    """The format `model_type` names (case-insensitive); ValueError, as SGLang raises, for
    none or an unknown one."""
    if not model_type:
        raise ValueError("Model type must be specified: separate_reasoning(..., model_type=...)")
    found = FORMATS.get(model_type.lower())
    if found is None:
        raise ValueError(
            f"Unsupported model type: {model_type!r}; lmprog separates the reasoning of "
            f"{', '.join(sorted(FORMATS))} (for another model, use gen(..., think=True))"
        )
    return found


def split_reasoning(model_type: str | None, text: str) -> tuple[str, str]:
    """(reasoning, answer) of `text` as `model_type` writes them."""
    return reasoning_format(model_type).split(text)
