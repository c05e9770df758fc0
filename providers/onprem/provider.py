"""On-prem clusters the company operates: Ray clusters and Kubernetes contexts."""

from __future__ import annotations

from pydantic import Field

from sovra.core.errors import ProviderError
from sovra.providers.base import Connection, Locator, Provider


class Ray(Provider):
    """A Ray cluster; replicas become Ray Serve deployments. No address means a local Ray on this machine."""

    name = "ray"
    extra = "ray"
    sdk_module = "ray"
    provisioner = "ray-serve"
    direct = False

    def describe(self) -> str:
        return "Ray cluster (on-prem or this machine), replicas served by Ray Serve"

    def client(self):
        from sovra.providers.onprem.ray_client import RayClient

        return RayClient()


class KubeRayConnection(Connection):
    url: str = Field(pattern=r"^https?://", description="Where the router reaches the RayService's Serve service "
                     "(the stack exports it; org.yaml `provision: {url: ...}` sets it).")
    api_key_env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding the service's key where the router runs (org.yaml "
                    "`provision: {api_key_env: ...}`, else SOVRA_KUBERAY_KEY, which the router derives from its "
                    "cluster's Ray token); the key itself is never in the routing table.")


class Kubernetes(Provider):
    """A Kubernetes context; Pulumi provisions a KubeRay RayService there running Sovra's model server, pinned to the
    target's worker group, and the router reaches it over HTTP (the stack exports its URL)."""

    name = "kubernetes"
    component = "sovra.providers.onprem.component:KubeRayCluster"
    extra = "pulumi"
    sdk_module = "pulumi"
    connection_model = KubeRayConnection
    # Reached at a URL that is usually inside the Kubernetes cluster, with a key only the router holds: only the
    # router calls it, never an app directly.
    direct = False
    derives_service_key = True  # its model server always requires a key (orchestrator.provisioning.service_keys)

    def describe(self) -> str:
        return "Kubernetes cluster (a KubeRay RayService provisioned with Pulumi, reached over HTTP)"

    def client(self):
        from sovra.providers.onprem.model_http_client import ModelHttpClient

        return ModelHttpClient()

    def locate(self, target, model, connection) -> Locator:
        if not isinstance(connection, KubeRayConnection):
            raise ProviderError(f"{target.id}: a KubeRay backend needs `connection: {{url: ...}}` (its stack exports "
                                "it)")
        return Locator(connection.url.rstrip("/"),
                       {"api_key_env": connection.api_key_env} if connection.api_key_env else {})
