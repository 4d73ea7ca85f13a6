"""Token logprobs in one shape on every backend: SGLang's.

Engines answer in their own forms (llama-server's `completion_probabilities`, OpenAI's
`logprobs.content`, SGLang's `[logprob, id, text]` lists, lp.Local's entries); backends pass
them on as dicts with `logprob`, and where known `id`, `token` and `top_logprobs`. Programs
read what SGLang programs read: `get_meta_info(name)["output_token_logprobs"]` is a list of
`(logprob, token_id, text)` tuples, `["output_top_logprobs"]` one list of them per position.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple


class TokenLogprob(NamedTuple):
    """One token: `logprob, token_id, text = entry` as in SGLang; `token_id` is None where the
    engine does not say (the OpenAI API)."""

    logprob: float
    token_id: int | None
    text: str | None


def token_logprob(entry: dict[str, Any]) -> TokenLogprob:
    """One backend entry (`logprob`, `id`, `token`) as SGLang's tuple."""
    return TokenLogprob(float(entry["logprob"]), entry.get("id"), entry.get("token"))


class StreamedLogprobs:
    """A streamed gen's logprobs so far, for each chunk's meta-info (SGLang's streams carry
    the whole list so far in every chunk)."""

    def __init__(self) -> None:
        self.tokens: list[TokenLogprob] = []
        self.tops: list[list[TokenLogprob]] = []

    def add(self, entries: Iterable[dict[str, Any]]) -> None:
        for entry in entries:
            self.tokens.append(token_logprob(entry))
            self.tops.append([token_logprob(top) for top in entry.get("top_logprobs") or ()])

    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "output_token_logprobs": list(self.tokens),
            "output_token_logprobs_length": len(self.tokens),
        }
        if any(self.tops):
            meta["output_top_logprobs"] = list(self.tops)
        return meta


def logprob_meta(entries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The meta-info keys SGLang gives for these tokens."""
    logprobs = StreamedLogprobs()
    logprobs.add(entries)
    return logprobs.meta()
