"""select on vLLM scores each choice with the model's own teacher-forced logprobs: checked
against transformers on the same weights, through lp.VLLM and lp.OpenAI's completions."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.models import tiny_model_dir

import lmprog as lp

pytestmark = pytest.mark.engine

PROMPT = "def add(a, b):\n    return"
CHOICES = [" a + b", " a - b", " None", "  a"]  # "  a": its space may join the prompt's end


def reference_logprobs(folder: Path, prompt: str, choice: str) -> tuple[list[int], list[float]]:
    """The choice's token ids after those prompt+choice shares with the prompt, and their
    logprobs given everything before them, from transformers alone."""
    import tokenizers
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt_ids, full = tokenizer.encode(prompt).ids, tokenizer.encode(prompt + choice).ids
    start = next(
        (i for i, (a, b) in enumerate(zip(prompt_ids, full, strict=False)) if a != b),
        min(len(prompt_ids), len(full)),
    )
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return full[start:], [float(logprobs[k - 1, full[k]]) for k in range(start, len(full))]


@pytest.mark.parametrize("through", ["lp.VLLM", "lp.OpenAI"])
def test_select_scores_are_the_models_own_logprobs(vllm_server: lp.Runtime, through: str) -> None:
    backend = (
        lp.VLLM(vllm_server.url)
        if through == "lp.VLLM"
        else lp.OpenAI("tiny", base_url=vllm_server.url + "/v1")
    )

    @lp.function
    def pick(s):
        s += PROMPT + lp.select("op", CHOICES)

    state = pick.run(backend=backend)
    assert state.error() is None, state.error()
    meta = state.get_meta_info("op")
    expected = [reference_logprobs(tiny_model_dir(), PROMPT, c) for c in CHOICES]
    scored = meta["input_token_logprobs"]
    for choice, got, (ids, want) in zip(CHOICES, scored, expected, strict=True):
        assert len(got) == len(ids), (choice, meta["choice_tokens"])
        assert got == pytest.approx(want, abs=0.05), choice
    means = [sum(want) / len(want) for _, want in expected]
    assert state["op"] == CHOICES[means.index(max(means))]
