"""`lp.Engine`: SGLang's offline engine API (`sgl.Engine(model_path=...).generate(...)`) on
lmprog's in-process backend, `lp.Local`.

SGLang's Engine runs its server's scheduler inside the Python process and answers raw
`generate(prompt, sampling_params)` calls with `{"text", "meta_info"}` dicts; it is not a
backend for the language. Here the same calls run on `lp.Local` (torch, the model's own
weights), with SGLang's result shape. To run programs on the model, use `engine.backend` (the
`lp.Local` underneath) or `lp.Local(...)` directly. SGLang's server arguments (memory
fractions, parallelism, ...) have no meaning in lp.Local and are refused by name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lmprog import loop
from lmprog.backends.base import GenerateRequest, Generation
from lmprog.constraints import make_constraint
from lmprog.ir import SamplingParams
from lmprog.logprobs import logprob_meta

if TYPE_CHECKING:
    from lmprog.backends.local import Local

# SGLang sampling parameter -> lmprog's SamplingParams field
_SAMPLING = {
    "max_new_tokens": "max_new_tokens",
    "min_new_tokens": "min_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "stop": "stop",
    "stop_token_ids": "stop_token_ids",
    "ignore_eos": "ignore_eos",
    "sampling_seed": "seed",
}
_CONSTRAINTS = {"regex": "regex", "json_schema": "json_schema", "ebnf": "grammar"}
_ACCEPTED = {"skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim"}


class Engine:
    """SGLang's `Engine(model_path=..., **server_args)`: `generate` and `async_generate` of
    raw prompts on an in-process `lp.Local` (see the module). `device` and `dtype` are
    lp.Local's; `model_path=None` loads lmprog's default model."""

    def __init__(
        self,
        model_path: str | None = None,
        *,
        device: str | None = None,
        dtype: Any = None,
        log_level: str | None = None,
        **server_args: Any,
    ) -> None:
        del log_level  # lp.Local logs nothing per request
        if server_args:
            raise TypeError(
                f"lp.Engine runs on lp.Local, which has no SGLang server arguments "
                f"{sorted(server_args)}; it takes model_path, device and dtype"
            )
        from lmprog.backends.local import Local

        if isinstance(dtype, str) and dtype != "auto":
            import torch

            dtype = getattr(torch, dtype)
        chosen = None if dtype == "auto" else dtype
        self.backend: Local = Local(model_path, device=device, dtype=chosen)

    def generate(
        self,
        prompt: str | Sequence[str],
        sampling_params: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
        return_logprob: bool = False,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Complete one prompt (a dict) or several (a list, concurrently)."""
        result: dict[str, Any] | list[dict[str, Any]] = loop.wait(
            self.async_generate(prompt, sampling_params, return_logprob)
        )
        return result

    async def async_generate(
        self,
        prompt: str | Sequence[str],
        sampling_params: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
        return_logprob: bool = False,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """`generate` for asyncio code."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if sampling_params is None or isinstance(sampling_params, dict):
            params = [sampling_params or {}] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(f"{len(params)} sampling_params for {len(prompts)} prompts")
        requests = [_request(p, s, return_logprob) for p, s in zip(prompts, params, strict=True)]

        async def run() -> list[Generation]:
            return list(await asyncio.gather(*(self.backend.generate(r) for r in requests)))

        outputs = [_output(g, return_logprob) for g in await loop.await_on_loop(run())]
        return outputs[0] if isinstance(prompt, str) else outputs

    def shutdown(self) -> None:
        """Kept for SGLang's API: the model is freed with the engine."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _request(prompt: str, params: dict[str, Any], return_logprob: bool) -> GenerateRequest:
    unknown = set(params) - set(_SAMPLING) - set(_CONSTRAINTS) - _ACCEPTED
    if unknown:
        raise TypeError(
            f"lp.Engine does not take the sampling parameters {sorted(unknown)}; it takes "
            f"{sorted({*_SAMPLING, *_CONSTRAINTS})}"
        )
    sampling = SamplingParams.from_kwargs(
        **{_SAMPLING[k]: v for k, v in params.items() if k in _SAMPLING}
    ).merged_over(SamplingParams(max_new_tokens=128))
    constraint = make_constraint(
        **{_CONSTRAINTS[k]: v for k, v in params.items() if k in _CONSTRAINTS}
    )
    return GenerateRequest(
        prompt=prompt, sampling=sampling, constraint=constraint, return_logprob=return_logprob
    )


def _output(generation: Generation, return_logprob: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "cached_tokens": generation.cached_tokens,
        "finish_reason": {"type": generation.finish_reason},
    }
    if return_logprob:
        meta.update(logprob_meta(generation.logprobs or ()))
    return {"text": generation.text, "meta_info": meta}
