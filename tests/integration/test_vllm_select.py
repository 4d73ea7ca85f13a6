"""select on vLLM scores each choice with the model's own teacher-forced logprobs: checked
against transformers on the same weights, through lp.VLLM and lp.OpenAI's completions, and
against the server's own prompt logprobs (the reading lmprog used before, and still uses on a
vLLM without `logprob_token_ids`)."""

from __future__ import annotations

import builtins
import functools
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.models import tiny_model_dir

import lmprog as lp
from lmprog.backends import vllm
from lmprog.choices import ChoicesMethod

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


# ----- against the server's own prompt logprobs, read here by plain HTTP --------------------


@functools.cache
def _tokenize(url: str, text: str) -> list[int]:
    reply = httpx.post(f"{url}/tokenize", json={"model": "tiny", "prompt": text}, timeout=60)
    reply.raise_for_status()
    return [int(t) for t in reply.json()["tokens"]]


def _prompt_logprobs(url: str, ids: list[int]) -> list[float]:
    """Each token's logprob given the ones before it (from the second token on), as vLLM
    reads a prompt back (`prompt_logprobs`, computed outside its prefix cache)."""
    body = {"model": "tiny", "prompt": ids, "max_tokens": 1, "prompt_logprobs": 0}
    reply = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    reply.raise_for_status()
    entries = reply.json()["choices"][0]["prompt_logprobs"][1:]
    return [float(next(iter(entry.values()))["logprob"]) for entry in entries]


def server_scores(url: str, prompt: str, choice: str) -> tuple[list[float], list[float]]:
    """The choice's own tokens' logprobs after the prompt, and after the BOS alone, from the
    server's prompt logprobs."""
    prompt_ids, full = _tokenize(url, prompt), _tokenize(url, prompt + choice)
    shared = max(1, _shared(prompt_ids, full))
    bos = _tokenize(url, "")[:1]
    conditional = _prompt_logprobs(url, full)[shared - 1 :]
    alone = _prompt_logprobs(url, bos + full[shared:])[len(bos) - 1 :]
    return conditional, alone


def _shared(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


MANY = sorted({f" {name}" for name in dir(builtins) if name.isidentifier()})[:160]


@pytest.mark.parametrize("choices", [CHOICES, MANY], ids=["4 choices", "160 choices"])
@pytest.mark.parametrize("read", ["token logprobs", "prompt logprobs"])
def test_select_scores_equal_the_servers_prompt_logprobs(
    vllm_server: lp.Runtime, choices: list[str], read: str
) -> None:
    """To 1e-3, for both methods that score: the logprobs given the prompt, and (for
    unconditional_likelihood_normalized) given the BOS alone. 160 choices need more distinct
    tokens than one request may ask for (128). Every expected logprob is well below 0, so a
    reading taken after a constraint masked the other tokens (0.0) cannot pass."""
    backend = lp.VLLM(vllm_server.url)
    if read == "prompt logprobs":  # as on a vLLM whose completions lack logprob_token_ids
        vllm._WITHOUT_TOKEN_LOGPROBS.add(backend)

    def scores(method: ChoicesMethod) -> dict[str, Any]:
        @lp.function
        def pick(s):
            s += PROMPT + lp.select("op", choices, choices_method=method)

        state = pick.run(backend=backend)
        assert state.error() is None, state.error()
        return state.get_meta_info("op")

    by_length = scores(lp.token_length_normalized)
    by_surprise = scores(lp.unconditional_likelihood_normalized)
    # on vLLM 0.32 the token logprobs were answered (no fallback to prompt logprobs)
    assert (backend in vllm._WITHOUT_TOKEN_LOGPROBS) == (read == "prompt logprobs")
    distinct = {token for tokens in by_length["choice_tokens"] for token in tokens}
    assert len(distinct) > vllm.MAX_LOGPROB_TOKEN_IDS or choices == CHOICES
    for i, choice in enumerate(choices):
        conditional, alone = server_scores(vllm_server.url, PROMPT, choice)
        assert all(value < -1e-2 for value in conditional + alone), choice
        got = by_length["input_token_logprobs"][i]
        assert got == pytest.approx(conditional, abs=1e-3), (choice, by_length["choice_tokens"][i])
        surprise = sum(c - a for c, a in zip(conditional, alone, strict=True)) / len(conditional)
        assert by_surprise["scores"][i] == pytest.approx(surprise, abs=1e-3), choice
