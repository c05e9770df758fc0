"""A local Azure for the azure-ml and azure-foundry adapters: Entra ID token issuance, Azure Resource Manager for an
Azure ML workspace (online and serverless endpoints, their keys) and for Azure AI services resources (Foundry model
deployments, their keys), the endpoints' scoring hosts and the resources' model inference endpoint, over TLS on
127.0.0.1.

Why this shape:
- azure-core refuses bearer tokens over plain HTTP, so the server speaks TLS with a certificate from a `trustme`
  test CA; clients trust it the standard way (`REQUESTS_CA_BUNDLE` for azure-core/MSAL, `SSL_CERT_FILE` for the
  router's aiohttp/httpx), as a company trusts its own CA.
- The SDK is pointed here exactly as at a sovereign or private cloud: `ARM_CLOUD_METADATA_URL` serves a cloud
  document naming this server as resource manager and login endpoint (`cloud=` in MLClient picks it by name), and
  `AZURE_AUTHORITY_HOST` + `AZURE_CLIENT_ID/SECRET/TENANT_ID` make DefaultAzureCredential ask this server's
  `/{tenant}/oauth2/v2.0/token` (after MSAL's tenant discovery at `/{tenant}/v2.0/.well-known/openid-configuration`).
- ARM paths are the ones MLClient calls (`.../workspaces/{ws}/onlineEndpoints/{name}`, `/deployments`,
  `/listKeys`, `.../serverlessEndpoints/{name}`, `/listKeys`, and the workspace itself); ARM answers only a bearer
  token this server issued, scoring answers only the endpoint's current key.
- Foundry shapes follow the Microsoft.CognitiveServices 2024-10-01 REST spec (azure-rest-api-specs
  specification/cognitiveservices/resource-manager/.../2024-10-01/cognitiveservices.json: `Account` with
  `properties.endpoints` {"Azure AI Model Inference API": url} and `disableLocalAuth`, `Deployment` with `sku`
  {name, capacity} and `properties.model`/`provisioningState`, `listKeys` -> `ApiKeys` {key1, key2}); inference
  follows the Azure AI model inference API (learn.microsoft.com/azure/ai-foundry/foundry-models/how-to/inference and
  /rest/api/aifoundry/model-inference): `POST {endpoint}/models/chat/completions?api-version=2024-05-01-preview`
  routed by `model` = deployment name, `api-key` or `Authorization: Bearer` (Entra ID), OpenAI-shaped bodies,
  tool calls included. A serverless endpoint's `authMode` is Key, AAD or KeyAndAAD (azure-ai-ml's
  `ServerlessInferenceEndpointAuthMode`); an AAD-only endpoint has no keys to list and takes a bearer token.
- Faults are answered on the wire, per surface ("token", "arm", "keys", "scoring"): a status (429 with Retry-After,
  500, 401, ...), a slow answer, malformed JSON; a missing endpoint is a real ARM 404; a closed port is an endpoint
  whose scoring URI, or a cloud whose resource manager, points at a port nobody listens on.

Use: `with AzureEmulator() as az: az.add_online("chat-fr"); env = az.env()` (then set `env` in os.environ).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

#: The cloud name this emulator's metadata document declares (what a user passes as `cloud:`).
CLOUD = "SovraEmulatorCloud"
ARM_PREFIX = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.MachineLearningServices/workspaces/{ws}"
FOUNDRY_PREFIX = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.CognitiveServices/accounts/{account}"
#: The api-version of the model inference API this emulator speaks.
INFERENCE_API_VERSION = "2024-05-01-preview"


@dataclass(frozen=True)
class Fault:
    """How one surface misbehaves: answer `status` (with `retry_after_s` as Retry-After), wait `delay_s` first,
    or answer 200 with a body that is not JSON. `times`: how many requests it hits (None: until cleared)."""

    status: int | None = None
    retry_after_s: int | None = None
    delay_s: float = 0.0
    malformed: bool = False
    times: int | None = None


@dataclass
class Endpoint:
    """One endpoint in the workspace. `sku` is a serverless endpoint's SKU name (its deployment type)."""

    name: str
    kind: str  # "online" | "serverless"
    location: str
    sku: str | None = None
    key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    provisioning_state: str = "Succeeded"
    endpoint_state: str = "Online"
    deployments: tuple[str, ...] = ("blue",)
    streams: bool = True
    scoring_closed: bool = False  # its scoring URI points at a closed port
    model_id: str = "azureml://registries/azureml-mistral/models/Mistral-Large-2411"
    auth_mode: str = "Key"  # serverless: Key | AAD | KeyAndAAD


