"""The router's client for Azure ML endpoints: OpenAI's chat/embeddings wire format over HTTP to the endpoint's
scoring URI, with the endpoint's key as a bearer token.

- The scoring URI and key are read through MLClient (ARM) on first use per endpoint, off the loop, and kept in
  memory only (an endpoint with Entra ID auth, `authMode: AAD`, has no key: an Entra ID token for Azure ML from the
  router's credential goes instead, renewed before it expires); a 401/403 from the endpoint (key rotated, token expired) re-reads them once and resends to the same
  endpoint, which refused without processing.
- A serverless endpoint speaks the Azure AI model inference API (`{uri}/chat/completions`, `{uri}/embeddings`);
  a managed online endpoint forwards its scoring URI to the container's scoring route, which for vLLM / TGI
  containers takes the OpenAI body as is (the same URI for chat and embeddings).
- Health and describe read the endpoint's state from ARM: no payload ever goes to the scoring URI for them.
Verdicts for HTTP answers are HttpClient's; ARM and credential failures are mapped by `ml_arm.verdict`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from sovra.core.backends import Backend
from sovra.core.api_errors import AttemptFailed, Refused
from sovra.providers.azure import ml_arm as arm
from sovra.providers.azure.resolving import ResolvingClient
from sovra.providers.openai_wire import as_chunks, blocking, replay

T = TypeVar("T")
#: operation -> path appended to a serverless endpoint's URI (an online endpoint's scoring URI takes both as is)
SERVERLESS_PATHS = {"chat": "/chat/completions", "embed": "/embeddings"}


@dataclass(frozen=True)
class _Ref:
    """One endpoint, however many backends point at it."""

    workspace: arm.Workspace
    kind: str
    name: str

    @classmethod
    def of(cls, backend: Backend) -> _Ref:
        return cls(arm.Workspace.of(backend.params), backend.params.get("kind", "online"), backend.address)


#: A token is renewed when it has less than this left.
TOKEN_MARGIN_S = 300


@dataclass(frozen=True)
class _Resolved:
    scoring_uri: str
    key: arm.Secret | None  # None: Entra ID
    headers: tuple[tuple[str, str], ...]


class AzureMLClient(ResolvingClient[_Resolved]):
    """HttpClient for Azure ML endpoints; `ml_client(workspace, credential)` builds the MLClient (injectable, as is
    the credential factory), one per workspace, made on first use."""

    gen_ai_system = "az.ai.inference"

    def __init__(self, client: httpx.AsyncClient | None = None, *,
                 ml_client: Callable[[arm.Workspace, Any], Any] = arm.ml_client,
                 credential: Callable[[], Any] = arm.credential):
        super().__init__(client)
        self._make_ml, self._make_credential = ml_client, credential
        self._credential: Any = None
        self._ml: dict[arm.Workspace, Any] = {}
        self._ml_lock = threading.Lock()  # MLClients are made in the pool's threads
        self._token: tuple[arm.Secret, float] | None = None

    # -- what HttpClient asks ------------------------------------------------------------------------------------

    def url(self, backend: Backend, op: str) -> str:
        resolved = self._resolved[_Ref.of(backend)]  # `_ready` ran before every send
        if backend.params.get("kind") == "serverless":
            return resolved.scoring_uri.rstrip("/") + SERVERLESS_PATHS[op]
        return resolved.scoring_uri

    async def headers(self, backend: Backend) -> dict[str, str]:
        resolved = await self._ready(backend)
        out = dict(resolved.headers)
        secret = resolved.key if resolved.key is not None else await self._entra_token()
        out["Authorization"] = f"Bearer {secret.reveal()}"
        if backend.params.get("deployment"):
            out["azureml-model-deployment"] = backend.params["deployment"]
        return out

    def _key(self, backend: Backend) -> _Ref:
        return _Ref.of(backend)

    def _forget_tokens(self) -> None:
        self._token = None

    async def chat_stream(self, backend: Backend, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        if backend.params.get("stream") == "false":  # the endpoint does not stream: one answer, streamed on
            return replay(as_chunks(await self.chat(backend, body)))
        return await super().chat_stream(backend, body)

    async def describe(self, backend: Backend) -> dict[str, Any]:
        """The endpoint's state, location and deployment type as ARM reports them (no key)."""
        try:
            facts = await self._facts(backend)
        except AttemptFailed as exc:
            return {"status": "unknown", "error": str(exc)}
        out = {"status": facts.state, "kind": facts.kind, "location": facts.location,
               "scoring_uri": facts.scoring_uri}
        if facts.sku:
            out["deployment_type"] = facts.sku
        return out

    async def aclose(self) -> None:
        await super().aclose()
        if self._credential is not None:
            await blocking(self._credential.close)

    # -- ARM ------------------------------------------------------------------------------------------------------

    async def _resolve_now(self, backend: Backend) -> _Resolved:
        return await self._arm(self._resolve, _Ref.of(backend), "reading the endpoint and its key")

    async def _facts(self, backend: Backend) -> arm.EndpointFacts:
        ref = _Ref.of(backend)
        return await self._arm(lambda r: arm.read_endpoint(self._ml_for(r.workspace), r.kind, r.name), ref,
                               "reading the endpoint")

    async def _arm(self, fn: Callable[[_Ref], T], ref: _Ref, what: str) -> T:
        try:
            return await blocking(fn, ref)
        except Exception as exc:  # every SDK failure is mapped in one place: arm.verdict
            raise arm.verdict(exc, f"Azure ML {ref.kind} endpoint {ref.name!r}: {what}") from exc

    def _resolve(self, ref: _Ref) -> _Resolved:
        ml = self._ml_for(ref.workspace)
        facts = arm.read_endpoint(ml, ref.kind, ref.name)
        if not facts.ready:
            raise Refused(f"Azure ML {ref.kind} endpoint {ref.name!r} is {facts.state}, not ready to score",
                          down=True)
        key = arm.read_key(ml, ref.kind, ref.name) if facts.auth == "key" else None
        return _Resolved(str(facts.scoring_uri), key, tuple(facts.headers.items()))

    async def _entra_token(self) -> arm.Secret:
        """An Entra ID token for Azure ML endpoints, from the router's credential (the one ARM is read with)."""
        if self._token is None or self._token[1] - time.time() < TOKEN_MARGIN_S:
            def get() -> tuple[arm.Secret, float]:
                with self._ml_lock:
                    if self._credential is None:
                        self._credential = self._make_credential()
                token = self._credential.get_token(arm.ML_SCOPE)
                return arm.Secret(token.token), float(token.expires_on)

            try:
                self._token = await blocking(get)
            except Exception as exc:  # mapped in one place: arm.verdict
                raise arm.verdict(exc, f"getting an Entra ID token for {arm.ML_SCOPE}") from exc
        return self._token[0]

    def _ml_for(self, workspace: arm.Workspace) -> Any:
        with self._ml_lock:
            ml = self._ml.get(workspace)
            if ml is None:
                if self._credential is None:
                    self._credential = self._make_credential()
                ml = self._ml[workspace] = self._make_ml(workspace, self._credential)
            return ml
