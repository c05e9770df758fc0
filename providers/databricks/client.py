"""The router's client for Databricks Model Serving endpoints: OpenAI's chat/embeddings wire format over HTTP to
`/serving-endpoints/{name}/invocations`, with the `Authorization` header from databricks-sdk's config chain.

Why HTTP rather than the SDK's `serving_endpoints.query()`:
- `query()` parses the answer as one JSON document, so a streamed (SSE) answer cannot be read through it;
- it rebuilds the body from its typed fields, dropping what it does not know (tools, response_format, top_p, ...);
- its retry loop (`_BaseClient.do` + `retries.retried`) resends the POST after read timeouts and dropped
  connections (`requests.Timeout` / `ConnectionError`), and after 429/503 (sleeping Retry-After), for up to
  `retry_timeout_seconds` (300 s by default): a payload that may have been received would be sent again.
Here each call is sent once and ends in one verdict; the dispatcher alone decides whether another allowed backend
is tried. The SDK is still what finds and refreshes credentials (PAT, profile, OAuth M2M, Azure) and what parses
the control plane's answers (`ServingEndpointDetailed`).
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from sovra.core.backends import Backend
from sovra.providers.clients import HttpClient, refused_503
from sovra.core.api_errors import (
    AttemptFailed,
    BadRequest,
    Failed,
    NotDelivered,
    Refused,
    RequestTooLarge,
    RouterError,
    TimedOut,
)
from sovra.providers.openai_wire import blocking

#: Error answers are small JSON objects; more than this is not read (the verdict needs only the code).
MAX_ERROR_BYTES = 65_536
#: The payload-free control-plane GET (probe, describe) gives up after this.
CONTROL_TIMEOUT_S = 2.0


def verdict(status: int, content: bytes, retry_after: str | None) -> Exception:
    """A Databricks error answer -> the router's verdict: the one place this adapter reads vendor statuses.

    429 REQUEST_LIMIT_EXCEEDED and 503 TEMPORARILY_UNAVAILABLE say the request was not processed (another allowed
    backend may take it); 401/403 are the router's own credentials, 404 RESOURCE_DOES_NOT_EXIST a missing endpoint:
    both mark the backend down. Other 4xx are the request's own fault (never resent); 5xx may follow processing
    (a 504 is a timeout after delivery).
    """
    code, message = _error_of(content)
    what = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    if status == 429:
        return Refused(what, throttled=True, retry_after_s=_seconds(retry_after))
    if status == 503 and (code == "TEMPORARILY_UNAVAILABLE" or refused_503(content, retry_after)):
        # Databricks' REST error codes: 503 TEMPORARILY_UNAVAILABLE, "the service is temporarily unavailable" (the
        # API reference's error-code table): its refusal. A 503 without it, a Retry-After or a body saying so may
        # be a gateway that lost the endpoint mid-request: Failed below, never resent.
        return Refused(what, retry_after_s=_seconds(retry_after))
    if status == 504:  # a gateway gave up waiting: the endpoint may still be processing it
        return TimedOut(what)
    if status in (401, 403):
        return Refused(f"{what} (Databricks refused the router's credentials)", status=401, down=True)
    if status == 404:
        return Refused(f"{what} (no such serving endpoint in this workspace)", status=404, down=True)
    if status == 413:
        return RequestTooLarge(message or what)
    if 400 <= status < 500:  # the request's own fault, said as the endpoint's answer (never the backend failing)
        return BadRequest(f"the Databricks serving endpoint rejected the request ({what})")
    return Failed(what)


def _error_of(content: bytes) -> tuple[str | None, str | None]:
    """`{"error_code", "message"}` (Databricks) or `{"error": {...}}` (OpenAI-style, from external models)."""
    try:
        data = json.loads(content)
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    err = data.get("error")
    if isinstance(err, dict):
        data = err
    code = data.get("error_code") or data.get("code")
    message = data.get("message") or (err if isinstance(err, str) else None)
    return (str(code)[:100] if code else None), (str(message)[:500] if message else None)


def _seconds(value: str | None) -> int | None:
    """Retry-After in whole seconds (Databricks sends seconds; an HTTP date or junk gives no hint)."""
    try:
        return max(1, int(float(value))) if value else None
    except ValueError:
        return None


class SdkCredentials:
    """Authorization headers from databricks-sdk's config chain, one `Config` per (host, profile), made on first
    use. `authenticate()` refreshes OAuth tokens itself, so it is asked on every call (in the SDK thread pool)."""

    def __init__(self, make_config: Callable[..., Any] | None = None):
        self._make = make_config
        self._configs: dict[tuple[str, str | None], Any] = {}
        self._lock = threading.Lock()

    def headers(self, host: str, profile: str | None) -> dict[str, str]:
        return dict(self._config(host, profile).authenticate())

    def _config(self, host: str, profile: str | None) -> Any:
        key = (host, profile)
        with self._lock:
            cfg = self._configs.get(key)
            if cfg is None:
                make = self._make or _sdk_config
                cfg = self._configs[key] = make(host=host, profile=profile)
            return cfg


def _sdk_config(host: str, profile: str | None) -> Any:
    from databricks.sdk.core import Config

    # Only credential traffic goes through the SDK's own client here (the host-metadata GET made once per Config,
    # OAuth token fetches): no payload, so its retries are harmless; they are cut to one try plus one pause, so a
    # request to an unreachable workspace fails in about a second instead of waiting out the SDK's 300 s.
    return Config(host=host, profile=profile, http_timeout_seconds=5, retry_timeout_seconds=1)


class DatabricksClient(HttpClient):
    """Chat (JSON and SSE), embeddings, probe and describe for Databricks serving endpoints.

    Every HTTP answer of 400 or more is turned into its verdict by an httpx response hook (`verdict`), before
    `HttpClient` sees it: the shared client keeps the sending, the SSE parsing and the 2xx handling, and this
    adapter owns only what Databricks' statuses mean (Retry-After included, which `HttpClient` cannot see)."""

    gen_ai_system = "databricks"

    def __init__(self, *, credentials: SdkCredentials | None = None, read_timeout_s: float | None = None,
                 connect_timeout_s: float = 2.0):
        # No read timeout by default: the dispatcher bounds answers and chunks, as for every backend.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s, pool=connect_timeout_s),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=4.0),
            event_hooks={"response": [self._raise_verdict]})
        super().__init__(client=self._http)
        self._credentials = credentials or SdkCredentials()

    @staticmethod
    async def _raise_verdict(response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        content, size = bytearray(), 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            content += chunk
            if size >= MAX_ERROR_BYTES:
                break
        raise verdict(response.status_code, bytes(content[:MAX_ERROR_BYTES]), response.headers.get("retry-after"))

    def url(self, backend: Backend, op: str) -> str:
        host = backend.params.get("host")
        if not host:
            raise NotDelivered(f"{backend.target}: the backend record has no Databricks host; run `sovra up` again",
                               down=True)
        name = urllib.parse.quote(backend.address, safe="")
        if op == "health":
            return f"{host.rstrip('/')}/api/2.0/serving-endpoints/{name}"
        return f"{host.rstrip('/')}/serving-endpoints/{name}/invocations"

    async def headers(self, backend: Backend) -> dict[str, str]:
        """The SDK's `Authorization` header for the backend's workspace; none found means nothing can be sent."""
        try:
            return await blocking(self._credentials.headers, backend.params.get("host", ""),
                                  backend.params.get("profile"))
        except Exception as exc:  # noqa: BLE001  (any credential failure happens before the payload leaves)
            raise NotDelivered(
                f"{backend.target}: no usable Databricks credentials where the router runs "
                f"({type(exc).__name__}: {str(exc)[:300]}); set DATABRICKS_TOKEN, a ~/.databrickscfg profile named "
                "in org.yaml, or OAuth M2M (DATABRICKS_CLIENT_ID / DATABRICKS_CLIENT_SECRET)", down=True) from None

    def body(self, backend: Backend, body: dict[str, Any], *, stream: bool | None) -> dict[str, Any]:
        """The OpenAI request without `model`: the endpoint named in the URL is the model."""
        out = {k: v for k, v in body.items() if k != "model"}
        if stream is not None:
            out["stream"] = stream
        return out

    async def _endpoint(self, backend: Backend) -> Any:
        """`GET /api/2.0/serving-endpoints/{name}` (what `serving_endpoints.get` sends), parsed by the SDK's model;
        sent once, without the SDK's retry loop, which sleeps a whole Retry-After even past its deadline."""
        from databricks.sdk.service.serving import ServingEndpointDetailed

        try:
            resp = await self._http.get(self.url(backend, "health"), headers=await self.headers(backend),
                                        timeout=CONTROL_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise NotDelivered(f"{type(exc).__name__} reading the endpoint's state") from exc
        try:
            data = resp.json()
        except ValueError:
            raise Failed(f"HTTP {resp.status_code} with a body that is not JSON") from None
        if not isinstance(data, Mapping):
            raise Failed("the endpoint's state is not a JSON object")
        return ServingEndpointDetailed.from_dict(dict(data))

    async def health(self, backend: Backend) -> bool:
        """Ready, as Databricks reports it (`state.ready == READY`); no payload is sent."""
        try:
            endpoint = await self._endpoint(backend)
        except (AttemptFailed, RouterError):
            return False
        return endpoint.state is not None and _name(endpoint.state.ready) == "READY"

    async def describe(self, backend: Backend) -> dict[str, Any]:
        """{"status": READY | NOT_READY, "config_update": ..., "task": ..., "served": [...]} for `sovra status`;
        when it cannot be read, {"status": "UNKNOWN", "error": why}."""
        try:
            endpoint = await self._endpoint(backend)
        except (AttemptFailed, RouterError) as exc:
            return {"status": "UNKNOWN", "error": str(exc)[:500]}
        state = endpoint.state
        out: dict[str, Any] = {"status": _name(state.ready) if state else "UNKNOWN",
                               "config_update": _name(state.config_update) if state else None,
                               "task": endpoint.task}
        served = endpoint.config.served_entities if endpoint.config else None
        if served:
            out["served"] = [s.name or s.entity_name for s in served]
        return {k: v for k, v in out.items() if v is not None}

    async def aclose(self) -> None:
        await self._http.aclose()


def _name(value: Any) -> str | None:
    """An SDK enum's value (or the raw string when the SDK did not know it)."""
    return None if value is None else str(getattr(value, "value", value))
