"""`lmprog serve-info URL`: what server answers at a URL, its model, and the backend to use.

Which engine it is comes from lmprog.backends.detect (the same detection lp.OpenAI uses); this
module only describes what the engine reports about itself. Anything no probe recognises that
lists `/v1/models` is a generic OpenAI-compatible server. The OpenAI API key is sent only to
api.openai.com or OPENAI_BASE_URL.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from lmprog import loop
from lmprog.backends.detect import identify
from lmprog.backends.dialect import Dialect
from lmprog.errors import CliError, LmprogError
from lmprog.templates import ChatTemplate

TIMEOUT_S = 5.0


class Unreachable(CliError):
    """Nothing answers at the URL; `reason` says why in a few words."""

    def __init__(self, url: str, exc: httpx.HTTPError) -> None:
        if isinstance(exc, httpx.TimeoutException):
            self.reason = f"no answer within {TIMEOUT_S:.0f} s"
        else:
            self.reason = re.sub(r"^\[Errno -?\d+\] ", "", str(exc)) or type(exc).__name__
        super().__init__(
            f"cannot reach {url}: {self.reason}. Is the server running, and is this its "
            "address and port?"
        )


@dataclass
class ServerInfo:
    """What one probe found; None where the server does not say."""

    url: str
    kind: str  # "llama.cpp", "vLLM", "SGLang", "OpenAI API", "OpenAI-compatible"
    spec: str  # the --backend spec for it
    python: str  # the same as Python
    version: str | None = None
    models: list[str] = field(default_factory=list)
    context_length: int | None = None
    slots: int | None = None
    chat_template: bool | None = None
    vision: bool | None = None
    notes: list[str] = field(default_factory=list)


def serve_info_command(url: str) -> int:
    info = probe(url)
    lines = [
        ("server", info.kind + (f" {info.version}" if info.version else "")),
        ("url", info.url),
        ("model", ", ".join(info.models) or "unknown"),
        ("context length", _known(info.context_length, "tokens")),
        ("parallel slots", _known(info.slots)),
        ("chat template", _yes_no(info.chat_template)),
        ("images", _yes_no(info.vision)),
        ("use", f"--backend {info.spec}"),
        ("python", info.python),
    ]
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"{name + ':':<{width + 1}} {value}")
    for note in info.notes:
        print(f"note: {note}")
    return 0


def probe(url: str) -> ServerInfo:
    """Identify the server at `url`; a CliError naming the cause if nothing usable answers."""
    url = url.rstrip("/")
    root = url.removesuffix("/v1")
    headers = _auth(url)
    with httpx.Client(timeout=TIMEOUT_S, headers=headers) as http:
        try:
            http.get(root + "/health")
        except httpx.HTTPError as exc:
            raise Unreachable(url, exc) from exc
        key = headers.get("Authorization", "").removeprefix("Bearer ") or None
        try:
            detected = loop.wait(identify(root, url, key))
        except LmprogError as exc:
            raise CliError(f"{url} answered the health check, then failed: {exc}") from exc
        describe = _DESCRIBE.get(detected.dialect.kind)
        answer = next(iter(detected.answers.values()), None) if describe else None
        info = describe(http, root, answer, detected.dialect) if describe else None
        info = info or _openai_compatible(http, root)
        if info is not None:
            return info
    raise CliError(
        f"{url} answers HTTP, but not as llama-server, vLLM, SGLang or an OpenAI-compatible "
        "server (no /props, /version, /get_model_info or /v1/models); check the URL"
    )


def _names(dialect: Dialect, root: str) -> tuple[str, str]:
    """The --backend spec and the Python constructor of a server's own backend."""
    assert dialect.native is not None
    return f"{dialect.kind}:{root}", f"lp.{getattr(dialect.native, '__name__', '?')}({root!r})"


