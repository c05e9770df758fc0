"""The Azure Resource Manager side of the azure-ml adapter, through `azure-ai-ml`'s MLClient: one client per
workspace, the facts Sovra needs about an endpoint (scoring URI, state, location, deployment type), its key, and
the one function that turns an azure-core / azure-identity failure into a router verdict.

Everything here blocks (azure-core over `requests`); the router calls it through `openai_wire.blocking`.
Credentials come from `DefaultAzureCredential` where Sovra runs; a key read here lives only in memory, wrapped so
that no repr, log line or record can show it.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sovra.core.api_errors import AttemptFailed, NotDelivered, Refused

#: Endpoint kinds Sovra reaches, as org.yaml names them.
KINDS = ("online", "serverless")
#: Entra ID scope of Azure ML endpoints that authenticate with Entra ID (online `aad_token`, serverless `AAD`).
ML_SCOPE = "https://ml.azure.com/.default"
#: ARM calls are bounded so that a blocked thread cannot outlive the router's own timeout by much.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Workspace:
    """An Azure ML workspace (or Azure AI hub/project), and the Azure cloud it lives in (None: the SDK default,
    i.e. `AZUREML_CURRENT_CLOUD`, else the cloud `ARM_CLOUD_METADATA_URL` describes, else AzureCloud)."""

    subscription_id: str
    resource_group: str
    workspace: str
    cloud: str | None = None

    @classmethod
    def of(cls, params: Mapping[str, str]) -> Workspace:
        """From a backend's params (as `AzureML.locate` wrote them) or a connection's fields."""
        return cls(params["subscription_id"], params["resource_group"], params["workspace"], params.get("cloud"))


class Secret:
    """A key or token held in memory only: its repr and str never show it, so logs and records cannot either."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        """The value, for the one header that carries it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


@dataclass(frozen=True)
class EndpointFacts:
    """What ARM says about one endpoint; no credential. `sku` is a serverless endpoint's SKU name (its deployment
    type, e.g. GlobalStandard, or Consumption for a serverless API endpoint); None for an online endpoint."""

    kind: str
    name: str
    state: str
    location: str | None
    scoring_uri: str | None
    sku: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: how callers authenticate: "key" (listKeys), "aad" (an Entra ID token from the credential, no keys).
    auth: str = "key"

    @property
    def ready(self) -> bool:
        """Provisioned and able to score. `Updating` (azure-ai-ml's EndpointProvisioningState: a deployment added,
        traffic moved) still serves the deployments it has; Creating, Deleting, Failed and Canceled do not."""
        return self.state.lower() in ("succeeded", "online", "updating") and bool(self.scoring_uri)


def credential() -> Any:
    """`DefaultAzureCredential`, which reads `AZURE_AUTHORITY_HOST` and, through EnvironmentCredential,
    `AZURE_CLIENT_ID`/`AZURE_CLIENT_SECRET`/`AZURE_TENANT_ID` (then workload identity, managed identity, the CLI...).

    MSAL checks an authority it does not know against login.microsoftonline.com ("instance discovery"). Microsoft's
    own authority hosts keep that check; an authority host the operator named that Microsoft does not know (Azure
    Stack Hub, ADFS, a test emulator) has been vouched for by naming it, and could never pass it."""
    from azure.identity import AzureAuthorityHosts, DefaultAzureCredential

    known = {urllib.parse.urlsplit(f"https://{h}").hostname
             for h in (AzureAuthorityHosts.AZURE_PUBLIC_CLOUD, AzureAuthorityHosts.AZURE_GOVERNMENT,
                       AzureAuthorityHosts.AZURE_CHINA)}
    authority = os.environ.get("AZURE_AUTHORITY_HOST") or AzureAuthorityHosts.AZURE_PUBLIC_CLOUD
    host = urllib.parse.urlsplit(authority if "://" in authority else f"https://{authority}").hostname
    return DefaultAzureCredential(disable_instance_discovery=host not in known)


