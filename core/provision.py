"""Each Pulumi component's own settings (org.yaml `provision:` on an account or a cluster), kept free of Pulumi
imports so that loading org.yaml can check them, and point at the field, without the provider SDKs installed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any

#: Hugging Face's text-generation-inference container, as AWS publishes it per region.
TGI_IMAGE = ("763104351884.dkr.ecr.{region}.amazonaws.com/"
             "huggingface-pytorch-tgi-inference:2.4.0-tgi2.3.1-gpu-py311-cu124-ubuntu22.04")


@dataclass(frozen=True)
class SageMakerSettings:
    """Optional settings: the serving image (`{region}` is filled in), model weights in S3, the role's policy."""

    image: str = TGI_IMAGE
    model_data_url: str | None = None
    policy_arn: str = "arn:aws:iam::aws:policy/AmazonSageMakerFullAccess"


@dataclass(frozen=True)
class AzureMLSettings:
    """The workspace the endpoint lives in, and the model asset (`{model}` is filled in)."""

    resource_group: str = "sovra"
    workspace: str = "sovra"
    model_asset: str = "azureml://registries/azureml/models/{model}/labels/latest"


@dataclass(frozen=True)
class AzureFoundrySettings:
    """The resource and deployment made (default names: `sovra-<deployment>-<region>`), the deployment's type
    (default: the target's scope), its capacity (thousands of tokens per minute, or PTUs for a provisioned type)
    and the model (`{model}` is filled in)."""

    resource_group: str = "sovra"
    account: str | None = None
    deployment: str | None = None
    deployment_type: str | None = None
    capacity: int = 1
    model_format: str = "Mistral AI"
    model_name: str = "{model}"
    model_version: str = "1"
    disable_local_auth: bool = False


@dataclass(frozen=True)
class DatabricksSettings:
    """The workspace (its URL; it is in the target's region) and the Unity Catalog model served (`{model}` is
    filled in). Without `host` the provider reads DATABRICKS_HOST."""

    host: str | None = None
    entity_name: str = "system.ai.{model}"
    entity_version: str = "1"
    workload_type: str = "GPU_LARGE"
    workload_size: str = "Small"


@dataclass(frozen=True)
class SnowflakeSettings:
    """The account URL (its region is the target's), and, for dedicated capacity, where the service lives and
    what it runs."""

    account_url: str = ""
    database: str = "SOVRA"
    schema: str = "SERVING"
    image: str = "/sovra/serving/images/vllm:latest"


@dataclass(frozen=True)
class KubeRaySettings:
    """The cluster's kubeconfig context (default: the target's `address`), the namespace, the Ray image, and how
    the router reaches the Serve service.

    `image` must have Sovra installed (with the engine's extra, e.g. `pip install 'sovra[vllm]'`): the RayService
    runs Sovra's model server from it. `url` is where the router reaches that service; the default is its
    in-cluster DNS name, right when the router runs in the same Kubernetes cluster; otherwise give the URL of
    the Ingress or load balancer in front of `<name>-serve-svc`. The service refuses any call without its key:
    the one in `api_key_env`, else a key derived from the Ray token of the cluster whose router reaches it."""

    image: str = field(metadata={"help": "a Ray image with Sovra installed (e.g. built FROM rayproject/ray-ml:2.60.0-gpu "
                                         "with `pip install 'sovra[vllm]'`): the RayService runs Sovra's model server "
                                         "from it"})
    context: str | None = None
    namespace: str = "sovra"
    gpus_per_worker: int | None = None  # default: what one replica of the plan's accelerator needs
    url: str | None = None
    #: name of the environment variable holding the key the model server requires (a bearer token): read where
    #: `sovra up` runs (stored as a Kubernetes Secret, a Pulumi secret in state) and where the router runs.
    #: Unset: `up` derives the key from the routing cluster's Ray token, and the router derives the same.
    api_key_env: str | None = None


#: provider name -> its Pulumi component's settings (org.yaml `provision:`), checked when org.yaml is loaded; the
#: component itself is named by the provider's adapter (`Provider.component`).
SETTINGS: Mapping[str, type] = MappingProxyType({
    "aws-sagemaker": SageMakerSettings,
    "azure-ml": AzureMLSettings,
    "azure-foundry": AzureFoundrySettings,
    "databricks": DatabricksSettings,
    "snowflake-cortex": SnowflakeSettings,
    "kubernetes": KubeRaySettings,
})


def check(provider: str, raw: Mapping[str, Any]) -> None:
    """Raise ValueError naming the unknown keys and the valid ones, or the required ones missing with what they
    are (a ValueError is what pydantic locates in org.yaml)."""
    cls = SETTINGS.get(provider)
    if cls is None:
        if raw:
            raise ValueError(f"`provision:` settings apply to targets Sovra provisions with Pulumi "
                             f"({', '.join(sorted(SETTINGS))}), not to {provider}")
        return
    _check_fields(cls, provider, raw)


def parse(cls: type, provider: str, raw: Mapping[str, Any]) -> Any:
    """`cls` (a settings dataclass) from `raw`, its keys checked against `cls` itself."""
    _check_fields(cls, provider, raw)
    return cls(**dict(raw))


def _check_fields(cls: type, provider: str, raw: Mapping[str, Any]) -> None:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{provider} provision settings: unknown {', '.join(unknown)}; valid: "
                         f"{', '.join(sorted(known))}")
    missing = [f for f in known.values() if f.default is MISSING and f.default_factory is MISSING
               and f.name not in raw]
    if missing:
        raise ValueError(f"{provider} needs `provision:` settings " + "; ".join(
            f"{f.name}: {f.metadata.get('help', 'required')}" for f in missing))