def _get(http: httpx.Client, url: str) -> Any:
    """The JSON body of a 200 answer, else None."""
    try:
        response = http.get(url)
        return response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def _llamacpp(http: httpx.Client, root: str, props: Any, dialect: Dialect) -> ServerInfo:
    settings = props.get("default_generation_settings") or {}
    info = ServerInfo(
        root,
        "llama.cpp llama-server",
        *_names(dialect, root),
        version=props.get("build_info"),
        models=[str(props.get("model_alias") or props.get("model_path") or "")],
        context_length=settings.get("n_ctx"),
        slots=props.get("total_slots"),
        chat_template=bool(props.get("chat_template")),
        vision=bool((props.get("modalities") or {}).get("vision")),
    )
    if info.context_length is not None:
        info.notes.append("the context length is per slot (--ctx-size / --parallel)")
    if not info.chat_template:
        info.notes.append("no chat template: roles need chat_template= or --chat-template-file")
    return info


def _vllm(http: httpx.Client, root: str, version: Any, dialect: Dialect) -> ServerInfo:
    models = _models(http, root)
    info = ServerInfo(
        root,
        "vLLM",
        *_names(dialect, root),
        version=str(version["version"]),
        models=[str(m.get("id")) for m in models],
        context_length=models[0].get("max_model_len") if models else None,
    )
    folder = str(models[0].get("root") or "") if models else ""
    info.chat_template = _template_in(folder, info)
    return info


def _sglang(http: httpx.Client, root: str, model: Any, dialect: Dialect) -> ServerInfo:
    server = _get(http, root + "/get_server_info") or {}
    listed = _models(http, root)
    context = server.get("context_length") if isinstance(server, dict) else None
    if context is None and listed:
        context = listed[0].get("max_model_len")
    info = ServerInfo(
        root,
        "SGLang",
        *_names(dialect, root),
        version=server.get("version") if isinstance(server, dict) else None,
        models=[str(model["model_path"])],
        context_length=context,
        vision=model.get("has_image_understanding"),
    )
    given = server.get("chat_template") if isinstance(server, dict) else None
    info.chat_template = True if given else _template_in(str(model["model_path"]), info)
    return info


_DESCRIBE = {"llamacpp": _llamacpp, "vllm": _vllm, "sglang": _sglang}


def _openai_compatible(http: httpx.Client, root: str) -> ServerInfo | None:
    models = _models(http, root)
    if not models:
        return None
    ids = [str(m.get("id")) for m in models]
    official = urlsplit(root).hostname == "api.openai.com"
    base = root + "/v1"
    first = ids[0]
    info = ServerInfo(
        base,
        "OpenAI API" if official else "OpenAI-compatible",
        f"openai:{first}" if official else f"openai:{first}@{base}",
        f"lp.OpenAI({first!r})" if official else f"lp.OpenAI({first!r}, base_url={base!r})",
        models=ids if len(ids) <= 10 else [*ids[:10], f"... ({len(ids)} in all)"],
    )
    info.notes.append(
        "what a generic server enforces is unknown: lmprog sends constraints only where the "
        "server type is known (docs/backends.md)"
        if not official
        else "the OpenAI API enforces json_schema and choices in chat models, nothing else"
    )
    return info


def _models(http: httpx.Client, root: str) -> list[dict[str, Any]]:
    body = _get(http, root + "/v1/models")
    data = body.get("data") if isinstance(body, dict) else None
    return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []


def _template_in(folder: str, info: ServerInfo) -> bool | None:
    """Whether the model folder (when readable from here) has a chat template."""
    if folder and ChatTemplate.from_model_dir(folder) is not None:
        return True
    info.notes.append(
        "the chat template is read from the model's folder, which is not readable here: "
        "pass chat_template= for programs with roles"
    )
    return None


def _auth(url: str) -> dict[str, str]:
    """The OpenAI key, only for the OpenAI API itself or the server OPENAI_BASE_URL names."""
    key = os.environ.get("OPENAI_API_KEY")
    base = (os.environ.get("OPENAI_BASE_URL") or "").rstrip("/")
    host = urlsplit(url).hostname
    if key and (host == "api.openai.com" or (base and url.startswith(base.removesuffix("/v1")))):
        return {"Authorization": f"Bearer {key}"}
    return {}


def _known(value: int | None, unit: str = "") -> str:
    return "unknown" if value is None else f"{value:,}" + (f" {unit}" if unit else "")


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")