def ml_client(workspace: Workspace, cred: Any, *, connect_timeout_s: float = CONNECT_TIMEOUT_S,
              read_timeout_s: float = READ_TIMEOUT_S) -> Any:
    """An MLClient for `workspace`. No retries inside the SDK: a throttled or failing ARM call becomes a verdict
    at once and the router decides (another allowed backend, or the client's own retry). No telemetry: the router
    sends nothing to Application Insights."""
    from azure.ai.ml import MLClient

    kwargs: dict[str, Any] = {"retry_total": 0, "connection_timeout": connect_timeout_s,
                              "read_timeout": read_timeout_s, "enable_telemetry": False, "show_progress": False}
    if workspace.cloud:
        kwargs["cloud"] = workspace.cloud
    return MLClient(cred, workspace.subscription_id, workspace.resource_group, workspace.workspace, **kwargs)


def read_endpoint(ml: Any, kind: str, name: str) -> EndpointFacts:
    """The endpoint's state, location, scoring URI and (serverless) SKU, payload-free."""
    if kind == "online":
        ep = ml.online_endpoints.get(name)
        auth = "aad" if str(getattr(ep, "auth_mode", "") or "").lower() == "aad_token" else "key"
        return EndpointFacts("online", name, _text(ep.provisioning_state), ep.location, ep.scoring_uri, auth=auth)
    raw: dict[str, Any] = {}

    def keep_raw(pipeline_response: Any) -> None:
        # The SDK's entity drops the SKU and the endpoint state; azure-core's per-call hook sees the ARM document.
        try:
            raw.update(pipeline_response.http_response.json() or {})
        except ValueError:
            pass

    ep = ml.serverless_endpoints.get(name, raw_response_hook=keep_raw)
    props = raw.get("properties") or {}
    provisioned = _text(ep.provisioning_state)
    state = str(props.get("endpointState") or provisioned) if provisioned.lower() == "succeeded" else provisioned
    sku = (raw.get("sku") or {}).get("name")
    headers = {k: str(v) for k, v in (ep.headers or {}).items() if k.lower() not in ("authorization", "api-key")}
    # authMode Key | AAD | KeyAndAAD (azure-ai-ml's ServerlessInferenceEndpointAuthMode): AAD alone has no keys
    auth = "aad" if str(props.get("authMode") or "Key").lower() == "aad" else "key"
    return EndpointFacts("serverless", name, state, ep.location, ep.scoring_uri, sku, headers, auth)


def read_key(ml: Any, kind: str, name: str) -> Secret:
    """The endpoint's primary key (or, for token-authenticated online endpoints, its current token)."""
    ops = ml.online_endpoints if kind == "online" else ml.serverless_endpoints
    keys = ops.get_keys(name)
    value = getattr(keys, "primary_key", None) or getattr(keys, "access_token", None)
    if not value:
        raise Refused(f"Azure ML {kind} endpoint {name!r} returned no key", status=401, down=True)
    return Secret(value)


def verdict(exc: BaseException, what: str) -> AttemptFailed:
    """The one mapping from MLClient / azure-core / azure-identity failures to the router's verdicts. `what` says
    which call failed (for the message); no payload has left at this point, and no secret is in these messages."""
    from azure.core import exceptions as az

    if isinstance(exc, AttemptFailed):
        return exc
    detail = f"{what}: {type(exc).__name__}: {_short(exc)}"
    if isinstance(exc, az.ResourceNotFoundError):
        return Refused(f"{detail}; name an endpoint that exists under `endpoints:` in org.yaml", status=404,
                       down=True)
    status = getattr(exc, "status_code", None)
    if isinstance(exc, az.ClientAuthenticationError) or (isinstance(exc, az.HttpResponseError) and status in (401, 403)):
        return Refused(f"{detail}; check the identity DefaultAzureCredential finds where the router runs, and its "
                       "role on the workspace", status=401, down=True)
    if isinstance(exc, az.ServiceRequestError):  # never connected: nothing was sent
        return NotDelivered(detail)
    if isinstance(exc, az.HttpResponseError) and status == 429:
        return Refused(detail, throttled=True, retry_after_s=_retry_after(exc))
    # Anything else (a 5xx, a timeout, an answer it cannot parse) happened while asking ARM for the endpoint's URI
    # or key: the request's payload never left, so another allowed backend may take it.
    return NotDelivered(detail)


def _text(state: Any) -> str:
    """An SDK state (a str, or a str enum whose str() is its class path) as ARM spells it."""
    return str(getattr(state, "value", state) or "Unknown")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("…" if len(text) > 300 else "")


def _retry_after(exc: Any) -> int:
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return max(1, int(float(value)))
    except (TypeError, ValueError):
        return 1
