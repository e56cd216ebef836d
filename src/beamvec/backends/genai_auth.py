"""Credentials and the google-genai client: an API key (environment, file or
Secret Manager), or Vertex AI's Application Default Credentials. The one place
that builds a ``genai.Client`` (online and Batch API). Every failure is one
SystemicError line that never holds the key."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from beamvec.errors import SystemicError

DEFAULT_LOCATION = "us-central1"


def import_genai(mode: str) -> Any:
    try:
        from google import genai  # an optional extra: imported where it is needed
    except ImportError as exc:
        raise SystemicError(
            f"{mode} backend: google-genai is not installed; install it with `pip install 'beamvec[genai]'`"
        ) from exc
    return genai


def key_hint(api_key_env: Sequence[str]) -> str:
    names = " or ".join(api_key_env) or "an API key variable"
    return f"set {names}, or pass --api-key-file or --api-key-secret"


def read_api_key(mode: str, secret: str | None, path: str | None, env: Sequence[str]) -> str:
    """The key from Secret Manager, a file, or the first set environment variable."""
    if secret:
        return read_secret(secret, mode)
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                key = fh.read().strip()
        except OSError as exc:
            raise SystemicError(f"{mode}: cannot read the API key file {path}: {exc.strerror or exc}") from None
        if not key:
            raise SystemicError(f"{mode}: the API key file {path} is empty")
        return key
    for name in env:
        key = os.environ.get(name, "").strip()
        if key:
            return key
    raise SystemicError(f"{mode}: no API key found; {key_hint(env)}")


def read_secret(name: str, mode: str) -> str:
    """The payload of a Secret Manager secret version, fetched on the worker
    with its own credentials (the Dataflow worker service account)."""
    try:
        from google.cloud import secretmanager  # the dataflow extra only
    except ImportError:
        raise SystemicError(
            f"{mode}: --api-key-secret needs google-cloud-secret-manager on the workers; "
            "install beamvec[dataflow] or add it to the workers' requirements"
        ) from None
    if "/versions/" not in name:
        name = f"{name.rstrip('/')}/versions/latest"
    try:
        response = secretmanager.SecretManagerServiceClient().access_secret_version(name=name)
    except Exception as exc:  # noqa: BLE001 - any failure here is systemic and must be one line
        raise SystemicError(f"{mode}: cannot read the API key secret {name}: {type(exc).__name__}") from None
    key = response.payload.data.decode("utf-8").strip()
    if not key:
        raise SystemicError(f"{mode}: the API key secret {name} is empty")
    return key


def http_options(
    base_url: str | None, api_version: str | None, timeout_s: float,
    on_request: Callable[[Any], None] | None = None,
) -> Any:
    """The SDK's HTTP options; ``on_request`` becomes the httpx client's request
    hook (called in the sending thread just before each request goes out)."""
    from google.genai import types

    hooks = {"event_hooks": {"request": [on_request]}} if on_request is not None else None
    return types.HttpOptions(
        base_url=base_url, api_version=api_version, timeout=max(1, int(timeout_s * 1000)),  # milliseconds
        client_args=hooks,
    )


def _client(
    genai: Any, base_url: str | None, api_version: str | None, timeout_s: float,
    on_request: Callable[[Any], None] | None, **identity: Any,
) -> Any:
    """The one ``genai.Client(...)`` of beamvec: who it is (``identity``) and how it talks."""
    return genai.Client(http_options=http_options(base_url, api_version, timeout_s, on_request), **identity)


def key_client(
    genai: Any, api_key: str, *, vertex: bool, api_version: str | None, base_url: str | None,
    timeout_s: float, on_request: Callable[[Any], None] | None = None,
) -> Any:
    """A client on an API key: the Gemini Developer API, or Vertex AI's express
    mode; for online embedding and the Batch API alike."""
    return _client(genai, base_url, api_version, timeout_s, on_request, vertexai=vertex, api_key=api_key)


def vertex_client(
    genai: Any, project: str | None, location: str | None, auth: str, api_version: str,
    base_url: str | None, timeout_s: float, on_request: Callable[[Any], None] | None = None,
) -> Any:
    """A Vertex AI client on ADC (or anonymous, for emulators)."""
    location = location or os.environ.get("GOOGLE_CLOUD_LOCATION") or DEFAULT_LOCATION
    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")
    credentials = None
    if auth == "anonymous":
        import google.oauth2.credentials  # comes with google-genai

        # A static token that never expires, so the SDK never tries to refresh it.
        credentials = google.oauth2.credentials.Credentials(token="anonymous")
        project = project or "emulator"
    elif project is None:
        project = adc_project()
    return _client(
        genai, base_url, api_version, timeout_s, on_request,
        vertexai=True, project=project, location=location, credentials=credentials,
    )


def adc_project() -> str:
    try:
        import google.auth  # comes with google-genai

        _, project = google.auth.default()
    except Exception as exc:  # noqa: BLE001 - DefaultCredentialsError and friends
        raise SystemicError(
            "vertex: no Application Default Credentials "
            f"({type(exc).__name__}); run `gcloud auth application-default login` "
            "or set GOOGLE_APPLICATION_CREDENTIALS"
        ) from None
    if not project:
        raise SystemicError("vertex: no project; pass --project or set GOOGLE_CLOUD_PROJECT")
    return str(project)
