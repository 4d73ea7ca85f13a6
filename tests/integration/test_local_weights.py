"""lmprog.backends.local.weights: what lp.Local loads, checked against llama-server (same GGUF).

The Gemma GGUF is converted once into lmprog's cache (about a minute, the first time); its
rebuilt tokenizer must give llama-server's token ids, and the dequantized weights its greedy
tokens.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from support.models import TINY_CHAT_TEMPLATE, tiny_model_dir, tiny_model_gguf

import lmprog as lp
from lmprog.backends.local.weights import ModelFiles, resolve_model
from lmprog.errors import LmprogError
from lmprog.models import gemma3_270m_gguf

FEW_SHOT = "Q: What is the capital of Germany?\nA: Berlin\nQ: What is the capital of France?\nA:"

TEXTS = [
    "The quick brown fox jumps over the lazy dog. What is the capital of France?",
    "def add(a, b):\n    return a + b\n\n\nclass Foo:\n    pass\n",
    "\tindented\twith\ttabs\t\t\tend",
    "Numbers: 1234567890, 3.14159, -42, 1e10, 2026-11-22",
    "Punctuation!? (brackets) [x] {y} <z> \"quotes\" 'single' — dash… ellipsis",
    "Emojis 😀🎉👍🏽 and CJK 你好世界 日本語のテキスト 한국어",
    "Accents: café naïve résumé Ærøskøbing Straße ñandú",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "  leading and trailing spaces  ",
    "double  spaces   triple    quad",
    " ",
    "",
    "a\n\n\n\nb",
    FEW_SHOT,
    "<table><tr><td>x</td></tr></table> <b>bold</b> </s> <s>",
    "<0x41> literal byte text <unused5> <bos>",
    "---------- ========== .......... ********** __init__ ____",
    "mixed\r\nline\rendings\x00nul\x7f",
    "Ελληνικά русский العربية עברית हिन्दी ไทย",
    '{"json": [1, 2, {"k": null}], "b": true}',
    " " * 40 + "x" + "\t" * 35 + "y" + "\n" * 40,
]


@pytest.fixture(scope="module")
def gemma_files() -> ModelFiles:
    return resolve_model(None)


def server_tokens(server: lp.Runtime, text: str) -> list[int]:
    body = {"content": text, "add_special": True}
    reply = httpx.post(f"{server.url}/tokenize", json=body, timeout=60)
    return list(reply.json()["tokens"])


@pytest.mark.gemma
@pytest.mark.engine
def test_gemma_tokenizer_matches_llama_server(
    gemma_files: ModelFiles, gemma_server: lp.Runtime
) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(gemma_files.path / "tokenizer.json"))
    for text in TEXTS:
        ids = tokenizer.encode(text).ids
        assert ids == server_tokens(gemma_server, text), text
        assert tokenizer.decode(ids[1:], skip_special_tokens=False) == text


@pytest.mark.gemma
def test_gemma_folder_describes_the_model(gemma_files: ModelFiles) -> None:
    assert gemma_files.chat_template == "gemma3"
    assert gemma_files.bos_token_id == 2
    assert gemma_files.eos_token_ids == (1, 106)  # <eos>, <end_of_turn>
    assert gemma_files.licence == gemma_files.path / "GEMMA_TERMS.html"
    assert gemma_files.licence.is_file()
    assert "Q4_K_M" in gemma_files.name
    config = json.loads((gemma_files.path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32"


@pytest.mark.gemma
def test_second_resolve_only_checks_the_cache(gemma_files: ModelFiles) -> None:
    start = time.perf_counter()
    again = resolve_model("gemma3-270m")
    assert time.perf_counter() - start < 0.1
    assert again == gemma_files
    assert resolve_model(gemma3_270m_gguf()) == gemma_files


@pytest.mark.gemma
@pytest.mark.engine
def test_dequantized_weights_greedy_tokens_match_llama_server(
    gemma_files: ModelFiles, gemma_server: lp.Runtime
) -> None:
    """All 16 greedy tokens matched when measured; the smallest top-2 logit margin among the
    first 8 was ~3 (later ones dip to ~0.3), so the first 8 are asserted."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    tokenizer = Tokenizer.from_file(str(gemma_files.path / "tokenizer.json"))
    prompt = tokenizer.encode(FEW_SHOT).ids
    model = AutoModelForCausalLM.from_pretrained(gemma_files.path, local_files_only=True).eval()
    with torch.no_grad():
        output = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
    ours = output[0, len(prompt) :].tolist()

    body = {"prompt": prompt, "n_predict": 8, "temperature": 0, "return_tokens": True}
    reply = httpx.post(f"{gemma_server.url}/completion", json=body, timeout=120).json()
    assert ours == reply["tokens"]
    assert tokenizer.decode(ours).startswith(" Paris\n")


def test_model_folder_resolves_to_itself() -> None:
    folder = tiny_model_dir()
    files = resolve_model(folder)
    assert files.path == folder
    assert files.name == folder.name
    assert files.chat_template == TINY_CHAT_TEMPLATE
    assert (files.bos_token_id, files.eos_token_ids) == (0, (1,))
    assert resolve_model(str(folder)) == files


def test_unusable_model_raises_naming_it(tmp_path: Path) -> None:
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("hello")
    for bad in (tmp_path / "missing", tmp_path / "missing.gguf", tmp_path, not_a_model):
        with pytest.raises(LmprogError, match=re.escape(str(bad))):
            resolve_model(bad)


def test_gguf_with_a_bpe_tokenizer_is_refused() -> None:
    """Only SentencePiece vocabularies are rebuilt; the tiny model's GGUF has a GPT-2 BPE one."""
    with pytest.raises(LmprogError, match="SentencePiece"):
        resolve_model(tiny_model_gguf())
