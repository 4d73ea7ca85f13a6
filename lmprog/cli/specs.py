"""Backend spec strings (`--backend`), and a check that the backend answers before a run.

A run against a dead server would otherwise turn every input into a failed result; checking
first makes it one clear error, before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from lmprog.backends.base import Backend
from lmprog.backends.detect import SERVERS
from lmprog.backends.openai import OpenAI
from lmprog.errors import CliError, LmprogError

SPEC_HELP = """\
backend specs (--backend):
  local                    lp.Local(): Gemma 3 270M in this process (the default)
  local:PATH               lp.Local(PATH): a transformers model folder or a .gguf file
  llamacpp:URL             lp.LlamaCpp(URL): a llama.cpp llama-server
  vllm:URL                 lp.VLLM(URL): a vLLM server (the one model it serves)
  sglang:URL               lp.SGLang(URL): an SGLang server's native API
  openai:MODEL             lp.OpenAI(MODEL): the OpenAI API (key from OPENAI_API_KEY)
  openai:MODEL@BASE_URL    lp.OpenAI(MODEL, base_url=BASE_URL): any OpenAI-compatible server
  URL                      probe URL (as `lmprog serve-info URL`) and use what it is
The API key comes from OPENAI_API_KEY and is never printed.
"""

_URL_KINDS: dict[str, Callable[[str], Backend]] = {
    server.kind: server.native for server in SERVERS if server.native is not None
}


def make_backend(spec: str) -> Backend:
    """The backend a spec string names (see SPEC_HELP)."""
    kind, _, rest = spec.partition(":")
    if _is_url(spec):
        from lmprog.cli.probe import probe

        return make_backend(probe(spec).spec)
    if kind == "local":
        from lmprog.backends.local import Local

        if not rest:
            return Local()
        if not Path(rest).exists():
            raise CliError(
                f"--backend {spec}: no model at {rest}; give a transformers model folder or a "
                ".gguf file, or plain `local` for the default model"
            )
        return Local(rest)
    if kind in _URL_KINDS:
        if not _is_url(rest):
            raise CliError(
                f"--backend {spec}: give the server's URL, e.g. {kind}:http://127.0.0.1:8080"
            )
        return _URL_KINDS[kind](rest)
    if kind == "openai":
        return _openai(spec, rest)
    raise CliError(f"--backend {spec!r} is not a backend spec.\n{SPEC_HELP}")


def _openai(spec: str, rest: str) -> OpenAI:
    model, at, base_url = rest.rpartition("@") if "@http" in rest else (rest, "", "")
    key = os.environ.get("OPENAI_API_KEY") or None
    if not model:
        raise CliError(f"--backend {spec}: name the model, e.g. openai:gpt-4o-mini")
    if not at and key is None:
        raise CliError(
            f"--backend {spec}: the OpenAI API needs a key; set OPENAI_API_KEY (or give an "
            "OpenAI-compatible server as openai:MODEL@BASE_URL)"
        )
    return OpenAI(model, base_url=base_url or None, api_key=key)


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


async def check_reachable(backend: Backend) -> None:
    """Ask the backend something cheap (lp.Local: load the model); a CliError if it fails."""
    try:
        await backend.ping()
    except LmprogError as exc:
        raise CliError(
            f"{backend.name} cannot be used: {exc}\nStart the server or fix the URL "
            "(`lmprog serve-info URL` says what answers there), or pick another --backend."
        ) from exc
