"""How `select` turns per-choice token logprobs into a decision (SGLang's three methods).

Each method is also callable as SGLang's are (`sglang.lang.choices`): `method(choices=...,
normalized_prompt_logprobs=..., input_token_logprobs=..., output_token_logprobs=...,
unconditional_token_logprobs=...)` returns a `ChoicesDecision(decision, meta_info)`. Token
logprobs there are SGLang's entries, `[logprob, token_id, token_text]` (or bare floats).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChoiceLogprobs:
    """Logprobs of each token of one choice, after the prompt (and, optionally, without it)."""

    choice: str
    token_logprobs: tuple[float, ...]
    tokens: tuple[str, ...] = ()
    unconditional_token_logprobs: tuple[float, ...] | None = None
    path: str = "logprob scoring"  # how the pick was made (meta "constraint_path")
    normalized_logprob: float | None = None  # given by the caller (SGLang's call), else the mean

    @property
    def normalized(self) -> float:
        if self.normalized_logprob is not None:
            return self.normalized_logprob
        return _mean(self.token_logprobs)


@dataclass
class ChoicesDecision:
    """What a choices method decides when called as SGLang's: the choice, and its scores."""

    decision: str
    meta_info: dict[str, Any] | None = None


def _logprob(entry: Any) -> float:
    """One token's logprob from an SGLang entry `[logprob, token_id, text]` or a bare float."""
    value = entry[0] if isinstance(entry, (list, tuple)) else entry
    return float(value) if value is not None else 0.0


def _token_text(entry: Any) -> str:
    if isinstance(entry, (list, tuple)) and len(entry) > 2 and entry[2] is not None:
        return str(entry[2])
    return ""


def _mean(values: tuple[float, ...] | list[float]) -> float:
    return sum(values) / len(values) if values else float("-inf")


class ChoicesMethod:
    """Scores each choice; the highest score wins (or is sampled at temperature > 0)."""

    name = "method"
    requires_unconditional_logprobs = False
    decodes = False  # the engine picks under a constraint instead of scoring every choice

    def scores(self, scored: list[ChoiceLogprobs]) -> list[float]:
        raise NotImplementedError

    def decide(self, scored: list[ChoiceLogprobs], temperature: float = 0.0) -> int:
        scores = self.scores(scored)
        if temperature <= 0:
            return max(range(len(scores)), key=scores.__getitem__)
        top = max(scores)
        weights = [math.exp((s - top) / temperature) for s in scores]
        return random.choices(range(len(scores)), weights=weights)[0]

    def meta_info(self, scored: list[ChoiceLogprobs]) -> dict[str, Any]:
        return {
            "choices_method": self.name,
            "scores": self.scores(scored),
            "normalized_prompt_logprobs": [c.normalized for c in scored],
            "input_token_logprobs": [list(c.token_logprobs) for c in scored],
            "choice_tokens": [list(c.tokens) for c in scored],
        }

    def __call__(
        self,
        *,
        choices: list[str],
        normalized_prompt_logprobs: list[float],
        input_token_logprobs: list[list[Any]],
        output_token_logprobs: list[list[Any]],
        unconditional_token_logprobs: list[list[Any]] | None = None,
    ) -> ChoicesDecision:
        """Decide as SGLang's method of this name does, from SGLang's per-choice logprobs
        (`normalized_prompt_logprobs` is taken as given, not recomputed)."""
        if not (len(choices) == len(normalized_prompt_logprobs) == len(input_token_logprobs)):
            raise ValueError(
                "choices, normalized_prompt_logprobs and input_token_logprobs differ in length"
            )
        if self.requires_unconditional_logprobs and unconditional_token_logprobs is None:
            raise ValueError("Unconditional token logprobs are required for this method.")
        scored = []
        for i, choice in enumerate(choices):
            entries = input_token_logprobs[i]
            unconditional = None
            if unconditional_token_logprobs is not None:
                given = [_logprob(e) for e in unconditional_token_logprobs[i]]  # None -> 0
                if self.requires_unconditional_logprobs and len(given) != len(entries):
                    raise ValueError(
                        "input and unconditional token logprobs must have the same length"
                    )
                unconditional = tuple(given)
            scored.append(
                ChoiceLogprobs(
                    choice,
                    tuple(_logprob(e) for e in entries),
                    tuple(_token_text(e) for e in entries),
                    unconditional,
                    normalized_logprob=float(normalized_prompt_logprobs[i]),
                )
            )
        index = self.decide(scored)
        meta = {
            "normalized_prompt_logprobs": normalized_prompt_logprobs,
            "input_token_logprobs": input_token_logprobs,
            "output_token_logprobs": output_token_logprobs,
        }
        meta.update(self._sglang_meta(scored))
        if unconditional_token_logprobs is not None and self.requires_unconditional_logprobs:
            meta["unconditional_token_logprobs"] = unconditional_token_logprobs
        return ChoicesDecision(decision=choices[index], meta_info=meta)

    def _sglang_meta(self, scored: list[ChoiceLogprobs]) -> dict[str, Any]:
        """What SGLang's method of this name adds to its meta_info."""
        return {}

    def __repr__(self) -> str:
        return f"lp.{self.name}"


