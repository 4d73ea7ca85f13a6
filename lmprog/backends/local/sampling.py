"""Turning one row of logits into the next token, as the serving engines do.

The order follows llama.cpp and vLLM: penalties on the raw logits, then the constraint mask,
then temperature, top-k, top-p and min-p; temperature 0 (or unset) is greedy.
"""

from __future__ import annotations

from collections import Counter

import torch

from lmprog.ir import SamplingParams


def penalised(logits: torch.Tensor, sampling: SamplingParams, generated: list[int]) -> torch.Tensor:
    """OpenAI-style frequency and presence penalties over the tokens generated so far."""
    frequency = sampling.frequency_penalty or 0.0
    presence = sampling.presence_penalty or 0.0
    if not generated or (frequency == 0.0 and presence == 0.0):
        return logits
    counts = Counter(generated)
    ids = torch.tensor(list(counts), dtype=torch.long, device=logits.device)
    amounts = torch.tensor([counts[i] for i in counts], dtype=logits.dtype, device=logits.device)
    out = logits.clone()
    out[ids] -= frequency * amounts + presence
    return out


def choose(
    logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None
) -> int:
    """The next token id from (already masked and penalised) logits of one position."""
    temperature = sampling.temperature
    if temperature is None or temperature <= 0.0:
        return int(torch.argmax(logits))
    scores = logits.float() / temperature
    if sampling.top_k is not None and 0 < sampling.top_k < scores.shape[-1]:
        threshold = torch.topk(scores, sampling.top_k).values[-1]
        scores = scores.masked_fill(scores < threshold, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if sampling.top_p is not None and 0.0 < sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before >= sampling.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    if sampling.min_p is not None and sampling.min_p > 0.0:
        probs = probs.masked_fill(probs < sampling.min_p * probs.max(), 0.0)
    return int(torch.multinomial(probs, 1, generator=generator))


def seeded_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A private generator for a seeded request, so its samples do not depend on what else
    is decoded in the same batch. It lives on the logits' device: torch.multinomial refuses a
    CPU generator for CUDA probabilities."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
