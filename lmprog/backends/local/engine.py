"""The decode loop of lp.Local: one thread that owns the model and its radix KV cache.

Requests from every program (forks and batch items included) are queued to this thread. Each
prompt is prefilled from the longest prefix the radix cache holds, in chunks computed between
decode steps, several prompts in one pass (prefill.py); then it joins a running batch: all
active requests decode together, one forward pass per step, with left padding and an attention
mask. A finished request's KV goes back into the cache, so the next call of the same
program starts where this one stopped. torch releases the GIL inside its kernels, so the event
loop that runs the programs stays responsive while the model computes.
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from lmprog.backends.local.forward import Forward
from lmprog.backends.local.head import OutputHead
from lmprog.backends.local.kvcache import growing_cache
from lmprog.backends.local.prefill import Pending, chunk_pass
from lmprog.backends.local.radix import LayerKV, RadixCache, common_length
from lmprog.backends.local.sampling import choose, penalised, seeded_generator
from lmprog.ir import SamplingParams

DEFAULT_MAX_NEW_TOKENS = 128  # SGLang's default when a gen sets none
# A constrained row whose mask allows at most 1/PROJECT_BELOW of the vocabulary gets only those
# rows of the output head (a select, digits, JSON punctuation); wider masks read it all.
PROJECT_BELOW = 16
# Prompt tokens computed between two decode steps (prefill.py): a long prompt delays the rows
# that are decoding by at most this much work per step.
PREFILL_BUDGET = 256
# A request waits while a prompt in prefill shares this many more tokens with it than the radix
# cache holds: batch items then compute their common prefix once, not side by side.
SHARED_PREFIX_WAIT = 32


class ConstraintCursor(Protocol):
    """Where a constrained generation stands (implemented by lmprog.backends.local.masks)."""

    def fill_mask(self, allowed: torch.Tensor) -> None: ...
    def advance(self, token_id: int) -> None: ...
    @property
    def is_finished(self) -> bool: ...


class Detokenizer(Protocol):
    def __call__(self, ids: list[int]) -> str: ...


@dataclass
class GenerationResult:
    ids: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    logprobs: list[dict[str, Any]] | None
    stopping_word: str | None


@dataclass(eq=False)
class Job:
    """One generation request, and its progress while it is decoded."""

    prompt_ids: list[int]
    sampling: SamplingParams
    constraint: ConstraintCursor | None
    top_logprobs: int | None  # None: no logprobs; 0: the chosen token's only
    on_text: Callable[[str, list[dict[str, Any]]], None] | None  # a piece, its logprobs
    on_done: Callable[[GenerationResult | BaseException], None]
    cancelled: bool = False
    settled: bool = False  # answered, or dropped after a cancel: no longer counted as active
    generated: list[int] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    logprobs_emitted: int = 0
    cached_tokens: int = 0
    stopping_word: str | None = None
    logits: torch.Tensor | None = None
    allowed: torch.Tensor | None = None  # the constraint's mask for `logits`
    generator: torch.Generator | None = None


@dataclass
class _Batch:
    """Rows decoding together: a shared cache, left-padded, and each row's padding."""

    jobs: list[Job]
    cache: DynamicCache
    pads: list[int]

    @property
    def width(self) -> int:
        return int(self.cache.get_seq_length())