class TokenLengthNormalized(ChoicesMethod):
    """Mean token logprob of each choice: long choices are not penalised for their length."""

    name = "token_length_normalized"

    def scores(self, scored: list[ChoiceLogprobs]) -> list[float]:
        return [c.normalized for c in scored]


class GreedyTokenSelection(ChoicesMethod):
    """Decode greedily among the choices: the best first token wins, ties go to the next token.

    A choice shorter than the others is padded with its own mean logprob, as SGLang does.
    """

    name = "greedy_token_selection"

    @staticmethod
    def matrix(scored: list[ChoiceLogprobs]) -> list[list[float]]:
        """One row per choice: its token logprobs, padded to the longest with their mean."""
        width = max(len(c.token_logprobs) for c in scored)
        return [
            list(c.token_logprobs) + [_mean(c.token_logprobs)] * (width - len(c.token_logprobs))
            for c in scored
        ]

    def scores(self, scored: list[ChoiceLogprobs]) -> list[float]:
        rows = self.matrix(scored)
        width = len(rows[0]) if rows else 0
        remaining = list(range(len(rows)))
        for column in range(width):
            best = max(rows[i][column] for i in remaining)
            remaining = [i for i in remaining if rows[i][column] == best]
            if len(remaining) == 1:
                break
        return [1.0 if i == remaining[0] else 0.0 for i in range(len(rows))]

    def meta_info(self, scored: list[ChoiceLogprobs]) -> dict[str, Any]:
        return {**super().meta_info(scored), **self._sglang_meta(scored)}

    def _sglang_meta(self, scored: list[ChoiceLogprobs]) -> dict[str, Any]:
        return {"greedy_logprob_matrix": self.matrix(scored)}


class UnconditionalLikelihoodNormalized(ChoicesMethod):
    """Mean of (logprob given the prompt - logprob with no prompt): discounts choices the model
    likes regardless of the question (e.g. very common words)."""

    name = "unconditional_likelihood_normalized"
    requires_unconditional_logprobs = True

    def scores(self, scored: list[ChoiceLogprobs]) -> list[float]:
        out = []
        for c in scored:
            if c.unconditional_token_logprobs is None:
                raise ValueError("unconditional logprobs are required for this method")
            pairs = zip(c.token_logprobs, c.unconditional_token_logprobs, strict=False)
            diffs = [a - b for a, b in pairs]
            out.append(_mean(diffs))
        return out

    def meta_info(self, scored: list[ChoiceLogprobs]) -> dict[str, Any]:
        info = super().meta_info(scored)
        info["unconditional_token_logprobs"] = [
            list(c.unconditional_token_logprobs or ()) for c in scored
        ]
        info.update(self._sglang_meta(scored))
        return info

    def _sglang_meta(self, scored: list[ChoiceLogprobs]) -> dict[str, Any]:
        return {"normalized_unconditional_prompt_logprobs": self.scores(scored)}


class ConstrainedDecoding(ChoicesMethod):
    """The engine decodes one of the choices under a choice constraint (greedy at temperature
    0): one ordinary request that reuses the prefix cache, where scoring reads every choice's
    logprobs. The cheapest select, but a decoding, not a comparison of whole choices: the best
    first token wins. Scores are 0 for the pick and -inf for the others."""

    name = "constrained_decoding"
    decodes = True

    def scores(self, scored: list[ChoiceLogprobs]) -> list[float]:
        return [c.normalized for c in scored]


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()
constrained_decoding = ConstrainedDecoding()

ChoicesSamplingMethod = ChoicesMethod  # SGLang's name of the base class

ALL_METHODS = frozenset(
    m.name
    for m in (token_length_normalized, greedy_token_selection, unconditional_likelihood_normalized)
)
