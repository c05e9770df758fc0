"""A KubeRay `RayService` on an on-prem Kubernetes cluster (pulumi-kubernetes), pinned to its target."""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from sovra.providers.component import (
    DEPLOYMENT_TAG,
    TARGET_TAG,
    ComponentSettingsError,
    PlacementComponent,
    PlacementInput,
)
from sovra.policies.guard import TARGET_RESOURCE_PREFIX
from sovra.core.provision import KubeRaySettings
from sovra.core.service_keys import KEY_VARIABLE, SERVICE_KEY_ENV

#: What a node of the target offers of its pinning resource; a replica asks for 0.001 (infra.serve_config).
TARGET_RESOURCE_UNITS = 1000


def label_value(value: str) -> str:
    """A Kubernetes label value (63 characters of [A-Za-z0-9._-]); '/' in target ids becomes '.'."""
    return re.sub(r"[^A-Za-z0-9._-]+", ".", value)[:63].strip("._-")


class KubeRayCluster(PlacementComponent):
    """A RayService running Sovra's model server (`infra.serve_config.http_model_app`, the Ray path's app served
    over HTTP) on a GPU worker group that offers `sovra.target/<id>`: the replicas ask for that resource, so they
    run only on this target's nodes. The router reaches the service over HTTP (`url`); `key` is the service's key,
    a Pulumi secret, which every call must carry: the org's (`api_key_env`), else one derived from the routing
    cluster's Ray token (`PlacementInput.service_key`), which the router derives too. Never a service without."""

    type_token = "sovra:kubernetes:KubeRayCluster"
    hosts_ray = True

    def build(self, name: str, inputs: PlacementInput) -> None:
        s = inputs.parse_settings(KubeRaySettings)
        if inputs.app is None:
            raise ComponentSettingsError(f"{inputs.target.id}: no Serve application to run (the program builds it "
                                         "from the deployment)")
        context = s.context or inputs.target.address
        provider = k8s.Provider(f"{name}-k8s", context=context, namespace=s.namespace, opts=self.child())
        labels = {"sovra/deployment": label_value(inputs.deployment), "sovra/target": label_value(inputs.target.id)}
        annotations = {DEPLOYMENT_TAG: inputs.deployment, TARGET_TAG: inputs.target.id}
        actor = inputs.app["deployments"][0]["ray_actor_options"]
        gpus = s.gpus_per_worker if s.gpus_per_worker is not None else max(1, math.ceil(actor.get("num_gpus", 0)))
        gpu = {"nvidia.com/gpu": str(gpus)}
        pin = json.dumps({f"{TARGET_RESOURCE_PREFIX}{inputs.target.id}": TARGET_RESOURCE_UNITS})
        env, key = self._key(name, inputs, s, provider)
        workers = max(inputs.instance_count, 1)
        service_name = inputs.slug()
        spec = {
            "serveConfigV2": json.dumps({"applications": [dict(inputs.app)]}, sort_keys=True),
            "rayClusterConfig": {
                # The head takes no replica (it offers neither GPUs nor the target's resource): it runs Serve's
                # controller and proxy, in the same cluster, so at the same place.
                "headGroupSpec": {"rayStartParams": {"num-gpus": "0"}, "template": {
                    "metadata": {"labels": labels, "annotations": annotations},
                    "spec": {"containers": [{"name": "ray-head", "image": s.image, **env}]}}},
                "workerGroupSpecs": [{
                    "groupName": "gpu", "replicas": workers, "minReplicas": workers, "maxReplicas": workers,
                    "rayStartParams": {"resources": pin},
                    "template": {
                        "metadata": {"labels": labels, "annotations": annotations},
                        "spec": {"containers": [{"name": "ray-worker", "image": s.image, **env,
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
        # KubeRay names the Serve service `<RayService>-serve-svc`; Serve's proxy listens on 8000.
        self.scoring_uri = pulumi.Output.from_input(
            s.url or f"http://{service_name}-serve-svc.{s.namespace}.svc.cluster.local:8000")
        self.key = key
        self.service = service
        self._api_key_env = s.api_key_env or SERVICE_KEY_ENV

    def connection(self) -> dict[str, Any]:
        """The service's URL and the variable the router holds its key in (never the key)."""
        return {"url": self.scoring_uri, "api_key_env": self._api_key_env}

    def _key(self, name: str, inputs: PlacementInput, s: KubeRaySettings, provider: k8s.Provider
             ) -> tuple[dict[str, Any], pulumi.Output]:
        """The service's key, kept in a Kubernetes Secret (a Pulumi secret in state) that every pod reads as
        `SOVRA_SERVE_API_KEY`: with `api_key_env`, from that variable where `sovra up` runs; without, the key
        derived from the routing cluster's Ray token (`inputs.service_key`). Neither: refused, since the model
        server would answer anyone who can reach it (and refuses to start without a key)."""
        if s.api_key_env:
            value = os.environ.get(s.api_key_env)
            if not value:
                raise ComponentSettingsError(
                    f"{inputs.target.id}: `provision: {{api_key_env: {s.api_key_env}}}` names an environment "
                    "variable that is not set here; set it (the same key where the router runs) and re-run")
        elif inputs.service_key:
            value = inputs.service_key
        else:
            raise ComponentSettingsError(
                f"{inputs.target.id}: the KubeRay service needs a key, and none was derived for it (no Ray token "
                "known for the cluster whose router reaches it); name one with `provision: {api_key_env: VAR}` in "
                "org.yaml, set where `sovra up` and the router run")
        key = pulumi.Output.secret(value)
        secret = k8s.core.v1.Secret(
            f"{name}-key", metadata={"name": f"{inputs.slug()}-key", "namespace": s.namespace,
                                     "annotations": {DEPLOYMENT_TAG: inputs.deployment, TARGET_TAG: inputs.target.id}},
            string_data={"key": key}, opts=self.child(provider=provider))
        env = {"env": [{"name": KEY_VARIABLE,
                        "valueFrom": {"secretKeyRef": {"name": secret.metadata.name, "key": "key"}}}]}
        return env, key
