"""lp.Replicas: one backend over several servers of the same model (scale-out).

Each request (a gen, a select's scoring, a prefix warm-up) goes to one replica:

- **Cache affinity.** The replica that last took a prompt sharing the longest prefix with this
  one (remembered at 256-character boundaries) gets it: a program's next turn, a fork's
  branches after their warm-up, and the items of a few-shot batch go where their prefix is
  cached. A prefix not seen yet goes by rendezvous hashing of its first 256 characters over
  the healthy replicas, so every client agrees on it and losing a replica moves only the
  prefixes it had.
- **Bounded load.** A replica takes a request only while its requests in flight stay within
  (1 + `balance`) x the average, or under `burst` (so a fork's few branches stay together);
  otherwise the next replica in preference order takes it. A batch that shares one prefix
  spreads over the replicas, each computing the prefix once.
- **Health and failover.** A connection-level failure (`BackendUnavailableError`, or HTTP
  502/503/504 after the backend's own retries) marks the replica down, and the request goes
  to another healthy replica at once: a program does not fail because one replica died while
  another is up. A down replica is probed with a one-token request after `retry_after`
  seconds (doubling, up to a minute, while it stays down) and takes traffic again once it
  answers. A stream that already showed text is not restarted elsewhere (its error says so).

`routing="round_robin"` turns affinity off (what a plain load balancer does), for comparison.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from lmprog.backends.base import (
    Backend,
    Capabilities,
    GenerateRequest,
    Generation,
    TextCallback,
)
from lmprog.backends.llamacpp import LlamaCpp
from lmprog.choices import ChoiceLogprobs, ChoicesMethod
from lmprog.errors import (
    BackendError,
    BackendResponseError,
    BackendUnavailableError,
    LmprogError,
)
from lmprog.ir import SamplingParams
from lmprog.prefix import PrefixIndex
from lmprog.templates import ChatTemplate

T = TypeVar("T")

AFFINITY_CHARS = 256  # prefix granularity of the affinity table and the rendezvous key
MAX_RETRY_AFTER_S = 60.0
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})
PROBE = GenerateRequest(prompt="\n", sampling=SamplingParams(max_new_tokens=1, temperature=0.0))


@dataclass(frozen=True)
class ReplicaStats:
    """What one replica did: requests it answered (gens, select scorings, warm-ups),
    connection-level failures seen, and the engine's token counts for its gens (prompt tokens
    sent, and how many of them its cache served)."""

    label: str
    healthy: bool
    in_flight: int
    requests: int
    failures: int
    prompt_tokens: int
    cached_tokens: int


class _Replica:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.label = str(getattr(backend, "url", "") or backend.name)
        self.healthy = True
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.last_error = ""
        self.probe: asyncio.Task[None] | None = None
        self.rendezvous = hashlib.blake2b(self.label.encode(), digest_size=8).digest()

    def stats(self) -> ReplicaStats:
        return ReplicaStats(
            self.label,
            self.healthy,
            self.in_flight,
            self.requests,
            self.failures,
            self.prompt_tokens,
            self.cached_tokens,
        )


class Replicas(Backend):
    """Several servers of the same model as one backend, with cache affinity, load balance,
    health checks and failover (docs/replicas.md).

    `backends`: backends, or URLs made into backends by `kind` (lp.LlamaCpp by default; e.g.
    `kind=lp.SGLang`, or `kind=lambda url: lp.LlamaCpp(url, chat_template="gemma3")`).
    `routing`: "affinity" (a request goes where the longest prefix of its prompt went) or
    "round_robin". `balance`, `burst`: a replica takes a request while its requests in flight
    stay within (1 + balance) x the average, or under `burst`. `retry_after`: seconds before a
    replica marked down is probed (doubling while it stays down, up to a minute).
    """

    def __init__(
        self,
        backends: Sequence[Backend | str],
        *,
        kind: Callable[[str], Backend] = LlamaCpp,
        routing: Literal["affinity", "round_robin"] = "affinity",
        balance: float = 0.25,
        burst: int = 4,
        retry_after: float = 5.0,
    ) -> None:
        if not backends:
            raise ValueError("lp.Replicas needs at least one backend or URL")
        if routing not in ("affinity", "round_robin"):
            raise ValueError(f"routing must be 'affinity' or 'round_robin', not {routing!r}")
        made = [kind(b) if isinstance(b, str) else b for b in backends]
        self._replicas = [_Replica(b) for b in made]
        labels = [r.label for r in self._replicas]
        if len(set(labels)) != len(labels):
            raise ValueError(f"lp.Replicas got the same server twice: {labels}")
        markers = {b.image_marker for b in made}
        if len(markers) > 1:
            raise ValueError(
                "lp.Replicas needs servers of one kind (they mark images differently: "
                f"{sorted(markers)}); group each kind in its own lp.Replicas"
            )
        self.name = f"lp.Replicas({labels!r})"
        self.routing = routing
        self.balance = balance
        self.burst = burst
        self.retry_after = retry_after
        self.capabilities = _intersection([b.capabilities for b in made])
        self.image_marker = made[0].image_marker
        self._index: PrefixIndex[_Replica] = PrefixIndex(block=AFFINITY_CHARS)
        self._turn = 0

    @property
    def backends(self) -> list[Backend]:
        return [r.backend for r in self._replicas]

    def stats(self) -> list[ReplicaStats]:
        """Per replica, in the order given: health, load, requests answered, token counts."""
        return [r.stats() for r in self._replicas]

    # ----- routing ----------------------------------------------------------------------------

    def _choose(self, prompt: str, keys: list[bytes], tried: list[_Replica]) -> _Replica | None:
        candidates = [r for r in self._replicas if r.healthy and r not in tried]
        if not candidates:
            return None
        if self.routing == "round_robin":
            self._turn += 1
            return candidates[self._turn % len(candidates)]
        key = prompt[:AFFINITY_CHARS].encode("utf-8", "surrogatepass")
        order = sorted(
            candidates,
            key=lambda r: hashlib.blake2b(key, digest_size=8, key=r.rendezvous).digest(),
            reverse=True,
        )
        known, _ = self._index.longest(keys, accept=lambda r: r in candidates)
        if known is not None:
            order.remove(known)
            order.insert(0, known)
        total = sum(r.in_flight for r in candidates) + 1
        cap = max(math.ceil((1 + self.balance) * total / len(candidates)), self.burst)
        return next((r for r in order if r.in_flight < cap), order[0])

    async def _route(
        self,
        prompt: str,
        call: Callable[[Backend], Awaitable[T]],
        may_retry: Callable[[], bool] = lambda: True,
    ) -> tuple[T, _Replica]:
        """Run `call` on the chosen replica; on a connection-level failure, mark it down and
        run it on the next healthy one."""
        keys = self._index.keys(prompt) if self.routing == "affinity" else []
        tried: list[_Replica] = []
        while True:
            replica = self._choose(prompt, keys, tried)
            if replica is None:
                raise self._all_down()
            if keys:
                self._index.record(keys, replica)
            replica.in_flight += 1
            try:
                result = await call(replica.backend)
            except BackendError as exc:
                if not _unavailable(exc):
                    raise
                self._mark_down(replica, exc)
                if not may_retry():
                    raise BackendUnavailableError(
                        f"{self.name}: replica {replica.label} failed after streaming part of "
                        f"the answer, so it was not restarted on another replica: {exc}"
                    ) from exc
                tried.append(replica)
                continue
            finally:
                replica.in_flight -= 1
            replica.requests += 1
            return result, replica

    def _all_down(self) -> BackendUnavailableError:
        causes = "; ".join(f"{r.label}: {r.last_error or 'down'}" for r in self._replicas)
        return BackendUnavailableError(
            f"{self.name}: no replica is reachable ({causes}); start them or check the URLs"
        )

    # ----- health -----------------------------------------------------------------------------

    def _mark_down(self, replica: _Replica, exc: BaseException) -> None:
        replica.failures += 1
        replica.last_error = str(exc)
        replica.healthy = False
        if replica.probe is None or replica.probe.done():
            # an empty context: the probe is not charged to the budget of the run that failed
            replica.probe = contextvars.Context().run(asyncio.ensure_future, self._probe(replica))

    async def _probe(self, replica: _Replica) -> None:
        """Send a one-token request now and then until the replica answers; then it is up."""
        delay = self.retry_after
        while True:
            await asyncio.sleep(delay)
            try:
                await replica.backend.generate(PROBE)
            except BackendError as exc:
                if _unavailable(exc):
                    replica.last_error = str(exc)
                    delay = min(2 * delay, MAX_RETRY_AFTER_S)
                    continue
            except LmprogError:
                pass  # it answered, if only to refuse the probe: it is up
            replica.healthy = True
            replica.probe = None
            return

    # ----- the backend ------------------------------------------------------------------------

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        shown = False

        def relay(piece: str, logprobs: Sequence[dict[str, Any]] = ()) -> None:
            nonlocal shown
            shown = True
            assert on_text is not None
            on_text(piece, logprobs)

        generation, replica = await self._route(
            request.prompt,
            lambda backend: backend.generate(request, relay if on_text else None),
            lambda: not shown,
        )
        replica.prompt_tokens += generation.prompt_tokens or 0
        replica.cached_tokens += generation.cached_tokens or 0
        generation.extra["replica"] = replica.label
        return generation

    async def score_choices(
        self, context: GenerateRequest, choices: tuple[str, ...], method: ChoicesMethod
    ) -> list[ChoiceLogprobs]:
        scored, _ = await self._route(
            context.prompt, lambda backend: backend.score_choices(context, choices, method)
        )
        return scored

    async def warm(self, prompt: str) -> None:
        """Warm the replica that requests extending `prompt` will go to (affinity)."""
        await self._route(prompt, lambda backend: backend.warm(prompt))

    async def _model_chat_template(self) -> ChatTemplate:
        """The first healthy replica's template (the replicas serve one model)."""
        for replica in self._replicas:
            if not replica.healthy:
                continue
            try:
                return await replica.backend.chat_template()
            except BackendError as exc:
                if not _unavailable(exc):
                    raise
                self._mark_down(replica, exc)
        raise self._all_down()

    async def concurrency_hint(self) -> int:
        """The sum of the healthy replicas' hints (for llama-server, all their slots)."""
        hints = [await r.backend.concurrency_hint() for r in self._replicas if r.healthy]
        return sum(hints) or 4

    def check_images(self) -> None:
        for replica in self._replicas:
            replica.backend.check_images()

    async def aclose(self) -> None:
        for replica in self._replicas:
            if replica.probe is not None:
                replica.probe.cancel()
                replica.probe = None
            await replica.backend.aclose()

    def __repr__(self) -> str:
        up = sum(r.healthy for r in self._replicas)
        return f"<lmprog {self.name}: {up} of {len(self._replicas)} up>"


def _unavailable(exc: BaseException) -> bool:
    """A failure that says the server cannot serve now, not that the request is wrong."""
    if isinstance(exc, BackendUnavailableError):
        return True
    return isinstance(exc, BackendResponseError) and exc.status_code in UNAVAILABLE_STATUSES


def _intersection(capabilities: list[Capabilities]) -> Capabilities:
    """What every replica can do (a request may land on any of them)."""

    def common(field: str) -> Any:
        sets: list[frozenset[str]] = [getattr(c, field) for c in capabilities]
        return frozenset.intersection(*sets)

    return Capabilities(
        constraints=common("constraints"),
        grammar_syntaxes=common("grammar_syntaxes"),
        choices_methods=common("choices_methods"),
        chat_only=any(c.chat_only for c in capabilities),
        images=all(c.images for c in capabilities),
        streaming=all(c.streaming for c in capabilities),
        logprobs=all(c.logprobs for c in capabilities),
        prefix_cache=all(c.prefix_cache for c in capabilities),
    )
