"""The router's client for Foundry deployments: the Azure AI model inference API (OpenAI-shaped; tools,
`response_format`, `seed`, `stop`, `stream_options` pass through as they are) at the resource's inference endpoint,
`POST {endpoint}/models/chat/completions?api-version=...` and `/models/embeddings`, with the deployment's name as
`model` (learn.microsoft.com/azure/ai-foundry/foundry-models/how-to/inference: "routes requests to a given
deployment by matching the parameter name inside of the request to the name of the deployment").

- The inference URL (and, with auth: key, the resource key as `api-key`) is read from ARM on first use per
  deployment, off the loop, and kept in memory only; with auth: entra an Entra ID token for the inference scope
  goes as `Authorization: Bearer`, renewed before it expires. A 401/403 re-reads them once and resends to the same
  deployment, which refused without processing.
- Health and describe read ARM only: no payload goes to the inference endpoint for them.
Verdicts for HTTP answers (429 with Retry-After included) are HttpClient's; ARM failures `foundry_arm.verdict`'s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from sovra.core.backends import Backend
from sovra.core.api_errors import AttemptFailed, Refused
from sovra.providers.azure import foundry_arm as farm
from sovra.providers.azure.foundry import API_VERSION, COGNITIVE_SCOPE
from sovra.providers.azure.resolving import ResolvingClient
from sovra.providers.openai_wire import blocking

T = TypeVar("T")
PATHS = {"chat": "/chat/completions", "embed": "/embeddings"}
#: A token is renewed when it has less than this left (a long stream must not outlive it).
TOKEN_MARGIN_S = 300


@dataclass(frozen=True)
class _Resolved:
    url: str
    key: farm.Secret | None  # None: Entra ID


class AzureFoundryClient(ResolvingClient[_Resolved]):
    """HttpClient for Foundry deployments; `arm()` makes the (blocking) ARM reader, injectable for tests."""

    gen_ai_system = "az.ai.inference"

    def __init__(self, client: httpx.AsyncClient | None = None, *, arm: Callable[[], farm.Arm] = farm.Arm,
                 clock: Callable[[], float] = time.time):
        super().__init__(client)
        self._make_arm, self._clock = arm, clock
        self._arm: farm.Arm | None = None
        self._arm_lock = threading.Lock()
        self._tokens: dict[str, tuple[farm.Secret, int]] = {}

    # -- what HttpClient asks ------------------------------------------------------------------------------------

    def url(self, backend: Backend, op: str) -> str:
        resolved = self._resolved[_ref(backend)]  # `_ready` ran before every send
        return f"{resolved.url}{PATHS[op]}?api-version={backend.params.get('api_version', API_VERSION)}"

    async def headers(self, backend: Backend) -> dict[str, str]:
        resolved = await self._ready(backend)
        if resolved.key is not None:
            return {"api-key": resolved.key.reveal()}
        token = await self._token(backend.params.get("token_scope", COGNITIVE_SCOPE))
        return {"Authorization": f"Bearer {token.reveal()}"}

    def body(self, backend: Backend, body: dict[str, Any], *, stream: bool | None) -> dict[str, Any]:
        """The deployment's name is the `model` the endpoint routes by."""
        out = {**body, "model": backend.address}
        if stream is not None:
            out["stream"] = stream
        return out

    def _key(self, backend: Backend) -> farm.Ref:
        return _ref(backend)

    def _forget_tokens(self) -> None:
        self._tokens.clear()

    async def describe(self, backend: Backend) -> dict[str, Any]:
        """The deployment's state, type and capacity as ARM reports them (no key)."""
        try:
            f = await self._facts(backend)
        except AttemptFailed as exc:
            return {"status": "unknown", "error": str(exc)}
        return {"status": f.state, "deployment_type": f.sku, "capacity": f.capacity, "model": f.model,
                "location": f.location}

    async def aclose(self) -> None:
        await super().aclose()
        if self._arm is not None:
            await blocking(self._arm.close)

    # -- ARM ------------------------------------------------------------------------------------------------------

    async def _resolve_now(self, backend: Backend) -> _Resolved:
        ref, key_auth = _ref(backend), backend.params.get("auth", "key") == "key"
        return await self._ask(lambda: self._resolve(ref, key_auth), ref, "reading the deployment and its resource")

    async def _facts(self, backend: Backend) -> farm.DeploymentFacts:
        ref = _ref(backend)
        return await self._ask(lambda: self._reader().read_deployment(ref), ref, "reading the deployment")

    async def _token(self, scope: str) -> farm.Secret:
        hit = self._tokens.get(scope)
        if hit is None or hit[1] - self._clock() < TOKEN_MARGIN_S:
            try:
                hit = self._tokens[scope] = await blocking(self._reader().token, scope)
            except Exception as exc:  # mapped in one place: farm.verdict
                raise farm.verdict(exc, f"getting an Entra ID token for {scope}") from exc
        return hit[0]

    async def _ask(self, fn: Callable[[], T], ref: farm.Ref, what: str) -> T:
        try:
            return await blocking(fn)
        except Exception as exc:  # every ARM failure is mapped in one place: farm.verdict
            raise farm.verdict(exc, f"Foundry deployment {ref.deployment!r} of {ref.account.account!r}: "
                                    f"{what}") from exc

    def _resolve(self, ref: farm.Ref, key_auth: bool) -> _Resolved:
        arm = self._reader()
        facts = arm.read_deployment(ref)
        if not facts.ready:
            raise Refused(f"Foundry deployment {ref.deployment!r} is {facts.state}, not ready to serve", down=True)
        if key_auth and not facts.local_auth:
            raise Refused(f"Foundry resource {ref.account.account!r} disables key authentication; set `auth: "
                          "entra` in its connection (the router's identity needs the Cognitive Services User "
                          "role on it)", status=401, down=True)
        return _Resolved(str(facts.inference_url), arm.read_key(ref.account) if key_auth else None)

    def _reader(self) -> farm.Arm:
        with self._arm_lock:
            if self._arm is None:
                self._arm = self._make_arm()
            return self._arm


def _ref(backend: Backend) -> farm.Ref:
    return farm.Ref.of(backend.params, backend.address)

