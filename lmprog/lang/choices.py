"""`sglang.lang.choices`: the choice methods (callable as SGLang's) and their decision."""

from __future__ import annotations

from lmprog.choices import (
    ChoicesDecision,
    ChoicesSamplingMethod,
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from lmprog.choices import GreedyTokenSelection as GreedyTokenSelection
from lmprog.choices import TokenLengthNormalized as TokenLengthNormalized
from lmprog.choices import UnconditionalLikelihoodNormalized as UnconditionalLikelihoodNormalized

__all__ = [
    "ChoicesDecision",
    "ChoicesSamplingMethod",
    "GreedyTokenSelection",
    "TokenLengthNormalized",
    "UnconditionalLikelihoodNormalized",
    "greedy_token_selection",
    "token_length_normalized",
    "unconditional_likelihood_normalized",
]
