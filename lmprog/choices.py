"""How `select` turns per-choice token logprobs into a decision (SGLang's three methods)."""

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

    @property
    def normalized(self) -> float:
        return _mean(self.token_logprobs)


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

    def scores(self, scored: list[ChoiceLogprobs]) -> list[float]:
        width = max(len(c.token_logprobs) for c in scored)
        rows = [
            list(c.token_logprobs) + [c.normalized] * (width - len(c.token_logprobs))
            for c in scored
        ]
        remaining = list(range(len(rows)))
        for column in range(width):
            best = max(rows[i][column] for i in remaining)
            remaining = [i for i in remaining if rows[i][column] == best]
            if len(remaining) == 1:
                break
        return [1.0 if i == remaining[0] else 0.0 for i in range(len(rows))]


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
        return info


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

ALL_METHODS = frozenset(
    m.name
    for m in (token_length_normalized, greedy_token_selection, unconditional_likelihood_normalized)
)
