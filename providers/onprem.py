"""On-prem clusters the company operates: Ray clusters and Kubernetes contexts."""

from __future__ import annotations

from providers.base import Provider


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
        from orchestrator.serving.ray_client import RayClient

        return RayClient()


class Kubernetes(Provider):
    """A Kubernetes context; replicas are provisioned by Pulumi."""

    name = "kubernetes"
    extra = "pulumi"
    sdk_module = "pulumi"
    direct = False
    # The KubeRay component makes the cluster (`sovra preview` shows it), but deploying Serve apps on it and routing
    # there needs its Ray address reachable from where `up` runs: not built yet.
    routable = False

    def describe(self) -> str:
        return "Kubernetes cluster (provisioned with Pulumi)"