class Engine:
    """Runs generation and scoring requests for one model on a background thread."""

    def __init__(
        self,
        forward: Forward,
        head: OutputHead,
        *,
        eos_token_ids: tuple[int, ...],
        detokenize: Detokenizer,
        token_text: Callable[[int], str],
        cache_tokens: int,
        max_batch_size: int,
        max_context: int,
        device: torch.device,
    ) -> None:
        self.forward = forward
        self.head = head
        self.eos_token_ids = eos_token_ids
        self.detokenize = detokenize
        self.token_text = token_text
        self.radix = RadixCache(cache_tokens)
        self.max_batch_size = max_batch_size
        self.max_context = max_context
        self.device = device
        self._inbox: queue.Queue[Job | Callable[[], None] | None] = queue.Queue()
        self._waiting: list[Job] = []
        self._prefilling: dict[Pending, Job] = {}  # in arrival order
        self._active = 0  # submitted and not yet settled
        self._active_lock = threading.Lock()
        self._batch: _Batch | None = None
        self.peak_batch_size = 0  # most requests ever decoded in one step
        self._thread = threading.Thread(target=self._run, name="lmprog-local-engine", daemon=True)
        self._thread.start()
        # torch code still running in a thread when the interpreter finalizes aborts the
        # process ("terminate called without an active exception"): stop it first.
        atexit.register(self.stop)

    # ----- called from any thread ---------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self._active_lock:
            self._active += 1
        self._inbox.put(job)

    def call(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the engine thread between decode steps (scoring, cache queries)."""
        self._inbox.put(fn)

    @property
    def active_requests(self) -> int:
        """Requests submitted and not yet answered (queued, waiting for a place in the batch,
        or decoding), cancelled ones until the engine drops them. A request leaves the count
        before its answer is delivered, so a caller that has every answer reads 0."""
        return self._active

    def stop(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=30)

    # ----- the engine thread --------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while self._admit():
                if self._prefilling:
                    self._prefill_step()
                if self._batch is not None:
                    self._step()

    def _admit(self) -> bool:
        """Take queued work: block when idle, else only what is waiting. False: stop."""
        block = self._batch is None and not self._waiting and not self._prefilling
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                break
            block = False
            if item is None:
                self._fail_all(RuntimeError("the local engine was shut down"))
                return False
            if isinstance(item, Job):
                self._waiting.append(item)
            else:
                item()
        decoding = len(self._batch.jobs) if self._batch else 0
        room = self.max_batch_size - decoding - len(self._prefilling)
        waiting, self._waiting = self._waiting, []
        for job in waiting:
            if job.cancelled:
                self._settle(job, None)
            elif room > 0 and not self._prefix_in_prefill(job.prompt_ids):
                self._start(job)
                room -= 1
            else:
                self._waiting.append(job)
        return True

    def _prefix_in_prefill(self, ids: list[int]) -> bool:
        """A prompt in prefill will give `ids` a longer cached prefix than the radix has."""
        if not self._prefilling:
            return False
        shared = max(common_length(p.ids, ids) for p in self._prefilling)
        return shared - self.radix.prefix_length(ids) >= SHARED_PREFIX_WAIT

    def _start(self, job: Job) -> None:
        """Queue the job's prompt for prefill, from the longest prefix the radix cache holds
        (at least one token is computed, for its logits)."""
        ids = job.prompt_ids
        if len(ids) >= self.max_context:
            error = f"the prompt has {len(ids)} tokens; the model's context is {self.max_context}"
            self._settle(job, ValueError(error))
            return
        hit, kv = self.radix.match(ids)
        job.cached_tokens = hit = min(hit, len(ids) - 1)
        pending = Pending(ids, hit, [(k[:, :hit], v[:, :hit]) for k, v in kv] if hit else [])
        self._prefilling[pending] = job

    def _prefill_step(self) -> None:
        """The next chunks of the waiting prompts, in one pass; finished ones join the batch."""
        for pending, job in list(self._prefilling.items()):
            if job.cancelled:
                del self._prefilling[pending]
                self._settle(job, None)
        if not self._prefilling:
            return
        try:
            finished = chunk_pass(self.forward, list(self._prefilling), PREFILL_BUDGET, self.device)
        except Exception as exc:  # fails the prompts in prefill, not the decoding rows
            jobs, self._prefilling = list(self._prefilling.values()), {}
            for job in jobs:
                self._settle(job, exc)
            return
        if not finished:
            return
        jobs = [self._prefilling.pop(pending) for pending, _ in finished]
        for (pending, _), job in zip(finished, jobs, strict=True):
            self.radix.record(job.cached_tokens, len(pending.ids) - job.cached_tokens)
            self.radix.insert(pending.ids, pending.kv)
            job.generator = seeded_generator(job.sampling.seed, self.device)
        self._next_logits(jobs, torch.stack([hidden for _, hidden in finished]))
        for (pending, _), job in zip(finished, jobs, strict=True):
            cache = growing_cache()
            for layer, (keys, values) in enumerate(pending.kv):
                cache.update(keys[None], values[None], layer)
            self._join(job, cache)

    def prefill(self, ids: list[int], keep: int) -> tuple[DynamicCache, torch.Tensor, int]:
        """Run `ids` through the model in one pass (for scoring), reusing the longest cached
        prefix (at least `keep` tokens are computed). Returns the cache, the last `keep`
        positions' final hidden states and how many tokens came from the radix cache."""
        hit, kv = self.radix.match(ids)
        hit = min(hit, len(ids) - keep)
        cache = growing_cache()
        for layer, (keys, values) in enumerate(kv):
            cache.update(keys[None, :, :hit], values[None, :, :hit], layer)
        new = torch.tensor([ids[hit:]], device=self.device)
        positions = torch.arange(hit, len(ids), device=self.device)[None]
        hidden = self.forward(new, positions, cache)
        self.radix.record(hit, len(ids) - hit)
        self.radix.insert(ids, _rows(cache, 0, 0))
        return cache, hidden[0, -keep:], hit

    def score(self, context: list[int], target: list[int]) -> list[float]:
        """Log-probability of each token of `target` following `context` (non-empty)."""
        _, hidden, _ = self.prefill(context + target, keep=len(target) + 1)
        logprobs = torch.log_softmax(self.head.logits(hidden[:-1]), dim=-1)
        chosen = torch.tensor(target, device=logprobs.device)[:, None]
        return [float(v) for v in logprobs.gather(1, chosen)[:, 0].tolist()]  # one GPU sync

    def _join(self, job: Job, cache: DynamicCache) -> None:
        if self._batch is None:
            self._batch = _Batch([job], cache, [0])
            self.peak_batch_size = max(self.peak_batch_size, 1)
            return
        batch = self._batch
        width = max(batch.width, int(cache.get_seq_length()))
        extra, own = width - batch.width, width - int(cache.get_seq_length())
        for mine, theirs in zip(_layers(batch.cache), _layers(cache), strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, extra), _pad_left(theirs.keys, own)])
            mine.values = torch.cat([_pad_left(mine.values, extra), _pad_left(theirs.values, own)])
        batch.pads = [p + extra for p in batch.pads] + [own]
        batch.jobs.append(job)
        self.peak_batch_size = max(self.peak_batch_size, len(batch.jobs))

    def _step(self) -> None:
        batch = self._batch
        assert batch is not None
        finished = [i for i, job in enumerate(batch.jobs) if self._advance(job)]
        if finished:
            self._retire(batch, finished)
        if self._batch is None:
            return
        try:
            self._forward(self._batch)
        except Exception as exc:  # a failed forward fails the rows that were in it, not the engine
            self._fail_all(exc)

    def _advance(self, job: Job) -> bool:
        """Pick the job's next token; True when the job is finished (and answered)."""
        if job.cancelled:
            self._settle(job, None)
            return True
        assert job.logits is not None
        try:
            token = self._choose(job, job.logits)
            reason = self._record(job, token)
        except Exception as exc:
            job.cancelled = True  # its KV is not worth keeping
            self._settle(job, exc)
            return True
        if reason is None:
            return False
        self._settle(job, self._result(job, reason))
        return True

    def _settle(self, job: Job, outcome: GenerationResult | BaseException | None) -> None:
        """The job leaves the engine: count it out, then answer it (None: cancelled, nobody
        waits for an answer). Counting out first means a caller that has its answer never
        sees it still active, although its KV is given to the radix cache only after."""
        if job.settled:
            return
        job.settled = True
        with self._active_lock:
            self._active -= 1
        if outcome is not None:
            job.on_done(outcome)

    def _choose(self, job: Job, raw: torch.Tensor) -> int:
        logits = raw
        forbidden_eos = bool(job.sampling.ignore_eos) or len(job.generated) < (
            job.sampling.min_tokens or 0
        )
        if job.allowed is not None:
            logits = logits.masked_fill(~job.allowed, float("-inf"))
        if forbidden_eos:
            logits = logits.clone()
            logits[list(self.eos_token_ids)] = float("-inf")
        logits = penalised(logits, job.sampling, job.generated)
        token = choose(logits, job.sampling, job.generator)
        if job.top_logprobs is not None:
            job.logprobs.append(self._logprob_entry(raw, token, job.top_logprobs))
        return token

    def _logprob_entry(self, raw: torch.Tensor, token: int, top: int) -> dict[str, Any]:
        """The model's own log-probability of the chosen token (before any mask)."""
        logprobs = torch.log_softmax(raw.float(), dim=-1)
        entry: dict[str, Any] = {
            "id": token,
            "token": self.token_text(token),
            "logprob": float(logprobs[token]),
        }
        if top:
            values, ids = torch.topk(logprobs, top)
            entry["top_logprobs"] = [
                {"id": int(i), "token": self.token_text(int(i)), "logprob": float(v)}
                for v, i in zip(values.tolist(), ids.tolist(), strict=True)
            ]
        return entry

    def _record(self, job: Job, token: int) -> str | None:
        """Add `token` to the job; the finish reason if it ends here."""
        sampling = job.sampling
        stopped_by_eos = token in self.eos_token_ids and not sampling.ignore_eos
        if stopped_by_eos or token in (sampling.stop_token_ids or ()):
            job.generated.append(token)
            self._emit(job, final=True)
            return "stop"
        job.generated.append(token)
        if job.constraint is not None:
            job.constraint.advance(token)
        job.text = self.detokenize(job.generated)
        if self._cut_at_stop(job):
            return "stop"
        limit = sampling.max_new_tokens
        if limit is None:
            limit = DEFAULT_MAX_NEW_TOKENS
        done = job.constraint is not None and job.constraint.is_finished
        if done or len(job.generated) >= limit:
            self._emit(job, final=True)
            return "stop" if done else "length"
        if len(job.prompt_ids) + len(job.generated) >= self.max_context:
            self._emit(job, final=True)
            return "length"
        self._emit(job, final=False)
        return None

    def _cut_at_stop(self, job: Job) -> bool:
        stops = job.sampling.stop or ()
        hits = [(job.text.find(s), s) for s in stops if s and s in job.text]
        if not hits:
            return False
        at, word = min(hits)
        job.text = job.text[:at]
        job.stopping_word = word
        self._emit(job, final=True)
        return True

    def _emit(self, job: Job, final: bool) -> None:
        """Stream what is settled: not a partial UTF-8 character, nor what could still turn
        out to be the start of a stop string."""
        if job.on_text is None:
            return
        end = len(job.text)
        if not final:
            if job.text.endswith("\ufffd"):
                end -= 1
            for stop in job.sampling.stop or ():
                settled = job.text[:end]
                for k in range(min(len(stop) - 1, end), 0, -1):
                    if settled.endswith(stop[:k]):
                        end -= k
                        break
        if end > job.emitted:
            job.on_text(job.text[job.emitted : end], job.logprobs[job.logprobs_emitted :])
            job.emitted, job.logprobs_emitted = end, len(job.logprobs)

    def _result(self, job: Job, reason: str) -> GenerationResult:
        return GenerationResult(
            ids=job.generated,
            text=job.text,
            finish_reason=reason,
            prompt_tokens=len(job.prompt_ids),
            cached_tokens=job.cached_tokens,
            logprobs=job.logprobs if job.top_logprobs is not None else None,
            stopping_word=job.stopping_word,
        )

    def _retire(self, batch: _Batch, rows: list[int]) -> None:
        """Give finished rows' KV to the radix cache and drop them from the batch."""
        for row in rows:
            job = batch.jobs[row]
            fed = job.prompt_ids + job.generated[:-1]
            if not job.cancelled and len(fed) == batch.width - batch.pads[row]:
                self.radix.insert(fed, _rows(batch.cache, row, batch.pads[row]))
        keep = [i for i in range(len(batch.jobs)) if i not in rows]
        if not keep:
            self._batch = None
            return
        trim = min(batch.pads[i] for i in keep)
        index = torch.tensor(keep, device=self.device)
        for layer in _layers(batch.cache):
            layer.keys = layer.keys[index, :, trim:]
            layer.values = layer.values[index, :, trim:]
        batch.jobs = [batch.jobs[i] for i in keep]
        batch.pads = [batch.pads[i] - trim for i in keep]

    def _forward(self, batch: _Batch) -> None:
        """Feed each row its newest token; every row gets its next logits."""
        width = batch.width
        tokens = torch.tensor([[job.generated[-1]] for job in batch.jobs], device=self.device)
        valid = None  # no padding: the plain causal path, without building a mask
        if any(batch.pads):
            pads = torch.tensor(batch.pads, dtype=torch.long, device=self.device)
            columns = torch.arange(width + 1, device=self.device)
            valid = columns[None, :] >= pads[:, None]  # False on each row's left padding
        positions = torch.tensor(
            [[width - pad] for pad in batch.pads], dtype=torch.long, device=self.device
        )
        hidden = self.forward(tokens, positions, batch.cache, valid)
        self._next_logits(batch.jobs, hidden[:, -1])

    def _next_logits(self, jobs: list[Job], hidden: torch.Tensor) -> None:
        """Each job's next-token logits (and mask) from its row of `hidden` ([rows, hidden]).
        A constrained row with few allowed tokens gets only theirs, the rest -inf: unless its
        logprobs are wanted, which need the whole distribution."""
        vocab = self.head.vocab_size
        full = []
        for row, job in enumerate(jobs):
            if job.constraint is None:
                full.append(row)
                continue
            job.allowed = torch.zeros(vocab, dtype=torch.bool, device=self.device)
            job.constraint.fill_mask(job.allowed)
            ids = job.allowed.nonzero()[:, 0]
            if job.top_logprobs is not None or len(ids) * PROJECT_BELOW > vocab:
                full.append(row)
                continue
            job.logits = torch.full((vocab,), float("-inf"), device=self.device)
            job.logits[ids] = self.head.rows(hidden[row], ids)
        if full:
            logits = self.head.logits(hidden[full])
            for at, row in enumerate(full):
                jobs[row].logits = logits[at]

    def _fail_all(self, exc: BaseException) -> None:
        jobs = (self._batch.jobs if self._batch else []) + self._waiting
        jobs += list(self._prefilling.values())
        self._batch, self._waiting, self._prefilling = None, [], {}
        for job in jobs:
            self._settle(job, None if job.cancelled else exc)


def _pad_left(tensor: torch.Tensor, amount: int) -> torch.Tensor:
    if amount == 0:
        return tensor
    shape = list(tensor.shape)
    shape[2] = amount
    return torch.cat([tensor.new_zeros(shape), tensor], dim=2)


def _rows(cache: DynamicCache, row: int, pad: int) -> list[LayerKV]:
    """One row of a cache as radix-tree KV (`[heads, tokens, head_dim]` per layer)."""
    return [(layer.keys[row, :, pad:], layer.values[row, :, pad:]) for layer in _layers(cache)]


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's layers. Ours are made without a model config, so every one is a
    GrowingLayer (kvcache.py) with `keys`/`values` of `[batch, heads, tokens, head_dim]`: even
    sliding-window layers keep every token, which is what lets the radix tree hold whole
    prefixes."""
    return list(cache.layers)
