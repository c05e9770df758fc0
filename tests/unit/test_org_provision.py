"""org.yaml `provision:`: each Pulumi component's settings, checked when the file loads (located, with the valid
keys), and handed to the component of the targets they belong to."""

from __future__ import annotations

import pytest

from sovra.orchestrator.catalog import load_org
from sovra.core.errors import SpecError
from sovra.core.spec.org import Org, provision_for

CLUSTER = """apiVersion: sovra/v1
kind: Org
clusters:
  - id: k8s-paris
    provider: kubernetes
    country: FR
    operator: {{name: self, jurisdiction: FR}}
    accelerators: [{{sku: l40s, gpus: 1, gpu_memory_gb: 48, usd_per_hour: 1.0, available: 4}}]
{provision}
accounts:
  - provider: azure-ml
    connection: {{subscription_id: sub, resource_group: rg-ml, workspace: ml-prod}}
    provision: {{workspace: ml-prod, resource_group: rg-ml}}
"""


def _load(tmp_path, provision: str) -> Org:
    path = tmp_path / "org.yaml"
    path.write_text(CLUSTER.format(provision=provision))
    return load_org(path)


def test_settings_reach_the_component_of_their_target(tmp_path):
    from tests.factories import target

    org = _load(tmp_path, "    provision: {image: registry.internal/sovra-ray:0.1, url: 'https://ray.paris'}")
    [cluster] = org.clusters
    assert provision_for(org, cluster) == {"image": "registry.internal/sovra-ray:0.1", "url": "https://ray.paris"}
    azure = target("azure-ml/francecentral", cloud="azure", provider="azure-ml", region="francecentral",
                   country="FR")
    assert provision_for(org, azure) == {"workspace": "ml-prod", "resource_group": "rg-ml"}
    sagemaker = target("aws-sagemaker/eu-west-3", region="eu-west-3", country="FR")
    assert provision_for(org, sagemaker) == {}  # no account: the component's defaults


@pytest.mark.parametrize("provision, expected", [
    ("    provision: {image: x, imag_pull: y}",
     (r"clusters\[0\]\.provision.*unknown imag_pull; valid: api_key_env, context, gpus_per_worker, image, "
      r"namespace, url")),
    ("", r"clusters\[0\]\.provision.*kubernetes needs `provision:` settings image: a Ray image with Sovra installed"),
])
def test_a_kubernetes_cluster_without_an_image_or_with_an_unknown_key_is_located(tmp_path, provision, expected):
    with pytest.raises(SpecError, match=expected) as err:
        _load(tmp_path, provision)
    assert "org.yaml" in str(err.value)


def test_provision_settings_on_a_provider_nothing_provisions_are_refused(tmp_path):
    path = tmp_path / "org.yaml"
    path.write_text("""apiVersion: sovra/v1
kind: Org
clusters:
  - id: lab
    provider: ray
    country: FR
    operator: {name: self, jurisdiction: FR}
    provision: {image: x}
""")
    with pytest.raises(SpecError, match=r"clusters\[0\]\.provision.*apply to targets Sovra provisions with Pulumi"):
        load_org(path)
