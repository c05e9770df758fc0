"""A KubeRay `RayService` on an on-prem Kubernetes cluster (pulumi-kubernetes), pinned to its target."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.pulumi.base import DEPLOYMENT_TAG, TARGET_TAG, PlacementComponent, PlacementInput
from infra.pulumi.guard import TARGET_RESOURCE_PREFIX

#: What a node of the target offers of its pinning resource; a replica asks for 0.001 (infra.serve_config).
TARGET_RESOURCE_UNITS = 1000


@dataclass(frozen=True)
class KubeRaySettings:
    """The cluster's kubeconfig context (the target's `address`), the namespace, and the Ray image."""

    context: str | None = None
    namespace: str = "sovra"
    image: str = "rayproject/ray-ml:2.60.0-gpu"
    gpus_per_worker: int = 1


def label_value(value: str) -> str:
    """A Kubernetes label value (63 characters of [A-Za-z0-9._-]); '/' in target ids becomes '.'."""
    return re.sub(r"[^A-Za-z0-9._-]+", ".", value)[:63].strip("._-")


class KubeRayCluster(PlacementComponent):
    """A RayService whose GPU worker group offers `sovra.target/<id>`, so Serve replicas that ask for it (as
    Sovra's Ray path makes them) run only on this target's nodes. The service is reached inside the cluster,
    so `key` is a secret None."""

    type_token = "sovra:kubernetes:KubeRayCluster"

    def build(self, name: str, inputs: PlacementInput) -> None:
        s = inputs.parse_settings(KubeRaySettings)
        context = s.context or inputs.target.address
        provider = k8s.Provider(f"{name}-k8s", context=context, namespace=s.namespace, opts=self.child())
        labels = {"sovra/deployment": label_value(inputs.deployment), "sovra/target": label_value(inputs.target.id)}
        annotations = {DEPLOYMENT_TAG: inputs.deployment, TARGET_TAG: inputs.target.id}
        gpu = {"nvidia.com/gpu": str(s.gpus_per_worker)}
        pin = json.dumps({f"{TARGET_RESOURCE_PREFIX}{inputs.target.id}": TARGET_RESOURCE_UNITS})
        workers = max(inputs.instance_count, 1)
        service_name = inputs.slug()
        spec = {
            "serveConfigV2": json.dumps({"applications": []}),
            "rayClusterConfig": {
                "headGroupSpec": {"rayStartParams": {"num-gpus": "0"}, "template": {
                    "metadata": {"labels": labels, "annotations": annotations},
                    "spec": {"containers": [{"name": "ray-head", "image": s.image}]}}},
                "workerGroupSpecs": [{
                    "groupName": "gpu", "replicas": workers, "minReplicas": workers, "maxReplicas": workers,
                    "rayStartParams": {"resources": pin},
                    "template": {
                        "metadata": {"labels": labels, "annotations": annotations},
                        "spec": {"containers": [{"name": "ray-worker", "image": s.image,
                                                 "resources": {"requests": gpu, "limits": gpu}}],
                                 **({"nodeSelector": {"node.kubernetes.io/instance-type": inputs.instance_type}}
                                    if inputs.instance_type else {})}}}],
            },
        }
        service = k8s.apiextensions.CustomResource(
            f"{name}-rayservice", api_version="ray.io/v1", kind="RayService",
            metadata={"name": service_name, "namespace": s.namespace, "labels": labels,
                      "annotations": annotations},
            spec=spec, opts=self.child(provider=provider))
        self.endpoint_name = pulumi.Output.from_input(service_name)
        self.scoring_uri = pulumi.Output.from_input(
            f"http://{service_name}-serve-svc.{s.namespace}.svc.cluster.local:8000")
        self.key = pulumi.Output.secret(None)
        self.service = service
