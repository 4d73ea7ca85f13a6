"""API speculative execution (SGLang's `@function(num_api_spec_tokens=N)`).

On an API billed per prompt token, a program such as
`"Name:" + gen("name", stop="\\n") + "\\nJob:" + gen("job", stop="\\n")` would send its whole
prompt once per gen. With speculation the first gen asks for N tokens with no stop; its value
is the text up to its stop, and the rest is kept. The program's next literal is matched against
what was kept (`"\\nJob:"` consumed if the model wrote it), and the next gen is served from the
rest up to its own stop, with no request. A literal the model did not write, a different
sampling setting, or any other primitive (a turn boundary, a select, a fork) drops what was
kept; the next gen then sends a request again.

A gen served from speculation ends at its stop; its own `max_tokens` is not applied (as in
SGLang). Only plain gens speculate: with a constraint, logprobs, `n > 1`, `min_tokens`,
`ignore_eos` or stop token ids, a gen sends its own request.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from lmprog.ir import Gen, SamplingParams


@dataclass(frozen=True)
class Served:
    """A gen's value out of speculated text, and the stop that ended it ("" at the end)."""

    value: str
    stop: str


class Speculation:
    """What the model wrote ahead of the program, not yet consumed by it."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.ahead: str | None = None
        self._sampling: SamplingParams | None = None  # the settings the text was sampled with
        self._finished = False  # the model ended the text itself, not at the token limit

    def eligible(self, node: Gen, sampling: SamplingParams) -> bool:
        return (
            node.constraint is None
            and not node.tools
            and node.n == 1
            and not node.return_logprob
            and not node.top_logprobs_num
            and not node.validate_attempts
            and not sampling.min_tokens
            and not sampling.ignore_eos
            and not sampling.stop_token_ids
        )

    def request_sampling(self, sampling: SamplingParams) -> SamplingParams:
        """The speculative request's settings: the gen's own, N tokens, and no stop of its
        own, so the model writes past it (the request still ends with the turn: the end of
        the chat template's turn is added as a stop as for every request)."""
        return replace(sampling, max_new_tokens=self.tokens, stop=None)

    def begin(self, text: str, sampling: SamplingParams, finish_reason: str | None) -> None:
        self.ahead, self._sampling = text, _without_length(sampling)
        self._finished = finish_reason != "length"

    def serve(self, sampling: SamplingParams) -> Served | None:
        """The next gen's value from the text kept, or None (a request is needed). Where the
        model ended the text itself, a gen whose stop it never wrote ends where the text ends."""
        if self.ahead is None or _without_length(sampling) != self._sampling:
            self.discard()
            return None
        found = [(self.ahead.find(stop), stop) for stop in sampling.stop or () if stop]
        found = [(at, stop) for at, stop in found if at >= 0]
        if found:
            at, stop = min(found)
            value, self.ahead = self.ahead[:at], self.ahead[at:]
            return Served(value, stop)
        if self._finished:
            value, self.ahead = self.ahead, None
            return Served(value, "")
        self.discard()
        return None

    def consume(self, literal: str) -> None:
        """The program appended `literal`: keep speculating only if the model wrote it too."""
        if self.ahead is None:
            return
        if self.ahead.startswith(literal):
            self.ahead = self.ahead[len(literal) :]
        else:
            self.discard()

    def discard(self) -> None:
        self.ahead = self._sampling = None


def _without_length(sampling: SamplingParams) -> SamplingParams:
    """The settings that change what is sampled (stops and length only cut it)."""
    return replace(sampling, max_new_tokens=None, stop=None)
