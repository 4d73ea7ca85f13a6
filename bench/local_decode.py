"""lp.Local decode speed: generated tokens/s with 1, 4 and 16 requests decoding together, next to
transformers' own `generate` (one request) on the same model, device and dtype.

Each request has a short prompt already in the radix cache (a warm-up run puts it there), so
the time is decoding. Median of `--repeat` runs.

    .venv/bin/python bench/local_decode.py [--model PATH] [--device cuda] [--dtype bfloat16]
        [--weights auto|packed|float32]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import lmprog as lp
from lmprog.backends.local.weights import resolve_model


@lp.function
def words(s, i, tokens):
    s += f"List number {i} of English words:\n"
    s += lp.gen("w", max_tokens=tokens, temperature=0, ignore_eos=True)


def local_speed(backend: lp.Local, batch: int, tokens: int, repeat: int) -> float:
    """Generated tokens per second over `batch` concurrent requests of `tokens` tokens."""
    items = [(i, tokens) for i in range(batch)]
    words.run_batch([(i, 4) for i in range(batch)], backend=backend)  # warm up, cache prompts

    def once() -> float:
        start = time.perf_counter()
        states = words.run_batch(items, backend=backend, max_concurrency=batch)
        elapsed = time.perf_counter() - start
        for state in states:
            if state.error() is not None:
                raise state.error()  # type: ignore[misc]
        return sum(s.get_meta_info("w")["completion_tokens"] for s in states) / elapsed

    return statistics.median(once() for _ in range(repeat))


def transformers_speed(folder: Path, device: str, dtype: torch.dtype, tokens: int) -> float:
    """transformers' greedy `generate`, one request, `tokens` new tokens (EOS ignored)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    vocab = model.config.get_text_config().vocab_size
    ids = torch.tensor([[2, 651, 1758, 1548, 3853, 4171]], device=device) % vocab
    kwargs = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False}
    model.generate(ids, **kwargs)  # warm up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(ids, **kwargs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: Gemma)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (lp.Local's default)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--weights", default="auto", choices=["auto", "packed", "float32"])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype) if args.dtype else None
    backend = lp.Local(args.model, device=args.device, dtype=dtype, weights=args.weights)
    backend.load()
    print(
        f"lp.Local on {backend.device} in {backend.dtype}, {backend.weights} weights, "
        f"{args.tokens} tokens per request"
    )
    print("\n| decoding | tokens/s | tokens/s per request |\n| --- | --- | --- |")
    for batch in (int(b) for b in args.batches.split(",")):
        speed = local_speed(backend, batch, args.tokens, args.repeat)
        print(f"| lp.Local, {batch} together | {speed:.0f} | {speed / batch:.0f} |")
    backend.shutdown()
    folder = resolve_model(args.model).path
    reference = transformers_speed(folder, str(backend.device), backend.dtype, args.tokens)
    print(f"| transformers generate, 1 | {reference:.0f} | {reference:.0f} |")


if __name__ == "__main__":
    main()
