"""infinity (`infinity-emb`): an embeddings server, as lp.OpenAI's dialect.

Measured in backends/infinity/NOTES.md: `/embeddings` and `/models` (under `/v1` when started
with `--url-prefix /v1`, as lmprog's recipes do), vectors L2-normalised in input order, equal
to sentence-transformers'. It generates nothing, so lp.OpenAI refuses a gen or select on it
before any request, and `lp.embed(texts, backend=lp.OpenAI(model, base_url=...))` is its use.
"""

from __future__ import annotations

from typing import Any

from lmprog.backends.dialect import Dialect, Probe


def _is_infinity(models: Any) -> bool:
    data = models.get("data") if isinstance(models, dict) else None
    return isinstance(data, list) and any(
        isinstance(m, dict) and m.get("owned_by") == "infinity" for m in data
    )


DIALECT = Dialect(
    kind="infinity",
    label="infinity",
    generates=False,
    probe=Probe("/v1/models", _is_infinity),
    env_var="LMPROG_INFINITY_URL",
)
