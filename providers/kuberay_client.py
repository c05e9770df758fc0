"""The router's client for Sovra's own model server on a KubeRay cluster (`orchestrator.serving.model_http`)."""

from __future__ import annotations

from typing import Any, ClassVar

from orchestrator.router.backends import Backend
from orchestrator.router.clients import HttpClient


class KubeRayClient(HttpClient):
    """OpenAI's paths, as the model server answers them; health asks the engine (`/healthz`, no payload), where a
    plain OpenAI server only lists its models."""

    paths: ClassVar[dict[str, str]] = {**HttpClient.paths, "health": "/healthz"}

    async def describe(self, backend: Backend) -> dict[str, Any]:
        """For `sovra status`: whether the model server's engine says it can serve."""
        ok = await self.health(backend)
        return {"status": "healthy" if ok else "unhealthy (its /healthz does not answer 200)"}
