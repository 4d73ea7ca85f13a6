"""SGLang's hosted-API backends, `sgl.Anthropic`, `sgl.VertexAI` and `sgl.LiteLLM`, as
`lp.OpenAI` on each provider's OpenAI-compatible endpoint.

SGLang calls these providers through their own SDKs (anthropic, vertexai, litellm). lmprog
talks to all three through the OpenAI chat API they also serve, so the same program runs with
the same import change, and everything `lp.OpenAI` does (chat templates, streaming, errors
that say what to do, refusing what the endpoint cannot enforce) applies. Each returns an
`lp.OpenAI` (a chat model).

- `lp.Anthropic(model)`: https://api.anthropic.com/v1/ with `$ANTHROPIC_API_KEY`. The endpoint
  ignores `response_format`, so a constrained gen is refused (UnsupportedFeatureError) unless
  it asks for `fallback="validate"`.
- `lp.VertexAI(model)`: Vertex AI's OpenAI-compatible endpoint in `$GCP_PROJECT_ID` /
  `$GCP_LOCATION` (SGLang's variables; location defaults to us-central1), with an access token
  (`access_token=`, `$VERTEXAI_ACCESS_TOKEN`, or `gcloud auth print-access-token`'s, read
  through google-auth when it is installed). A model name without a publisher gets "google/".
- `lp.LiteLLM(model, base_url=...)`: a LiteLLM proxy (`litellm --model ...`, port 4000 by
  default), at `base_url=` or `$LITELLM_PROXY_API_BASE`. lmprog does not import the litellm
  library; the proxy reaches every provider LiteLLM knows.
"""

from __future__ import annotations

import os
from typing import Any

from lmprog.backends.dialect import Dialect
from lmprog.backends.openai import OpenAI
from lmprog.errors import LmprogError

ANTHROPIC_URL = "https://api.anthropic.com/v1/"

ANTHROPIC_API = Dialect(
    kind="anthropic",
    label="Anthropic's OpenAI-compatible API",
    chat_constraints=frozenset(),  # it ignores response_format: nothing can be enforced
    max_tokens_key="max_tokens",
)
VERTEX_API = Dialect(
    kind="vertexai",
    label="Vertex AI's OpenAI-compatible API",
    chat_constraints=frozenset({"json_schema", "choices"}),  # response_format json_schema
    max_tokens_key="max_tokens",
)


def Anthropic(  # SGLang's name: a constructor
    model_name: str, *, api_key: str | None = None, base_url: str = ANTHROPIC_URL, **kwargs: Any
) -> OpenAI:
    """Claude through Anthropic's OpenAI-compatible endpoint (SGLang's `sgl.Anthropic`).
    `api_key` defaults to `$ANTHROPIC_API_KEY`; other keywords go to `lp.OpenAI`."""
    key = api_key or os.environ.get("ANTHROPIC_API_KEY")
    if not key:
        raise LmprogError(
            "lp.Anthropic needs an API key: set $ANTHROPIC_API_KEY or pass api_key=..."
        )
    return OpenAI(
        model_name,
        base_url=base_url,
        api_key=key,
        is_chat_model=True,
        server=ANTHROPIC_API,
        **kwargs,
    )


def VertexAI(  # SGLang's name: a constructor
    model_name: str,
    safety_settings: Any = None,
    *,
    project: str | None = None,
    location: str | None = None,
    access_token: str | None = None,
    **kwargs: Any,
) -> OpenAI:
    """Gemini (or another Model Garden model) through Vertex AI's OpenAI-compatible endpoint
    (SGLang's `sgl.VertexAI`); see the module for where project, location and token come
    from. `safety_settings` (a vertexai SDK object) has no OpenAI-API equivalent: set safety
    settings on the model in Vertex AI instead."""
    if safety_settings is not None:
        raise TypeError(
            "lp.VertexAI talks to Vertex AI's OpenAI-compatible endpoint, which takes no "
            "safety_settings; configure them in Vertex AI, or leave the argument out"
        )
    project = project or os.environ.get("GCP_PROJECT_ID")
    location = location or os.environ.get("GCP_LOCATION") or "us-central1"
    if not project:
        raise LmprogError("lp.VertexAI needs a project: set $GCP_PROJECT_ID or pass project=...")
    token = access_token or os.environ.get("VERTEXAI_ACCESS_TOKEN") or _google_token()
    base_url = (
        f"https://{location}-aiplatform.googleapis.com/v1/projects/{project}"
        f"/locations/{location}/endpoints/openapi"
    )
    model = model_name if "/" in model_name else f"google/{model_name}"
    return OpenAI(
        model,
        base_url=base_url,
        api_key=token,
        is_chat_model=True,
        server=VERTEX_API,
        **kwargs,
    )


def _google_token() -> str:
    try:
        import google.auth  # type: ignore[import-not-found, unused-ignore]
        import google.auth.transport.requests  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise LmprogError(
            "lp.VertexAI needs an access token: pass access_token=..., set "
            "$VERTEXAI_ACCESS_TOKEN (e.g. to `gcloud auth print-access-token`), or install "
            "google-auth to use your application-default credentials"
        ) from None
    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    credentials.refresh(google.auth.transport.requests.Request())
    return str(credentials.token)


def LiteLLM(  # SGLang's name: a constructor
    model_name: str,
    chat_template: Any = None,
    api_key: str | None = None,
    organization: str | None = None,
    base_url: str | None = None,
    **kwargs: Any,
) -> OpenAI:
    """A model behind a LiteLLM proxy (SGLang's `sgl.LiteLLM`, which calls the litellm
    library in-process instead): `base_url` or `$LITELLM_PROXY_API_BASE`, key `api_key` or
    `$LITELLM_PROXY_API_KEY`."""
    url = base_url or os.environ.get("LITELLM_PROXY_API_BASE")
    if not url:
        raise LmprogError(
            "lp.LiteLLM talks to a LiteLLM proxy: start one (`litellm --model "
            f"{model_name}`, it listens on port 4000) and pass base_url='http://127.0.0.1:4000'"
            " or set $LITELLM_PROXY_API_BASE; or use lp.OpenAI on the provider's own "
            "OpenAI-compatible endpoint"
        )
    if organization is not None:
        kwargs["organization"] = organization
    return OpenAI(
        model_name,
        base_url=url,
        api_key=api_key or os.environ.get("LITELLM_PROXY_API_KEY"),
        is_chat_model=True,
        chat_template=chat_template,
        **kwargs,
    )
