"""The router's client for Sovra's own model server answering over HTTP (`orchestrator.serving.model_http`): on a
KubeRay cluster, and on a Ray whose replicas answer over Serve's HTTP ingress (`infra.serve_config.ServeHttp`)."""

from __future__ import annotations

from typing import Any, ClassVar

from sovra.core.backends import Backend
from sovra.providers.clients import HttpClient


class ModelHttpClient(HttpClient):
    """OpenAI's paths, as the model server answers them; health asks the engine (`/healthz`, no payload), where a
    plain OpenAI server only lists its models. The base URL is the backend's `url` param where it has one (a Ray
    backend's address names its Serve app), else its address (KubeRay's is the URL)."""

    paths: ClassVar[dict[str, str]] = {**HttpClient.paths, "health": "/healthz"}
    behind_ingress: ClassVar[bool] = True  # on a Ray Sovra started, Serve's HAProxy answers in front of it

    def url(self, backend: Backend, op: str) -> str:
        return backend.params.get("url", backend.address) + self.paths[op]

    async def describe(self, backend: Backend) -> dict[str, Any]:
        """For `sovra status`: whether the model server's engine says it can serve."""
        ok = await self.health(backend)
        return {"status": "healthy" if ok else "unhealthy (its /healthz does not answer 200)"}
