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
from lmprog.backends.local.groups import GROUPS_FILE
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


@pytest.mark.gemma
def test_stored_weights_are_the_dequantized_ones_in_float16(gemma_files: ModelFiles) -> None:
    """Quantized tensors are stored as float16 (within 2**-11 of the exact dequantized value;
    half the disk of float32), float32 ones as they are; the config loads them as float32."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    reader = GGUFReader(gemma3_270m_gguf())
    gguf = {t.name: t for t in reader.tensors}
    pairs = {
        "token_embd.weight": "model.embed_tokens.weight",  # Q8_0, the largest
        "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
        "blk.0.attn_norm.weight": "model.layers.0.input_layernorm.weight",  # F32
    }
    with safe_open(str(gemma_files.path / "model.safetensors"), "np") as stored:
        for gguf_name, name in pairs.items():
            tensor = gguf[gguf_name]
            exact = dequantize(tensor.data, tensor.tensor_type)
            value = stored.get_tensor(name)
            if tensor.tensor_type.name == "F32":
                assert value.dtype == np.float32
                np.testing.assert_array_equal(value, exact - 1)  # Gemma's norms: stored w - 1
            else:
                assert value.dtype == np.float16
                error = np.abs(value.astype(np.float32) - exact)
                assert np.all(error <= np.abs(exact) * 2.0**-11 + 2.0**-25), name
    config = json.loads((gemma_files.path / "config.json").read_text())
    assert config["dtype"] == "float32"
    size = (gemma_files.path / "model.safetensors").stat().st_size
    assert size < 600_000_000  # float32 was 1.07 GB


@pytest.mark.gemma
def test_conversion_is_fast_and_replaces_older_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gemma_files: ModelFiles
) -> None:
    """A fresh conversion (no GGUFReader, no float32 model built in memory) gives the same
    folder, and removes what an older conversion made of the same file."""
    gguf = gemma3_270m_gguf()
    monkeypatch.setenv("LMPROG_CACHE_DIR", str(tmp_path))
    older = tmp_path / "local" / f"{gguf.stem}-0123456789ab"
    older.mkdir(parents=True)
    (older / "lmprog.json").write_text('{"name": "old", "chat_template": "gemma3"}')
    unrelated = tmp_path / "local" / "other-model-0123456789ab"
    unrelated.mkdir()
    start = time.perf_counter()
    files = resolve_model(gguf)
    took = time.perf_counter() - start
    assert files.path.parent == tmp_path / "local"
    assert not older.exists() and unrelated.exists()
    for name in ("config.json", "generation_config.json", "tokenizer.json", "lmprog.json"):
        assert (files.path / name).read_bytes() == (gemma_files.path / name).read_bytes(), name
    from safetensors import safe_open

    assert took < 120  # ~20 s on 2 quiet cores; the GGUFReader-based conversion took ~40-100 s
    with safe_open(str(files.path / GROUPS_FILE), "pt") as groups:
        grouped = {key.rsplit(".", 1)[0] for key in groups.keys()}  # noqa: SIM118
    assert len(grouped) == 7 * 18  # every Linear of the 18 layers: the packed form's weights