@dataclass
class FoundryDeployment:
    """One model deployment; `sku` is its deployment type (GlobalStandard, DataZoneStandard, ProvisionedManaged...)."""

    name: str
    sku: str = "DataZoneStandard"
    capacity: int = 10
    model: str = "Mistral-Large-2411"
    provisioning_state: str = "Succeeded"


@dataclass
class FoundryAccount:
    """An Azure AI services resource (kind AIServices) and its deployments."""

    name: str
    location: str
    key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    disable_local_auth: bool = False
    deployments: dict[str, FoundryDeployment] = field(default_factory=dict)


@dataclass
class Seen:
    """One request this emulator answered: method, path and the headers tests assert on (no credential)."""

    surface: str
    method: str
    path: str
    deployment_header: str | None = None
    body: dict[str, Any] | None = None


class AzureEmulator:
    """Token + ARM + scoring on one TLS port. Reusable as a context manager; `env()` is what a user would set."""

    def __init__(self, *, subscription_id: str = "00000000-0000-0000-0000-00000000a2ml",
                 resource_group: str = "sovra-rg", workspace: str = "sovra-ws", location: str = "francecentral",
                 tenant_id: str = "sovra-tenant", client_id: str = "sovra-router-app"):
        import trustme

        self.subscription_id, self.resource_group, self.workspace = subscription_id, resource_group, workspace
        self.location, self.tenant_id, self.client_id = location, tenant_id, client_id
        self.client_secret = secrets.token_urlsafe(24)
        self.endpoints: dict[str, Endpoint] = {}
        self.accounts: dict[str, FoundryAccount] = {}
        self.faults: dict[str, Fault] = {}
        self.seen: list[Seen] = []
        self.issued_tokens: list[str] = []
        self.arm_closed = False  # the cloud document names a resource manager on a closed port
        self._lock = threading.Lock()
        self._ca = trustme.CA()
        self._dir = tempfile.TemporaryDirectory(prefix="sovra-azure-emu-")
        self.ca_file = Path(self._dir.name) / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.closed_port = _closed_port()

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        import uvicorn

        cert = self._ca.issue_cert("127.0.0.1", "localhost")
        key_file, cert_file = Path(self._dir.name) / "key.pem", Path(self._dir.name) / "cert.pem"
        cert.private_key_pem.write_to_path(str(key_file))
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        for extra in cert.cert_chain_pems[1:]:
            with open(cert_file, "ab") as f:
                f.write(extra.bytes())
        self._server = uvicorn.Server(uvicorn.Config(self._app(), host="127.0.0.1", port=0, log_level="warning",
                                                     ssl_keyfile=str(key_file), ssl_certfile=str(cert_file),
                                                     lifespan="off", timeout_graceful_shutdown=0.5))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise RuntimeError("the Azure emulator did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            assert not self._thread.is_alive(), "the Azure emulator did not stop"
        self._dir.cleanup()

    # -- what a user sets ----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def metadata_url(self) -> str:
        return f"{self.url}/metadata/endpoints?api-version=2022-09-01"

    def env(self) -> dict[str, str]:
        """The environment a user sets to reach this 'cloud' (as for Azure Stack Hub or any private cloud)."""
        return {"AZURE_AUTHORITY_HOST": self.url, "AZURE_TENANT_ID": self.tenant_id,
                "AZURE_CLIENT_ID": self.client_id, "AZURE_CLIENT_SECRET": self.client_secret,
                "ARM_CLOUD_METADATA_URL": self.metadata_url,
                "REQUESTS_CA_BUNDLE": str(self.ca_file), "SSL_CERT_FILE": str(self.ca_file)}

    def connection(self, endpoint: str | None, kind: str = "online", **extra: Any) -> dict[str, Any]:
        """An org.yaml `connection:` for an endpoint of this workspace."""
        out = {"subscription_id": self.subscription_id, "resource_group": self.resource_group,
               "workspace": self.workspace, "kind": kind, "cloud": CLOUD, **extra}
        if endpoint is not None:
            out["endpoint"] = endpoint
        return out

    # -- state and faults ----------------------------------------------------------------------------------------

    def add_online(self, name: str, *, location: str | None = None, **kw: Any) -> Endpoint:
        ep = self.endpoints[name] = Endpoint(name, "online", location or self.location, **kw)
        return ep

    def add_serverless(self, name: str, *, location: str | None = None, sku: str = "Consumption",
                       **kw: Any) -> Endpoint:
        ep = self.endpoints[name] = Endpoint(name, "serverless", location or self.location, sku=sku,
                                             deployments=(), **kw)
        return ep

    def add_foundry(self, account: str, deployment: str, *, location: str = "swedencentral",
                    **kw: Any) -> FoundryDeployment:
        """A deployment in Foundry resource `account` (made on first use, in `location`)."""
        acc = self.accounts.setdefault(account, FoundryAccount(account, location))
        dep = acc.deployments[deployment] = FoundryDeployment(deployment, **kw)
        return dep

    def foundry_connection(self, account: str, deployment: str | None, **extra: Any) -> dict[str, Any]:
        """An org.yaml `connection:` for a deployment of a Foundry resource here."""
        out = {"subscription_id": self.subscription_id, "resource_group": self.resource_group,
               "account": account, "arm_endpoint": self.url, **extra}
        if deployment is not None:
            out["deployment"] = deployment
        return out

    def rotate_foundry_key(self, account: str) -> None:
        self.accounts[account].key = secrets.token_urlsafe(32)

    def rotate_key(self, name: str) -> None:
        """A new primary key: the old one is refused from now on (as after `regenerate-keys`)."""
        ep = self.endpoints[name]
        self.endpoints[name] = replace(ep, key=secrets.token_urlsafe(32))

    def all_secrets(self) -> list[str]:
        """Every credential this emulator handed out or holds: none may appear in logs or records."""
        return [self.client_secret, *self.issued_tokens, *(e.key for e in self.endpoints.values()),
                *(a.key for a in self.accounts.values())]

    @contextlib.contextmanager
    def fault(self, surface: str, fault: Fault) -> Iterator[None]:
        """Make `surface` ("token", "arm", "keys", "scoring") misbehave for the duration."""
        assert surface in ("token", "arm", "keys", "scoring"), surface
        self.faults[surface] = fault
        try:
            yield
        finally:
            self.faults.pop(surface, None)

    def count(self, surface: str, suffix: str = "") -> int:
        return sum(1 for s in self.seen if s.surface == surface and s.path.endswith(suffix))

    # -- the server ----------------------------------------------------------------------------------------------

    def _take_fault(self, surface: str) -> Fault | None:
        with self._lock:
            fault = self.faults.get(surface)
            if fault is None:
                return None
            if fault.times is not None:
                if fault.times <= 1:
                    self.faults.pop(surface)
                else:
                    self.faults[surface] = replace(fault, times=fault.times - 1)
            return fault

    async def _faulty(self, surface: str) -> Any:
        """The response a fault asks for, or None to answer normally (after any delay)."""
        from starlette.responses import JSONResponse, Response

        fault = self._take_fault(surface)
        if fault is None:
            return None
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.malformed:
            return Response(b'{"properties": {"oops', media_type="application/json")
        if fault.status is not None:
            headers = {"Retry-After": str(fault.retry_after_s)} if fault.retry_after_s is not None else {}
            code = {401: "AuthenticationFailed", 403: "AuthorizationFailed", 429: "TooManyRequests"}.get(
                fault.status, "InternalServerError")
            return JSONResponse({"error": {"code": code, "message": f"emulated fault {fault.status}"}},
                                status_code=fault.status, headers=headers)
        return None

    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.routing import Route

        ws, fa = ARM_PREFIX, FOUNDRY_PREFIX
        return Starlette(routes=[
            Route(fa, self._foundry_account, methods=["GET"]),
            Route(fa + "/deployments/{name}", self._foundry_deployment, methods=["GET"]),
            Route(fa + "/listKeys", self._foundry_keys, methods=["POST"]),
            Route("/foundry/{account}/models/chat/completions", self._foundry_infer, methods=["POST"]),
            Route("/foundry/{account}/models/embeddings", self._foundry_infer, methods=["POST"]),
            Route("/metadata/endpoints", self._metadata, methods=["GET"]),
            Route("/{tenant}/v2.0/.well-known/openid-configuration", self._openid, methods=["GET"]),
            Route("/{tenant}/oauth2/v2.0/token", self._token, methods=["POST"]),
            Route(ws, self._workspace, methods=["GET"]),
            Route(ws + "/onlineEndpoints/{name}", self._get_endpoint, methods=["GET"]),
            Route(ws + "/onlineEndpoints/{name}/deployments", self._deployments, methods=["GET"]),
            Route(ws + "/onlineEndpoints/{name}/listKeys", self._list_keys, methods=["POST"]),
            Route(ws + "/serverlessEndpoints/{name}", self._get_endpoint, methods=["GET"]),
            Route(ws + "/serverlessEndpoints/{name}/listKeys", self._list_keys, methods=["POST"]),
            Route("/online/{name}/score", self._score, methods=["POST"]),
            Route("/serverless/{name}/chat/completions", self._score, methods=["POST"]),
            Route("/serverless/{name}/embeddings", self._score, methods=["POST"]),
        ])

    # token ------------------------------------------------------------------------------------------------------

    async def _metadata(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        arm = f"https://127.0.0.1:{self.closed_port}/" if self.arm_closed else f"{self.url}/"
        return JSONResponse([{
            "name": CLOUD, "portal": "https://portal.sovra.test/", "resourceManager": arm,
            "authentication": {"loginEndpoint": f"{self.url}/", "audiences": [arm], "tenant": "common",
                               "identityProvider": "AAD"},
            "suffixes": {"storage": "core.sovra.test", "keyVaultDns": "vault.sovra.test"},
        }])

    async def _openid(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        tenant = request.path_params["tenant"]
        base = f"{self.url}/{tenant}"
        return JSONResponse({"token_endpoint": f"{base}/oauth2/v2.0/token",
                             "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                             "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                             "issuer": f"{base}/v2.0", "tenant_region_scope": "EU"})

    async def _token(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        self.seen.append(Seen("token", "POST", request.url.path))
        faulty = await self._faulty("token")
        if faulty is not None:
            return faulty
        form = {k: v[0] for k, v in urllib.parse.parse_qs((await request.body()).decode()).items()}
        if (request.path_params["tenant"] != self.tenant_id or form.get("client_id") != self.client_id
                or form.get("client_secret") != self.client_secret):
            return JSONResponse({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client "
                                 "secret provided.", "error_codes": [7000215]}, status_code=401)
        token = secrets.token_urlsafe(40)
        self.issued_tokens.append(token)
        return JSONResponse({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                             "access_token": token})

    # ARM --------------------------------------------------------------------------------------------------------

    async def _arm_gate(self, request: Any, surface: str = "arm") -> Any:
        """Record, check the bearer token and the workspace scope, apply faults. None: go on."""
        from starlette.responses import JSONResponse

        self.seen.append(Seen(surface, request.method, request.url.path))
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.issued_tokens:
            return JSONResponse({"error": {"code": "AuthenticationFailed",
                                           "message": "Authentication failed: no valid bearer token."}},
                                status_code=401)
        p = request.path_params
        if (p["sub"], p["rg"].lower(), p["ws"].lower()) != (self.subscription_id, self.resource_group.lower(),
                                                           self.workspace.lower()):
            return JSONResponse({"error": {"code": "ResourceNotFound", "message": "Workspace not found."}},
                                status_code=404)
        return await self._faulty(surface)

    def _arm_id(self, *parts: str) -> str:
        base = ARM_PREFIX.format(sub=self.subscription_id, rg=self.resource_group, ws=self.workspace)
        return "/".join((base, *parts))

    def _endpoint_or_404(self, request: Any) -> tuple[Endpoint | None, Any]:
        from starlette.responses import JSONResponse

        name = request.path_params["name"]
        kind = "online" if "/onlineEndpoints/" in request.url.path else "serverless"
        ep = self.endpoints.get(name)
        if ep is None or ep.kind != kind:
            return None, JSONResponse({"error": {"code": "ResourceNotFound", "message": (
                f"The Resource 'Microsoft.MachineLearningServices/workspaces/{self.workspace}/"
                f"{kind}Endpoints/{name}' under resource group '{self.resource_group}' was not found.")}},
                status_code=404)
        return ep, None

    async def _workspace(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        bad = await self._arm_gate(request)
        if bad is not None:
            return bad
        return JSONResponse({"id": self._arm_id(), "name": self.workspace, "location": self.location,
                             "type": "Microsoft.MachineLearningServices/workspaces", "kind": "Default",
                             "properties": {"friendlyName": self.workspace, "provisioningState": "Succeeded",
                                            "workspaceId": "0000-emulated"}})

    async def _get_endpoint(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        bad = await self._arm_gate(request)
        if bad is not None:
            return bad
        ep, missing = self._endpoint_or_404(request)
        if ep is None:
            return missing
        scoring_host = f"https://127.0.0.1:{self.closed_port}" if ep.scoring_closed else self.url
        if ep.kind == "online":
            return JSONResponse({
                "id": self._arm_id("onlineEndpoints", ep.name), "name": ep.name, "location": ep.location,
                "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints", "kind": "Managed",
                "identity": {"type": "SystemAssigned", "principalId": "p", "tenantId": self.tenant_id},
                "properties": {"authMode": "Key", "scoringUri": f"{scoring_host}/online/{ep.name}/score",
                               "swaggerUri": f"{scoring_host}/online/{ep.name}/swagger.json",
                               "provisioningState": ep.provisioning_state, "publicNetworkAccess": "Enabled",
                               "traffic": {d: (100 if i == 0 else 0) for i, d in enumerate(ep.deployments)}}})
        return JSONResponse({
            "id": self._arm_id("serverlessEndpoints", ep.name), "name": ep.name, "location": ep.location,
            "type": "Microsoft.MachineLearningServices/workspaces/serverlessEndpoints", "sku": {"name": ep.sku},
            "properties": {"authMode": ep.auth_mode, "modelSettings": {"modelId": ep.model_id},
                           "inferenceEndpoint": {"uri": f"{scoring_host}/serverless/{ep.name}",
                                                 "headers": {"extra-parameters": "pass-through"}},
                           "provisioningState": ep.provisioning_state, "endpointState": ep.endpoint_state}})

    async def _deployments(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        bad = await self._arm_gate(request)
        if bad is not None:
            return bad
        ep, missing = self._endpoint_or_404(request)
        if ep is None:
            return missing
        return JSONResponse({"value": [{
            "id": self._arm_id("onlineEndpoints", ep.name, "deployments", d), "name": d, "location": ep.location,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments", "kind": "Managed",
            "sku": {"name": "Default", "capacity": 1},
            "properties": {"endpointComputeType": "Managed", "instanceType": "Standard_NC24ads_A100_v4",
                           "provisioningState": "Succeeded", "appInsightsEnabled": False,
                           "scaleSettings": {"scaleType": "Default"},
                           "requestSettings": {"requestTimeout": "PT90S", "maxConcurrentRequestsPerInstance": 8},
                           "model": "azureml://registries/azureml/models/Mistral-Small-24B/versions/1"}}
            for d in ep.deployments]})

    async def _list_keys(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        bad = await self._arm_gate(request, "keys")
        if bad is not None:
            return bad
        ep, missing = self._endpoint_or_404(request)
        if ep is None:
            return missing
        if ep.auth_mode == "AAD":  # an Entra-only endpoint has no keys
            return JSONResponse({"error": {"code": "BadRequest", "message": (
                f"Endpoint '{ep.name}' uses AAD authentication; keys are not available.")}}, status_code=400)
        return JSONResponse({"primaryKey": ep.key, "secondaryKey": secrets.token_urlsafe(32)})

    # scoring ----------------------------------------------------------------------------------------------------

    async def _score(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        name = request.path_params["name"]
        ep = self.endpoints.get(name)
        seen = Seen("scoring", "POST", request.url.path, request.headers.get("azureml-model-deployment"))
        self.seen.append(seen)
        if ep is None:
            return JSONResponse({"error": {"code": "NotFound", "message": "no such endpoint"}}, status_code=404)
        auth = request.headers.get("authorization", "")
        by_key = ep.auth_mode != "AAD" and auth == f"Bearer {ep.key}"
        by_token = ep.auth_mode != "Key" and auth.startswith("Bearer ") and auth[7:] in self.issued_tokens
        if not (by_key or by_token):
            return JSONResponse({"message": "Unauthorized: invalid key"}, status_code=401)
        if seen.deployment_header is not None and seen.deployment_header not in ep.deployments:
            return JSONResponse({"error": {"code": "DeploymentNotFound",
                                           "message": f"no deployment {seen.deployment_header}"}}, status_code=404)
        faulty = await self._faulty("scoring")
        if faulty is not None:
            return faulty
        body = await request.json()
        seen.body = body
        return _reply(ep.name, body, request.url.path.endswith("/embeddings"), ep.streams)

    # Foundry ----------------------------------------------------------------------------------------------------

    async def _foundry_gate(self, request: Any, surface: str = "arm") -> tuple[FoundryAccount | None, Any]:
        """Record, check the bearer token and the resource, apply faults: (the account, None) to go on."""
        from starlette.responses import JSONResponse

        self.seen.append(Seen(surface, request.method, request.url.path))
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.issued_tokens:
            return None, JSONResponse({"error": {"code": "AuthenticationFailed",
                                                 "message": "Authentication failed: no valid bearer token."}},
                                      status_code=401)
        if request.query_params.get("api-version") is None:
            return None, JSONResponse({"error": {"code": "MissingApiVersionParameter", "message": (
                "The api-version query parameter (?api-version=) is required for all requests.")}}, status_code=400)
        p = request.path_params
        acc = self.accounts.get(p["account"])
        if (p["sub"], p["rg"].lower()) != (self.subscription_id, self.resource_group.lower()) or acc is None:
            return None, JSONResponse({"error": {"code": "ResourceNotFound", "message": (
                f"The Resource 'Microsoft.CognitiveServices/accounts/{p['account']}' under resource group "
                f"'{p['rg']}' was not found.")}}, status_code=404)
        return acc, await self._faulty(surface)

    def _foundry_id(self, account: str, *parts: str) -> str:
        base = FOUNDRY_PREFIX.format(sub=self.subscription_id, rg=self.resource_group, account=account)
        return "/".join((base, *parts))

    async def _foundry_account(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        acc, bad = await self._foundry_gate(request)
        if bad is not None:
            return bad
        host = f"{self.url}/foundry/{acc.name}/"
        return JSONResponse({
            "id": self._foundry_id(acc.name), "name": acc.name, "type": "Microsoft.CognitiveServices/accounts",
            "location": acc.location, "kind": "AIServices", "sku": {"name": "S0"},
            "properties": {"provisioningState": "Succeeded", "customSubDomainName": acc.name, "endpoint": host,
                           "endpoints": {"Azure AI Model Inference API": host, "OpenAI Language Model Instance API":
                                         host, "AI Foundry API": host},
                           "disableLocalAuth": acc.disable_local_auth, "publicNetworkAccess": "Enabled"}})

    async def _foundry_deployment(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        acc, bad = await self._foundry_gate(request)
        if bad is not None:
            return bad
        dep = acc.deployments.get(request.path_params["name"])
        if dep is None:
            return JSONResponse({"error": {"code": "DeploymentNotFound", "message": (
                f"The Resource 'Microsoft.CognitiveServices/accounts/{acc.name}/deployments/"
                f"{request.path_params['name']}' was not found.")}}, status_code=404)
        return JSONResponse({
            "id": self._foundry_id(acc.name, "deployments", dep.name), "name": dep.name,
            "type": "Microsoft.CognitiveServices/accounts/deployments",
            "sku": {"name": dep.sku, "capacity": dep.capacity},
            "properties": {"model": {"format": "Mistral AI", "name": dep.model, "version": "1"},
                           "provisioningState": dep.provisioning_state, "versionUpgradeOption": "NoAutoUpgrade",
                           "capabilities": {"chatCompletion": "true"}}})

    async def _foundry_keys(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        acc, bad = await self._foundry_gate(request, "keys")
        if bad is not None:
            return bad
        if acc.disable_local_auth:
            return JSONResponse({"error": {"code": "BadRequest", "message": (
                "Failed to list key. disableLocalAuth is set to be true")}}, status_code=400)
        return JSONResponse({"key1": acc.key, "key2": secrets.token_urlsafe(32)})

    async def _foundry_infer(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        seen = Seen("scoring", "POST", request.url.path)
        self.seen.append(seen)
        acc = self.accounts.get(request.path_params["account"])
        if acc is None:
            return JSONResponse({"error": {"code": "NotFound", "message": "Resource not found"}}, status_code=404)
        if request.query_params.get("api-version") != INFERENCE_API_VERSION:
            return JSONResponse({"error": {"code": "BadRequest", "message": "Unsupported api-version"}},
                                status_code=400)
        auth = request.headers.get("authorization", "")
        by_key = not acc.disable_local_auth and request.headers.get("api-key") == acc.key
        by_token = auth.startswith("Bearer ") and auth[7:] in self.issued_tokens
        if not (by_key or by_token):
            return JSONResponse({"error": {"code": "401", "message": (
                "Access denied due to invalid subscription key or wrong API endpoint.")}}, status_code=401)
        faulty = await self._faulty("scoring")
        if faulty is not None:
            return faulty
        body = await request.json()
        seen.body = body
        dep = acc.deployments.get(str(body.get("model")))
        if dep is None or dep.provisioning_state != "Succeeded":
            return JSONResponse({"error": {"code": "unknown_model", "message": (
                f"Unknown model: {body.get('model')}")}}, status_code=400)
        return _reply(dep.name, body, request.url.path.endswith("/embeddings"), True)


def _reply(name: str, body: dict[str, Any], embeddings: bool, streams: bool) -> Any:
    """An OpenAI-shaped answer: embeddings, or a chat answer echoing the last user turn. With `tools`, the first
    turn calls the first tool (arguments: the user's text) and a turn after the tool's result answers with it."""
    from starlette.responses import JSONResponse, StreamingResponse

    if "input" in body or embeddings:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return JSONResponse({"object": "list", "model": body.get("model", ""),
                             "data": [{"object": "embedding", "index": i, "embedding": _vector(t)}
                                      for i, t in enumerate(inputs)],
                             "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}})
    messages = body.get("messages", [])
    last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    calls = None
    if messages and messages[-1].get("role") == "tool":
        text: str | None = f"{name} read the tool: {messages[-1].get('content')}"
    elif body.get("tools"):
        fn = body["tools"][0]["function"]["name"]
        text, calls = None, [{"id": "call_1", "type": "function",
                              "function": {"name": fn, "arguments": json.dumps({"q": last})}}]
    else:
        text = f"{name} says: {last}"
    words = (text or "").split()
    usage = {"prompt_tokens": len(str(last).split()), "completion_tokens": len(words) or 1,
             "total_tokens": len(str(last).split()) + (len(words) or 1)}
    finish = "tool_calls" if calls else "stop"
    if body.get("stream") and streams:
        async def events() -> Any:
            def event(delta: dict[str, Any], reason: str | None = None, **extra: Any) -> str:
                return "data: " + json.dumps({"id": "az-1", "object": "chat.completion.chunk", "created": 0,
                                              "model": name, "choices": [{"index": 0, "delta": delta,
                                                                          "finish_reason": reason}], **extra}) + "\n\n"

            for i, word in enumerate(words):
                yield event({"content": (" " if i else "") + word})
            for i, c in enumerate(calls or ()):
                yield event({"tool_calls": [{"index": i, **c}]})
            yield event({}, finish, usage=usage) + "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    return JSONResponse({"id": "az-1", "object": "chat.completion", "created": int(time.time()), "model": name,
                         "usage": usage, "choices": [{"index": 0, "finish_reason": finish, "message": message}]})


def _vector(text: str, dim: int = 8) -> list[float]:
    """A deterministic embedding: the text's length, then its first characters' code points, zero-padded."""
    head = [float(len(text))] + [float(ord(ch)) for ch in text[: dim - 1]]
    return head + [0.0] * (dim - len(head))


def _closed_port() -> int:
    """A port bound and closed again: nothing listens there, so connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
