"""`transformers serve`: transformers' own OpenAI-compatible server, as lp.OpenAI's dialect.

Measured in backends/transformers/NOTES.md: it serves completions and chat with the model
folder's chat template, honours max_tokens, stop, temperature 0 and streaming with usage, and
nothing else a program needs: no constraint of any kind (chat `response_format` is silently
ignored), no logprobs (ignored), no assistant prefill, no prefix cache, and a 422 for any field
it does not know (top_k, min_p, ...). It stays greedy at temperature > 0 unless asked to sample
through its `generation_config` field, and leaves the stop string in the text. The model id is
the folder path the server was started with, so the chat template is read from there.
"""

from __future__ import annotations

import json
from typing import Any

from lmprog.backends.dialect import Dialect, Probe, Server
from lmprog.ir import SamplingParams
from lmprog.templates import ChatTemplate


class _TransformersServeDialect(Dialect):
    def sampling_fields(self, sampling: SamplingParams) -> dict[str, Any]:
        if sampling.temperature:  # it samples only when told to
            return {"generation_config": json.dumps({"do_sample": True})}
        return {}

    async def chat_template(self, server: Server) -> ChatTemplate | None:
        return ChatTemplate.from_model_dir(server.model)


def _is_transformers_serve(openapi: Any) -> bool:
    """Its OpenAPI document lists endpoints no other engine has (probing them would change the
    server's state: `/load_model`, `/reset`; reading the document does not)."""
    paths = openapi.get("paths") if isinstance(openapi, dict) else None
    return isinstance(paths, dict) and ("/v1/systemone" in paths or "/load_model" in paths)


DIALECT = _TransformersServeDialect(
    kind="transformers",
    label="transformers serve",
    logprobs=False,
    trims_stop=False,
    probe=Probe("/openapi.json", _is_transformers_serve),
    env_var="LMPROG_TRANSFORMERS_URL",
)
