"""Reference outputs computed without lmprog, to compare its backends against."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def transformers_greedy(
    folder: Path, device: str = "cpu", dtype: Any = None
) -> Callable[[str, int], str]:
    """Greedy text from transformers' own `generate` on the model in `folder`, without lmprog
    (the end-of-sequence token it stops on is not part of the text). `dtype`: a torch dtype
    (default float32)."""
    import tokenizers
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
    model = model.to(device).eval()
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])

    def complete(prompt: str, max_tokens: int) -> str:
        ids = tokenizer.encode(prompt).ids
        prompt_ids = torch.tensor([ids], device=device)
        out = model.generate(prompt_ids, max_new_tokens=max_tokens, do_sample=False)
        new = out[0, len(ids) :].tolist()
        if new and new[-1] in eos_ids:
            new = new[:-1]
        return tokenizer.decode(new, skip_special_tokens=False)

    return complete
