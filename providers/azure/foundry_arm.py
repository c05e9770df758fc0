"""The Azure Resource Manager side of the azure-foundry adapter: what Sovra reads about a Foundry deployment (its
type, capacity, state, model) and its resource (location, inference endpoint), and the resource's key.

REST shapes, per the Microsoft.CognitiveServices 2024-10-01 spec (azure-rest-api-specs
specification/cognitiveservices/resource-manager/Microsoft.CognitiveServices/stable/2024-10-01/cognitiveservices.json;
azure-mgmt-cognitiveservices models `Account`, `AccountProperties.endpoints`, `Deployment`, `Sku`, `ApiKeys`):
- `GET .../accounts/{account}` -> `{"location", "properties": {"endpoint", "endpoints": {"Azure AI Model Inference
  API": url, ...}, "disableLocalAuth"}}`
- `GET .../accounts/{account}/deployments/{name}` -> `{"sku": {"name", "capacity"}, "properties": {"model":
  {"format", "name", "version"}, "provisioningState"}}`
- `POST .../accounts/{account}/listKeys` -> `{"key1", "key2"}`

Calls go through azure-core's pipeline (bearer token from DefaultAzureCredential, no retries: the router decides),
block, and are run off the router's loop by the client. Failures become verdicts in `verdict`, the one mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sovra.core.api_errors import AttemptFailed, Refused
from sovra.providers.azure import ml_arm as ml_arm
from sovra.providers.azure.ml_arm import Secret, credential

ARM_API_VERSION = "2024-10-01"
#: The key of `properties.endpoints` that names the Azure AI model inference endpoint.
INFERENCE_ENDPOINT = "Azure AI Model Inference API"
CONNECT_TIMEOUT_S = ml_arm.CONNECT_TIMEOUT_S
READ_TIMEOUT_S = ml_arm.READ_TIMEOUT_S

__all__ = ["Account", "Arm", "DeploymentFacts", "Ref", "Secret", "credential", "verdict"]


@dataclass(frozen=True)
class Account:
    """An Azure AI services / Azure OpenAI resource, and the Resource Manager of its cloud."""

    subscription_id: str
    resource_group: str
    account: str
    arm_endpoint: str = "https://management.azure.com"

    @property
    def path(self) -> str:
        return (f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}/providers/"
                f"Microsoft.CognitiveServices/accounts/{self.account}")


@dataclass(frozen=True)
class Ref:
    """One deployment of one resource."""

    account: Account
    deployment: str

    @classmethod
    def of(cls, params: Mapping[str, str], deployment: str) -> Ref:
        """From a backend's params, as `AzureFoundry.locate` wrote them."""
        return cls(Account(params["subscription_id"], params["resource_group"], params["account"],
                           params.get("arm_endpoint", "https://management.azure.com")), deployment)


@dataclass(frozen=True)
class DeploymentFacts:
    """What ARM says about a deployment and its resource; no credential."""

    name: str
    state: str
    sku: str | None
    capacity: int | None
    model: str | None
    location: str | None
    inference_url: str | None
    local_auth: bool = True

    @property
    def ready(self) -> bool:
        return self.state.lower() == "succeeded" and bool(self.inference_url)


class Arm:
    """Blocking ARM reads for Foundry resources: one credential, one azure-core pipeline per Resource Manager."""

    def __init__(self, cred: Any = None, *, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 read_timeout_s: float = READ_TIMEOUT_S):
        self._cred, self._own_cred = (cred, False) if cred is not None else (None, True)
        self._timeouts = {"connection_timeout": connect_timeout_s, "read_timeout": read_timeout_s}
        self._pipelines: dict[str, Any] = {}

    def read_deployment(self, ref: Ref) -> DeploymentFacts:
        """The deployment's type, capacity and state, and its resource's location and inference URL."""
        account = self._get(ref.account.arm_endpoint, ref.account.path)
        dep = self._get(ref.account.arm_endpoint, f"{ref.account.path}/deployments/{ref.deployment}")
        props, sku = dep.get("properties") or {}, dep.get("sku") or {}
        aprops = account.get("properties") or {}
        url = (aprops.get("endpoints") or {}).get(INFERENCE_ENDPOINT)
        return DeploymentFacts(
            ref.deployment, str(props.get("provisioningState") or "Unknown"), sku.get("name"),
            sku.get("capacity"), (props.get("model") or {}).get("name"), account.get("location"),
            inference_url(url) if url else None, not aprops.get("disableLocalAuth", False))

    def read_key(self, account: Account) -> Secret:
        """The resource's first key (`listKeys`)."""
        keys = self._send("POST", account.arm_endpoint, f"{account.path}/listKeys")
        if not keys.get("key1"):
            raise Refused(f"Foundry resource {account.account!r} returned no key", status=401, down=True)
        return Secret(keys["key1"])

    def token(self, scope: str) -> tuple[Secret, int]:
        """An Entra ID token for `scope` and when it expires (epoch seconds)."""
        t = self._credential().get_token(scope)
        return Secret(t.token), int(t.expires_on)

    def close(self) -> None:
        for p in self._pipelines.values():
            p.close()
        if self._own_cred and self._cred is not None:
            self._cred.close()

    def _credential(self) -> Any:
        if self._cred is None:
            self._cred = credential()
        return self._cred

    def _get(self, base: str, path: str) -> dict[str, Any]:
        return self._send("GET", base, path)

    def _send(self, method: str, base: str, path: str) -> dict[str, Any]:
        from azure.core import exceptions as az
        from azure.core.rest import HttpRequest

        resp = self._pipeline(base).send_request(
            HttpRequest(method, base.rstrip("/") + path, params={"api-version": ARM_API_VERSION}), **self._timeouts)
        if resp.status_code == 404:
            raise az.ResourceNotFoundError(response=resp)
        if resp.status_code in (401, 403):
            raise az.ClientAuthenticationError(response=resp)
        if resp.status_code >= 300:
            raise az.HttpResponseError(response=resp)
        data = resp.json()
        if not isinstance(data, dict):
            raise TypeError("ARM answered something other than a JSON object")
        return data

    def _pipeline(self, base: str) -> Any:
        from azure.core import PipelineClient
        from azure.core.pipeline import policies

        p = self._pipelines.get(base)
        if p is None:
            scope = base.rstrip("/") + "/.default"
            p = self._pipelines[base] = PipelineClient(base, policies=[
                policies.HeadersPolicy(), policies.UserAgentPolicy("sovra"), policies.RetryPolicy(retry_total=0),
                policies.BearerTokenCredentialPolicy(self._credential(), scope), policies.HttpLoggingPolicy()])
        return p


def inference_url(endpoint: str) -> str:
    """The models inference base (`https://<resource>.services.ai.azure.com/models`) from the resource's
    `Azure AI Model Inference API` endpoint, given with or without `/models`."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/models") else base + "/models"


def verdict(exc: BaseException, what: str) -> AttemptFailed:
    """ARM / credential failures -> router verdicts (azure-ml's mapping, whose sentences fit here too: no payload
    has left while asking ARM, so anything but a refusal may go to another allowed backend)."""
    out = ml_arm.verdict(exc, what)
    if isinstance(out, Refused) and out.status == 404:
        return Refused(f"{what}: not found; name a deployment that exists (azure-foundry connection: account, "
                       "deployment)", status=404, down=True)
    return out
