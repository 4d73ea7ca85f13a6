"""Prefix-aware batch scheduling: items that share a prompt prefix run close together, and a
shared prefix is computed once before the items that share it go out.

`run_batch` does not know an item's prompt before running it, and running a program body twice
(or with placeholder arguments, as SGLang's tracing does) would repeat its side effects. So the
batch learns from its first item instead:

1. Item 0 is launched alone. Its first request is held while it warms the engine's cache with
   its own prompt (`backend.warm`), so the items that share a prefix with it find the prefix
   computed; item 0's own request then reuses all of it.
2. The other items are launched once that prompt is known, in an order that keeps items sharing
   a prefix together: items whose string arguments, taken in the order those values appear in
   item 0's prompt, start with the same values run together, where the first of them stands
   (items about one document run one after another). Items that share nothing keep their input
   order.
3. Each item's first request joins a group of items whose prompts share at least
   `WARM_PREFIX_CHARS` with it. The first item to join a group warms what it shares with the
   group's first item, and the others wait for that one warm-up instead of all computing the
   prefix at once (which is what concurrent requests on a shared-cache engine do).

Engines whose cache is per slot (llama-server) do nothing on `warm`, so there only the order
changes. Results still come back in input order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from lmprog.backends.base import Backend, GenerateRequest, Generation, TextCallback, WrappedBackend
from lmprog.choices import ChoiceLogprobs, ChoicesMethod
from lmprog.errors import LmprogError
from lmprog.execution import WARM_PREFIX_CHARS
from lmprog.global_config import global_config
from lmprog.prefix import PrefixIndex, common_prefix_length

T = TypeVar("T")

FIRST_PROMPT_WAIT_S = 1.0  # the rest of a batch waits at most this long for item 0's prompt
MIN_KEY_CHARS = 4  # shorter argument values are found in a prompt by chance


def prefix_order(items: Sequence[Any], prompt: str) -> list[int]:
    """Launch order: items whose string arguments, taken in the order item 0's `prompt` shows
    them, start with the same values run together, where the first of them stands; items
    that share nothing keep their input order (so a budget or Ctrl-C still stops the last)."""
    first = _string_arguments(items[0])
    found = sorted(
        (prompt.find(value), key)
        for key, value in first.items()
        if len(value) >= MIN_KEY_CHARS and value in prompt
    )
    order = [key for _, key in found]
    first_seen: dict[tuple[str, ...], int] = {}

    def group_key(index: int) -> tuple[int, ...]:
        values = _string_arguments(items[index])
        leading = tuple(values.get(key, "") for key in order)
        return tuple(first_seen.setdefault(leading[:k], index) for k in range(1, len(order) + 1))

    keys = [group_key(i) for i in range(len(items))]
    return sorted(range(len(items)), key=lambda i: (keys[i], i))


def _string_arguments(item: Any) -> dict[int | str, str]:
    pairs = item.items() if isinstance(item, dict) else enumerate(item)
    return {key: value for key, value in pairs if isinstance(value, str)}


class _Group:
    """Items whose first prompts share a long prefix; one warm-up serves them all."""

    def __init__(self, leader: str) -> None:
        self.leader = leader
        self.warm: asyncio.Task[None] | None = None
        self.computed = False  # the leader's first request has finished: the engine has it


class BatchScheduler:
    """Launches a batch's items in prefix order and warms each shared prefix once.

    `backend_for(i)` is the backend item i runs on: it holds the item's first request until
    the item is admitted (grouped, and its group's prefix warmed)."""

    def __init__(self, backend: Backend, size: int) -> None:
        self.backend = backend
        self.size = size
        self._groups: PrefixIndex[_Group] = PrefixIndex(block=128)
        self._first_prompt: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._warms: list[asyncio.Task[None]] = []

    def backend_for(self, index: int) -> Backend:
        return _ItemBackend(self, index) if self.size > 1 else self.backend

    async def run(
        self, items: Sequence[Any], start: Callable[[int], Coroutine[Any, Any, None]]
    ) -> None:
        """Run `start(i)` for every item: item 0 first, the others once its prompt is known."""
        if len(items) < 2:
            await asyncio.gather(*(start(i) for i in range(len(items))))
            return
        first = asyncio.ensure_future(start(0))
        try:
            waiting: list[asyncio.Future[Any]] = [first, self._first_prompt]
            await asyncio.wait(
                waiting,
                timeout=FIRST_PROMPT_WAIT_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
            order: Sequence[int] = range(len(items))
            if self._first_prompt.done():
                order = prefix_order(items, self._first_prompt.result())
            await asyncio.gather(first, *(start(i) for i in order if i != 0))
        finally:  # cancels only what a cancelled batch left running
            first.cancel()
            for warm in self._warms:
                warm.cancel()

    def admit(self, index: int, prompt: str) -> tuple[_Group | None, asyncio.Task[None] | None]:
        """Called before item `index`'s first request: group it. Returns the group the item
        leads (None if it joined one) and the warm-up its requests wait for (None: none).

        Item 0 warms its whole prompt. A group's first item goes without warming: its own
        request computes the prefix. The next item warms the shared part if that request is
        still in flight (concurrent requests would each compute it); later items wait for that
        warm-up, which is then in the cache."""
        if index == 0 and not self._first_prompt.done():
            self._first_prompt.set_result(prompt)
        if len(prompt) < WARM_PREFIX_CHARS or not global_config.enable_precache_with_tracing:
            return None, None  # (SGLang's switch for pre-caching a batch's shared prefix)
        keys = self._groups.keys(prompt)
        group, _ = self._groups.longest(keys)
        shared = common_prefix_length(group.leader, prompt) if group else 0
        leads = group is None or shared < WARM_PREFIX_CHARS
        if group is None or leads:
            group = _Group(prompt)
            self._groups.record(keys, group)
            if index == 0:
                group.warm = self._warm(prompt)
        elif group.warm is None and not group.computed:
            group.warm = self._warm(prompt[:shared])
        return (group if leads else None), group.warm

    def _warm(self, prefix: str) -> asyncio.Task[None]:
        """Warm the engine's cache with `prefix`, as a task the group's items wait for."""

        async def warm() -> None:
            # a failed warm-up only loses the optimisation: the requests that follow meet the
            # same failure and report it
            with contextlib.suppress(LmprogError):
                await self.backend.warm(prefix)

        task = asyncio.ensure_future(warm())
        self._warms.append(task)
        return task


class _ItemBackend(WrappedBackend):
    """The batch's backend as one item sees it: its first request waits to be admitted."""

    def __init__(self, scheduler: BatchScheduler, index: int) -> None:
        super().__init__(scheduler.backend)
        self.scheduler = scheduler
        self.index = index
        self._admitted: tuple[_Group | None, asyncio.Task[None] | None] | None = None

    async def _admit(self, prompt: str) -> _Group | None:
        """Admit the item on its first request (every request waits for its group's warm-up);
        returns the group it leads, if any."""
        if self._admitted is None:
            self._admitted = self.scheduler.admit(self.index, prompt)
        leads, warm = self._admitted
        if warm is not None and not warm.done():
            await asyncio.shield(warm)
        return leads

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        leads = await self._admit(request.prompt)
        try:
            return await self.inner.generate(request, on_text)
        finally:
            if leads is not None:
                leads.computed = True

    async def score_choices(
        self, context: GenerateRequest, choices: tuple[str, ...], method: ChoicesMethod
    ) -> list[ChoiceLogprobs]:
        leads = await self._admit(context.prompt)
        try:
            return await self.inner.score_choices(context, choices, method)
        finally:
            if leads is not None:
                leads.computed = True
