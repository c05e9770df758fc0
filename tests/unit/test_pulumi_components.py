"""Sovra's Pulumi components under Pulumi's own mocks (no CLI, no cloud): the resources each makes, their key
properties, region equal to the target's, tags naming deployment and target, secret keys, and the residency
guard refusing a tampered region before anything reaches the engine."""

from __future__ import annotations

import asyncio
import json
import re

# The `pulumi` extra: scripts/test installs it, so its absence fails rather than skips.
import pulumi
import pulumi_aws as aws
import pulumi_azure_native  # noqa: F401
import pulumi_databricks  # noqa: F401
import pulumi_kubernetes as k8s
import pulumi_snowflake  # noqa: F401
import pytest

from sovra.providers.component import DEPLOYMENT_TAG, TARGET_TAG, ComponentSettingsError, PlacementInput
from sovra.policies.guard import ResidencyGuardError
from sovra.core.spec import Residency
from sovra.policies.plan import DeploymentPlan, Placement
from tests.factories import deployment, target

EU = Residency(zones=("EU",))
SUBSCRIPTION = "00000000-1111-2222-3333-444444444444"
SAGEMAKER = target("aws-sagemaker/eu-west-3", region="eu-west-3", country="FR")
AZURE = target("azure-ml/francecentral", cloud="azure", provider="azure-ml", region="francecentral", country="FR")
DATABRICKS = target("databricks/aws-eu-central-1", provider="databricks", region="eu-central-1", country="DE",
                    models={"m": 0.001})
SNOWFLAKE = target("snowflake-cortex/aws-eu-central-1", provider="snowflake-cortex", region="eu-central-1",
                   country="DE", models={"m": 0.001})
ONPREM = target("onprem/paris", cloud="onprem", provider="kubernetes", region="paris", country="FR")
SCORING = "https://sovra-d.francecentral.inference.ml.azure.com/score"
FOUNDRY = target("azure-foundry/datazone-eu", cloud="azure", provider="azure-foundry", region="swedencentral",
                 country=None, zone="EU", models={"m": 0.0033}).model_copy(update={"scope": "DataZoneStandard"})


class Recorder(pulumi.runtime.Mocks):
    """Answers like the engine would (inputs become state, plus the outputs a cloud computes) and records
    every resource registered and every function called."""

    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.calls: list[pulumi.runtime.MockCallArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append(args)
        state = dict(args.inputs)
        if args.typ.startswith("aws:"):
            state.setdefault("name", args.name)
            state["arn"] = f"arn:aws:iam::123456789012:{args.typ.split(':')[-1].lower()}/{state['name']}"
        if args.typ == "azure-native:machinelearningservices:OnlineEndpoint":
            state["name"] = args.inputs["endpointName"]
            state["properties"] = {**args.inputs["properties"], "scoringUri": SCORING}
            return (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{args.inputs['resourceGroupName']}/providers/"
                    f"Microsoft.MachineLearningServices/workspaces/{args.inputs['workspaceName']}/onlineEndpoints/"
                    f"{state['name']}"), state
        if args.typ == "azure-native:cognitiveservices:Account":
            state["name"] = args.inputs["accountName"]
            host = f"https://{state['name']}.services.ai.azure.com/"
            state["properties"] = {**args.inputs["properties"], "endpoints": {"Azure AI Model Inference API": host}}
            return (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{args.inputs['resourceGroupName']}/providers/"
                    f"Microsoft.CognitiveServices/accounts/{state['name']}"), state
        if args.typ == "azure-native:cognitiveservices:Deployment":
            state["name"] = args.inputs["deploymentName"]
        if args.typ == "databricks:index/modelServing:ModelServing":
            state["endpointUrl"] = f"https://dbc.example.com/serving-endpoints/{args.inputs['name']}/invocations"
        if args.typ == "snowflake:index/service:Service":
            state["fullyQualifiedName"] = f'"SOVRA"."SERVING"."{args.inputs["name"]}"'
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.calls.append(args)
        if args.token == "azure-native:machinelearningservices:listOnlineEndpointKeys":
            return {"primaryKey": "primary-secret", "secondaryKey": "secondary-secret"}
        if args.token == "azure-native:cognitiveservices:listAccountKeys":
            return {"key1": "foundry-key1", "key2": "foundry-key2"}
        return {}

    def of_type(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str) -> pulumi.runtime.MockResourceArgs:
        found = self.of_type(typ)
        assert len(found) == 1, f"{typ}: {[r.name for r in self.resources]}"
        return found[0]


@pytest.fixture
def mocks():
    """Fresh mocks, a fresh root stack and a fresh event loop per test: stack transformations and resources never
    leak across tests, and a test elsewhere that closed or unset the loop (asyncio.run does) does not matter."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    recorder = Recorder()
    pulumi.runtime.settings.reset_options(project="sovra", stack="test")
    pulumi.runtime.set_mocks(recorder, project="sovra", stack="test", preview=False)
    yield recorder
    pulumi.runtime.settings.reset_options()
    asyncio.set_event_loop(None)
    loop.close()


def resolve(**outputs) -> dict:
    """The values of `outputs`, with `<name>_secret` saying whether each is a Pulumi secret."""
    seen: dict = {}

    @pulumi.runtime.test
    def run():
        names = list(outputs)
        values = [outputs[n] for n in names]
        secrets = [pulumi.Output.from_input(o).is_secret() for o in values]
        return pulumi.Output.all(*values, *secrets).apply(
            lambda v: seen.update({**dict(zip(names, v[:len(names)])),
                                   **{f"{n}_secret": s for n, s in zip(names, v[len(names):])}}))

    run()
    return seen


def declare(make) -> None:
    """Run `make` as a program under the mocks, so its registrations finish even when it raises."""
    pulumi.runtime.test(make)()


def placed(t, count=2, instance="ml.g5.12xlarge", **settings) -> PlacementInput:
    return PlacementInput(deployment="d", target=t, residency=EU, model="m", instance_type=instance,
                          instance_count=count, settings=settings)


def assert_tagged(resource, t) -> None:
    tags = resource.inputs["tags"]
    if isinstance(tags, list):  # Databricks: [{key, value}]
        tags = {x["key"]: x["value"] for x in tags}
    assert tags[DEPLOYMENT_TAG] == "d" and tags[TARGET_TAG] == t.id, (resource.typ, tags)


# --- SageMaker ---------------------------------------------------------------------------------------------


def test_sagemaker_endpoint_resources_region_tags_and_outputs(mocks):
    from sovra.providers.aws.component import SageMakerEndpoint

    c = SageMakerEndpoint("sm", placed(SAGEMAKER))
    out = resolve(name=c.endpoint_name, uri=c.scoring_uri, key=c.key)

    provider = mocks.one("pulumi:providers:aws")
    assert provider.inputs["region"] == "eu-west-3"
    role = mocks.one("aws:iam/role:Role")
    trust = json.loads(role.inputs["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    attach = mocks.one("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    assert attach.inputs["policyArn"].endswith("AmazonSageMakerFullAccess") and attach.inputs["role"] == "sm-role"
    model = mocks.one("aws:sagemaker/model:Model")
    assert model.inputs["executionRoleArn"].endswith("/sm-role")
    assert model.inputs["primaryContainer"]["environment"]["HF_MODEL_ID"] == "m"
    assert ".eu-west-3." in model.inputs["primaryContainer"]["image"]
    config = mocks.one("aws:sagemaker/endpointConfiguration:EndpointConfiguration")
    variant = config.inputs["productionVariants"][0]
    assert variant["instanceType"] == "ml.g5.12xlarge" and variant["initialInstanceCount"] == 2
    assert variant["modelName"] == model.inputs["name"]
    endpoint = mocks.one("aws:sagemaker/endpoint:Endpoint")
    assert endpoint.inputs["endpointConfigName"] == config.inputs["name"]
    # Every AWS resource goes through the explicit provider in the target's region.
    for r in mocks.resources:
        if r.typ.startswith("aws:"):
            assert r.provider and "::sm-aws::" in r.provider, (r.typ, r.provider)
    for r in (role, model, config, endpoint):
        assert_tagged(r, SAGEMAKER)

    assert out["name"] == endpoint.inputs["name"] == "sovra-d-eu-west-3"
    assert out["uri"] == ("https://runtime.sagemaker.eu-west-3.amazonaws.com/endpoints/sovra-d-eu-west-3/"
                          "invocations")
    assert out["key_secret"] is True and out["key"] is None


def test_sagemaker_with_a_tampered_provider_region_is_refused_before_any_cloud_resource(mocks):
    from sovra.providers.aws.component import SageMakerEndpoint

    class Edited(SageMakerEndpoint):
        @property
        def region(self) -> str:
            return "us-east-1"

    with pytest.raises(ResidencyGuardError) as err:
        declare(lambda: Edited("sm", placed(SAGEMAKER)))
    message = str(err.value)
    assert "pulumi:providers:aws 'sm-aws'" in message and "us-east-1" in message
    assert "placed on aws-sagemaker/eu-west-3 in eu-west-3" in message and "zones [EU]" in message
    assert not [r for r in mocks.resources if r.typ.startswith(("aws:", "pulumi:providers:"))]


def test_a_resource_added_inside_a_component_with_its_own_region_is_refused(mocks):
    from sovra.providers.aws.component import SageMakerEndpoint

    class Edited(SageMakerEndpoint):
        def build(self, name, inputs):
            super().build(name, inputs)
            # pulumi-aws 7: a resource's own `region` overrides its provider's.
            aws.sagemaker.Model(f"{name}-extra", execution_role_arn="arn", region="us-east-1",
                                opts=self.child(provider=self.get_provider("aws:sagemaker")))

    with pytest.raises(ResidencyGuardError, match=r"aws:sagemaker/model:Model 'sm-extra': would land in us-east-1"):
        declare(lambda: Edited("sm", placed(SAGEMAKER)))


def test_an_aws_resource_without_the_placement_provider_is_refused(mocks):
    from sovra.providers.aws.component import SageMakerEndpoint

    class Edited(SageMakerEndpoint):
        def build(self, name, inputs):
            super().build(name, inputs)
            aws.sagemaker.Model(f"{name}-stray", execution_role_arn="arn", opts=self.child())

    with pytest.raises(ResidencyGuardError, match="no explicit AWS provider"):
        declare(lambda: Edited("sm", placed(SAGEMAKER)))


def test_unknown_settings_name_the_valid_ones(mocks):
    from sovra.providers.aws.component import SageMakerEndpoint

    with pytest.raises(ComponentSettingsError, match="unknown imag.*valid: image, model_data_url, policy_arn"):
        declare(lambda: SageMakerEndpoint("sm", placed(SAGEMAKER, imag="x")))


# --- Azure ML ----------------------------------------------------------------------------------------------


def test_azure_ml_endpoint_and_deployment_in_the_target_location_with_a_secret_key(mocks):
    from sovra.providers.azure.component_ml import AzureMLOnlineEndpoint

    c = AzureMLOnlineEndpoint("az", placed(AZURE, 3, "Standard_NC40ads_H100_v5", workspace="ws", resource_group="rg"))
    out = resolve(name=c.endpoint_name, uri=c.scoring_uri, key=c.key)

    endpoint = mocks.one("azure-native:machinelearningservices:OnlineEndpoint")
    deployment_ = mocks.one("azure-native:machinelearningservices:OnlineDeployment")
    for r in (endpoint, deployment_):
        assert r.inputs["location"] == "francecentral"
        assert r.inputs["workspaceName"] == "ws" and r.inputs["resourceGroupName"] == "rg"
        assert_tagged(r, AZURE)
    assert endpoint.inputs["properties"]["authMode"] == "Key"
    assert endpoint.inputs["properties"]["traffic"] == {"primary": 100}
    props = deployment_.inputs["properties"]
    assert props["endpointComputeType"] == "Managed" and props["instanceType"] == "Standard_NC40ads_H100_v5"
    assert props["model"] == "azureml://registries/azureml/models/m/labels/latest"
    assert deployment_.inputs["sku"]["capacity"] == 3
    assert deployment_.inputs["endpointName"] == endpoint.inputs["endpointName"]
    [call] = [c for c in mocks.calls if c.token.endswith("listOnlineEndpointKeys")]
    assert call.args["endpointName"] == endpoint.inputs["endpointName"]

    assert out["name"] == "sovra-d-francecentral" and out["uri"] == SCORING
    assert out["key"] == "primary-secret" and out["key_secret"] is True
    assert out["name_secret"] is False


def test_azure_ml_with_a_tampered_location_is_refused(mocks):
    from sovra.providers.azure.component_ml import AzureMLOnlineEndpoint

    class Edited(AzureMLOnlineEndpoint):
        @property
        def location(self) -> str:
            return "eastus"

    with pytest.raises(ResidencyGuardError) as err:
        declare(lambda: Edited("az", placed(AZURE)))
    message = str(err.value)
    assert "azure-native:machinelearningservices:OnlineEndpoint 'az-endpoint': would land in eastus" in message
    assert "azure-ml/francecentral in francecentral" in message
    assert not mocks.of_type("azure-native:machinelearningservices:OnlineEndpoint")


# --- Azure AI Foundry --------------------------------------------------------------------------------------


def test_foundry_resource_in_the_target_region_and_a_deployment_of_the_targets_type_with_a_secret_key(mocks):
    from sovra.providers.azure.component_foundry import AzureFoundryDeployment

    c = AzureFoundryDeployment("af", placed(FOUNDRY, resource_group="rg", capacity=50))
    out = resolve(name=c.endpoint_name, uri=c.scoring_uri, key=c.key, where=c.connection())

    account, dep = mocks.one("azure-native:cognitiveservices:Account"), mocks.one(
        "azure-native:cognitiveservices:Deployment")
    assert (account.inputs["location"], account.inputs["kind"]) == ("swedencentral", "AIServices")
    assert dep.inputs["sku"] == {"name": "DataZoneStandard", "capacity": 50}
    assert dep.inputs["properties"]["model"] == {"format": "Mistral AI", "name": "m", "version": "1"}
    assert dep.inputs["accountName"] == account.inputs["accountName"] == "sovra-d-swedencentral"
    for r in (account, dep):
        assert r.inputs["resourceGroupName"] == "rg"
        assert_tagged(r, FOUNDRY)
    assert out["uri"] == "https://sovra-d-swedencentral.services.ai.azure.com/"
    assert out["key"] == "foundry-key1" and out["key_secret"] is True
    assert out["where"]["deployment_type"] == "DataZoneStandard" and out["where"]["subscription_id"] == SUBSCRIPTION


@pytest.mark.parametrize("wider", ["GlobalStandard", "DeveloperTier", "GlobalProvisionedManaged"])
def test_a_foundry_deployment_type_wider_than_the_target_is_refused_before_anything_is_declared(mocks, wider):
    from sovra.providers.azure.component_foundry import AzureFoundryDeployment

    with pytest.raises(ResidencyGuardError, match=f"{wider}.*would process in GLOBAL, outside the target's EU"):
        declare(lambda: AzureFoundryDeployment("af", placed(FOUNDRY, deployment_type=wider)))
    assert not mocks.resources or all(not r.typ.startswith("azure-native:") for r in mocks.resources)


def test_a_foundry_resource_with_a_tampered_location_is_refused(mocks):
    from sovra.providers.azure.component_foundry import AzureFoundryDeployment

    us = FOUNDRY.model_copy(update={"region": "eastus2"})  # a US resource for an EU data-zone target
    with pytest.raises(ResidencyGuardError, match="EU"):
        declare(lambda: AzureFoundryDeployment("af", placed(us)))
    assert not mocks.of_type("azure-native:cognitiveservices:Deployment")


# --- Databricks, Snowflake ---------------------------------------------------------------------------------


def test_databricks_serving_endpoint(mocks):
    from sovra.providers.databricks.component import DatabricksServingEndpoint

    c = DatabricksServingEndpoint("db", placed(DATABRICKS, 0, None, host="https://dbc.example.com"))
    out = resolve(name=c.endpoint_name, uri=c.scoring_uri, key=c.key)

    assert mocks.one("pulumi:providers:databricks").inputs["host"] == "https://dbc.example.com"
    serving = mocks.one("databricks:index/modelServing:ModelServing")
    entity = serving.inputs["config"]["servedEntities"][0]
    assert entity["entityName"] == "system.ai.m" and entity["scaleToZeroEnabled"] is True
    assert serving.provider and "::db-databricks::" in serving.provider
    assert_tagged(serving, DATABRICKS)
    assert out["uri"].endswith("/serving-endpoints/sovra-d-eu-central-1/invocations")
    assert out["key_secret"] is True


def test_snowflake_cortex_access_role_and_grant_only(mocks):
    from sovra.providers.snowflake.component import CORTEX_USER, SnowflakeCortexAccess

    c = SnowflakeCortexAccess("sf", placed(SNOWFLAKE, 0, None, account_url="https://acme.snowflakecomputing.com"))
    out = resolve(name=c.endpoint_name, uri=c.scoring_uri, key=c.key)

    role = mocks.one("snowflake:index/accountRole:AccountRole")
    grant = mocks.one("snowflake:index/grantDatabaseRole:GrantDatabaseRole")
    assert grant.inputs["databaseRoleName"] == CORTEX_USER and grant.inputs["parentRoleName"] == role.inputs["name"]
    assert f"{DEPLOYMENT_TAG}=d" in role.inputs["comment"] and f"{TARGET_TAG}={SNOWFLAKE.id}" in role.inputs["comment"]
    assert not mocks.of_type("snowflake:index/computePool:ComputePool")
    assert not mocks.of_type("snowflake:index/service:Service")
    assert out["name"] == role.inputs["name"] == "SOVRA_D_EU_CENTRAL_1"
    assert out["uri"] == "https://acme.snowflakecomputing.com/api/v2/cortex/inference:complete"
    assert out["key_secret"] is True


def test_snowflake_dedicated_capacity_adds_a_compute_pool_and_service(mocks):
    from sovra.providers.snowflake.component import SnowflakeCortexAccess

    c = SnowflakeCortexAccess("sf", placed(SNOWFLAKE, 2, "GPU_NV_M"))
    out = resolve(name=c.endpoint_name)

    pool = mocks.one("snowflake:index/computePool:ComputePool")
    assert pool.inputs["instanceFamily"] == "GPU_NV_M" and pool.inputs["minNodes"] == pool.inputs["maxNodes"] == 2
    service = mocks.one("snowflake:index/service:Service")
    assert service.inputs["computePool"] == pool.inputs["name"]
    spec = json.loads(service.inputs["fromSpecification"]["text"])
    assert spec["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    for r in (pool, service):
        assert f"{TARGET_TAG}={SNOWFLAKE.id}" in r.inputs["comment"]
    assert out["name"] == '"SOVRA"."SERVING"."SOVRA_D_EU_CENTRAL_1_SERVICE"'


@pytest.mark.parametrize("component, t", [("databricks:DatabricksServingEndpoint", DATABRICKS),
                                          ("snowflake:SnowflakeCortexAccess", SNOWFLAKE)])
def test_a_target_outside_the_residency_is_refused_before_any_resource(mocks, component, t):
    import importlib

    module, cls = component.split(":")
    us = t.model_copy(update={"id": t.id.replace("eu-central-1", "us-east-1"), "region": "us-east-1",
                              "country": "US", "zone": "US"})
    with pytest.raises(ResidencyGuardError, match=r"residency: zone US is not in \[EU\]"):
        declare(lambda: getattr(importlib.import_module(f"sovra.providers.{module}.component"), cls)("x", placed(us, 0, None)))
    assert not mocks.resources


# --- KubeRay -----------------------------------------------------------------------------------------------


IMAGE = "registry.paris.internal/sovra-ray:0.1"
#: What `orchestrator.provisioning.service_keys` derives from the routing cluster's Ray token.
DERIVED = "derived-service-key-7f3a"


def kuberay_input(t, count=3, instance="h100", service_key: str | None = DERIVED, **settings) -> PlacementInput:
    """The placement as the program builds it, the Serve application (and the derived key) included."""
    from sovra.infra.pulumi.program import placement_inputs

    d = deployment("d", model="m", residency={"zones": ["EU"]})
    [i] = placement_inputs(_plan_of(t, count, instance).placements, d, [t], {t.id: {"image": IMAGE, **settings}},
                           {t.id: service_key} if service_key else None)
    return i


def _plan_of(t, count, instance) -> DeploymentPlan:
    return DeploymentPlan(deployment="d", feasible=True, rejected=(), placements=(
        Placement(target=t.id, provider=t.provider, zone=t.zone, country=t.country, replicas=count,
                  accelerator=instance, compute_usd=1.0, credits_usd=0.0, egress_usd=0.0),))


def test_kuberay_service_pins_gpu_workers_and_the_model_server_to_the_target(mocks):
    from sovra.providers.onprem.component import KubeRayCluster
    from sovra.infra.serve_config import MODEL_HTTP_IMPORT

    t = ONPREM.model_copy(update={"address": "paris-gpu"})
    c = KubeRayCluster("kr", kuberay_input(t))
    out = resolve(name=c.endpoint_name, uri=c.scoring_uri, key=c.key, conn=pulumi.Output.from_input(c.connection()))

    assert mocks.one("pulumi:providers:kubernetes").inputs["context"] == "paris-gpu"
    rs = mocks.one("kubernetes:ray.io/v1:RayService")
    assert rs.inputs["apiVersion"] == "ray.io/v1" and rs.inputs["kind"] == "RayService"
    assert rs.inputs["metadata"]["annotations"] == {DEPLOYMENT_TAG: "d", TARGET_TAG: "onprem/paris"}
    assert rs.inputs["metadata"]["labels"] == {"sovra/deployment": "d", "sovra/target": "onprem.paris"}
    [group] = rs.inputs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert json.loads(group["rayStartParams"]["resources"]) == {"sovra.target/onprem/paris": 1000}
    assert group["replicas"] == 3
    container = group["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE and container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    # The cluster runs Sovra's model server, answering over HTTP at /, each replica asking for the target's resource
    [app] = json.loads(rs.inputs["spec"]["serveConfigV2"])["applications"]
    assert app["import_path"] == MODEL_HTTP_IMPORT and app["route_prefix"] == "/"
    assert app["args"]["model"] == "m" and app["args"]["target"] == "onprem/paris"
    [dep] = app["deployments"]
    assert dep["ray_actor_options"]["resources"] == {"sovra.target/onprem/paris": 0.001}
    assert dep["autoscaling_config"]["min_replicas"] == 3
    assert out["uri"] == "http://sovra-d-paris-serve-svc.sovra.svc.cluster.local:8000" and out["key_secret"] is True
    assert out["conn"] == {"url": out["uri"], "api_key_env": "SOVRA_KUBERAY_KEY"} and not out["conn_secret"]


def test_kuberay_url_setting_is_where_the_router_reaches_the_service(mocks):
    from sovra.providers.onprem.component import KubeRayCluster

    c = KubeRayCluster("kr", kuberay_input(ONPREM, url="https://ray-paris.example.internal"))
    assert resolve(conn=pulumi.Output.from_input(c.connection()))["conn"] == {
        "url": "https://ray-paris.example.internal", "api_key_env": "SOVRA_KUBERAY_KEY"}


def test_kuberay_key_is_a_kubernetes_secret_every_pod_reads_and_a_pulumi_secret(mocks, monkeypatch):
    from sovra.providers.onprem.component import KubeRayCluster

    monkeypatch.setenv("PARIS_KEY", "k-paris-123")
    c = KubeRayCluster("kr", kuberay_input(ONPREM, api_key_env="PARIS_KEY"))
    out = resolve(key=c.key, conn=pulumi.Output.from_input(c.connection()))
    assert out["key"] == "k-paris-123" and out["key_secret"] is True
    assert out["conn"]["api_key_env"] == "PARIS_KEY" and "k-paris-123" not in json.dumps(out["conn"])
    secret = mocks.one("kubernetes:core/v1:Secret")
    assert secret.inputs["metadata"]["namespace"] == "sovra"
    rs = mocks.one("kubernetes:ray.io/v1:RayService")
    cluster = rs.inputs["spec"]["rayClusterConfig"]
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0],
                  cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]]
    for container in containers:
        [env] = container["env"]
        assert env["name"] == "SOVRA_SERVE_API_KEY" and env["valueFrom"]["secretKeyRef"]["key"] == "key"
    assert "k-paris-123" not in json.dumps(rs.inputs, default=str)


def test_kuberay_without_api_key_env_keeps_the_derived_key_in_a_secret_every_pod_reads(mocks):
    """No `api_key_env` in the org: the service still requires a key, the one derived from the routing cluster's
    Ray token, kept in a Kubernetes Secret as a Pulumi secret; the stack output names only the variable the router
    derives it into, and the key is nowhere in clear (connection, RayService, repr)."""
    from sovra.providers.onprem.component import KubeRayCluster

    i = kuberay_input(ONPREM)
    assert DERIVED not in repr(i)
    c = KubeRayCluster("kr", i)
    out = resolve(key=c.key, conn=pulumi.Output.from_input(c.connection()))
    assert out["key"] == DERIVED and out["key_secret"] is True
    assert out["conn"]["api_key_env"] == "SOVRA_KUBERAY_KEY" and DERIVED not in json.dumps(out["conn"])
    secret = mocks.one("kubernetes:core/v1:Secret")
    assert secret.inputs["metadata"]["annotations"] == {DEPLOYMENT_TAG: "d", TARGET_TAG: "onprem/paris"}
    # What the engine receives, and keeps encrypted in state: the key wrapped as a Pulumi secret
    from pulumi.runtime import rpc

    assert secret.inputs["stringData"] == {rpc._special_sig_key: rpc._special_secret_sig, "value": {"key": DERIVED}}
    rs = mocks.one("kubernetes:ray.io/v1:RayService")
    cluster = rs.inputs["spec"]["rayClusterConfig"]
    for container in (cluster["headGroupSpec"]["template"]["spec"]["containers"][0],
                      cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]):
        [env] = container["env"]
        assert env["name"] == "SOVRA_SERVE_API_KEY" and env["valueFrom"]["secretKeyRef"]["key"] == "key"
    assert DERIVED not in json.dumps(rs.inputs, default=str)


def test_kuberay_with_no_key_at_all_is_refused_before_any_resource(mocks):
    """Neither `api_key_env` nor a derived key: refused, rather than a service that answers anyone who can reach
    it (its model server would refuse to start anyway)."""
    from sovra.providers.onprem.component import KubeRayCluster

    with pytest.raises(ComponentSettingsError, match=r"onprem/paris: the KubeRay service needs a key.*api_key_env"):
        declare(lambda: KubeRayCluster("kr", kuberay_input(ONPREM, service_key=None)))
    assert not [r for r in mocks.resources if r.typ.startswith("kubernetes:")]


def test_kuberay_key_variable_unset_where_up_runs_is_refused_before_any_resource(mocks, monkeypatch):
    from sovra.providers.onprem.component import KubeRayCluster

    monkeypatch.delenv("PARIS_KEY", raising=False)
    with pytest.raises(ComponentSettingsError, match="PARIS_KEY.*not set here"):
        declare(lambda: KubeRayCluster("kr", kuberay_input(ONPREM, api_key_env="PARIS_KEY")))
    assert not [r for r in mocks.resources if r.typ.startswith("kubernetes:")]


def test_kuberay_without_an_image_says_what_the_image_must_hold(mocks):
    from sovra.providers.onprem.component import KubeRayCluster

    bare = PlacementInput(deployment="d", target=ONPREM, residency=EU, model="m", instance_count=1,
                          app=kuberay_input(ONPREM).app)
    with pytest.raises(ComponentSettingsError, match=r"onprem/paris: kubernetes needs `provision:` settings image: "
                                                     r"a Ray image with Sovra installed"):
        declare(lambda: KubeRayCluster("kr", bare))
    assert not [r for r in mocks.resources if r.typ.startswith("kubernetes:")]


def test_kuberay_service_pinned_elsewhere_is_refused(mocks):
    from sovra.providers.onprem.component import KubeRayCluster

    class Edited(KubeRayCluster):
        def build(self, name, inputs):
            super().build(name, inputs)
            spec = {"rayClusterConfig": {"workerGroupSpecs": [
                {"rayStartParams": {"resources": json.dumps({"sovra.target/onprem/berlin": 1000})}}]}}
            k8s.apiextensions.CustomResource(f"{name}-more", api_version="ray.io/v1", kind="RayService",
                                             spec=spec, opts=self.child())

    with pytest.raises(ResidencyGuardError, match=r"pinned to 'onprem/berlin', not to \[onprem/paris\]"):
        declare(lambda: Edited("kr", kuberay_input(ONPREM)))


@pytest.mark.parametrize("resources, stray", [({"sovra.target/onprem/berlin": 0.001}, "'onprem/berlin'"),
                                              ({}, "no target (unpinned)")])
def test_kuberay_serve_app_pinned_elsewhere_or_unpinned_is_refused(mocks, resources, stray):
    """Tampering with the Serve config, not the worker groups: replicas asking for another target's nodes (or for
    none, so Ray may place them on any node) are refused before anything reaches the engine."""
    from sovra.providers.onprem.component import KubeRayCluster

    i = kuberay_input(ONPREM)
    app = json.loads(json.dumps(i.app))
    app["deployments"][0]["ray_actor_options"]["resources"] = resources
    tampered = PlacementInput(**{**i.__dict__, "app": app})
    with pytest.raises(ResidencyGuardError, match=rf"Serve deployment is pinned to {re.escape(stray)}"):
        declare(lambda: KubeRayCluster("kr", tampered))
    assert not [r for r in mocks.resources if r.typ == "kubernetes:ray.io/v1:RayService"]


# --- the program builder -----------------------------------------------------------------------------------


def _plan(*targets_) -> DeploymentPlan:
    return DeploymentPlan(deployment="d", feasible=True, rejected=(), placements=tuple(
        Placement(target=t.id, provider=t.provider, zone=t.zone, country=t.country, replicas=1,
                  accelerator=t.accelerators[0].sku if t.accelerators else None, compute_usd=1.0,
                  credits_usd=0.0, egress_usd=0.0) for t in targets_))


def test_program_builds_one_guarded_component_per_placement_and_exports_outputs(mocks):
    from sovra.infra.pulumi.program import program

    d = deployment("d", residency={"zones": ["EU"]})
    bedrock = target("aws-bedrock/eu", region="eu-central-1", country=None, zone="EU", models={"m": 0.001})
    run = program(_plan(SAGEMAKER, AZURE, bedrock).placements, d, [SAGEMAKER, AZURE, bedrock])

    @pulumi.runtime.test
    def go():
        run()

    go()
    kinds = {r.typ for r in mocks.resources}
    assert {"sovra:aws:SageMakerEndpoint", "sovra:azure:AzureMLOnlineEndpoint"} <= kinds
    assert not [r for r in mocks.resources if "bedrock" in r.typ]  # managed per token: nothing to create
    assert mocks.one("sovra:aws:SageMakerEndpoint").name == "d.aws-sagemaker/eu-west-3"


def test_a_hand_edited_program_with_a_resource_in_another_region_fails(mocks):
    from sovra.infra.pulumi.program import program

    d = deployment("d", residency={"zones": ["EU"]})
    run = program(_plan(SAGEMAKER, AZURE).placements, d, [SAGEMAKER, AZURE])

    def edited() -> None:
        run()
        aws.Provider("rogue", region="us-east-1")

    @pulumi.runtime.test
    def go():
        edited()

    with pytest.raises(ResidencyGuardError) as err:
        go()
    message = str(err.value)
    assert "pulumi:providers:aws 'rogue': would land in us-east-1, outside [eu-west-3, francecentral]" in message


def test_fresh_mocks_do_not_inherit_the_previous_programs_guard(mocks):
    # The previous test registered a stack-wide guard; a fresh root stack must not carry it.
    @pulumi.runtime.test
    def go():
        aws.Provider("anywhere", region="us-east-1")

    go()
    assert mocks.one("pulumi:providers:aws").inputs["region"] == "us-east-1"


def test_the_exported_connections_become_endpoints_the_router_can_reach(mocks):
    """The seam to `up`: each component's connection (non-secret) -> an org-style Endpoint that its provider
    adapter locates; no key is copied into it."""
    from sovra.providers.azure.component_ml import AzureMLOnlineEndpoint
    from sovra.providers.aws.component import SageMakerEndpoint
    from sovra.infra.pulumi_stack import outputs_to_endpoints
    from sovra.providers import base

    sm, az = SageMakerEndpoint("sm", placed(SAGEMAKER)), AzureMLOnlineEndpoint("az", placed(AZURE, instance="x"))
    conns = resolve(sm=pulumi.Output.from_input(sm.connection()), az=pulumi.Output.from_input(az.connection()))
    assert not conns["sm_secret"] and not conns["az_secret"]
    endpoints = outputs_to_endpoints({"endpoints": {SAGEMAKER.id: conns["sm"], AZURE.id: conns["az"]}},
                                     [SAGEMAKER, AZURE])
    by_id = {e.id: e for e in endpoints}
    assert by_id[SAGEMAKER.id].connection == {"endpoint": "sovra-d-eu-west-3", "region": "eu-west-3"}
    assert by_id[AZURE.id].connection["subscription_id"] == SUBSCRIPTION
    assert by_id[AZURE.id].zone == AZURE.zone and by_id[AZURE.id].country == AZURE.country
    for e in endpoints:  # each adapter accepts it and says where to send requests
        adapter = base.get(e.provider)
        where = adapter.locate(e, "m", adapter.connection(e.connection))
        assert where.address
    assert "primary-secret" not in json.dumps([e.model_dump(mode="json") for e in endpoints])


def test_a_kuberay_stack_output_becomes_an_own_capacity_backend_reached_over_http():
    """The seam for a Kubernetes cluster in org.yaml: its exported URL -> an Endpoint (the cluster's own fields
    dropped) -> a first-rung routing-table backend that the KubeRay client calls."""
    from sovra.infra.pulumi_stack import outputs_to_endpoints
    from sovra.orchestrator.routing_table import routed_entry
    from sovra.providers.onprem.model_http_client import ModelHttpClient
    from sovra.core.spec.org import Cluster
    from sovra.providers import base

    cluster = Cluster.model_validate({
        "id": "k8s-paris", "provider": "kubernetes", "country": "FR", "zone": "EU", "address": "paris-gpu",
        "operator": {"name": "self", "jurisdiction": "FR"},
        "accelerators": [{"sku": "l40s", "gpus": 1, "gpu_memory_gb": 48, "usd_per_hour": 1.0, "available": 4}],
        "provision": {"image": IMAGE}})
    url = "http://sovra-d-k8s-paris-serve-svc.sovra.svc.cluster.local:8000"
    [e] = outputs_to_endpoints({"endpoints": {"k8s-paris": {"url": url}}}, [cluster])
    assert e.provider == "kubernetes" and e.country == "FR" and e.connection == {"url": url}
    d = deployment("d", residency={"countries": ["FR"]})
    [p] = _plan_of(cluster, 1, "l40s").placements
    b = routed_entry(d, p, e, e.connection)
    assert (b.kind, b.address, b.tier, b.place.country) == ("kubernetes", url, 0, "FR")
    client = base.get("kubernetes").client()
    assert isinstance(client, ModelHttpClient) and client.url(b, "health") == url + "/healthz"
    assert base.get("kubernetes").direct is False  # an in-cluster URL, without a key: only the router calls it


def test_build_program_hands_each_component_its_targets_provision_settings(mocks):
    """What `sovra preview/up` runs: `build_program` with the org's `provision:` settings by target id."""
    from sovra.infra.pulumi_stack import build_program

    d = deployment("d", residency={"zones": ["EU"]})
    run = build_program(d, _plan(AZURE).placements, {AZURE.id: AZURE},
                        {AZURE.id: {"workspace": "ml-prod", "resource_group": "rg-ml"}})

    @pulumi.runtime.test
    def go():
        run()

    go()
    endpoint = mocks.one("azure-native:machinelearningservices:OnlineEndpoint")
    assert endpoint.inputs["workspaceName"] == "ml-prod" and endpoint.inputs["resourceGroupName"] == "rg-ml"


def test_every_adapter_that_names_a_component_has_its_settings_and_the_class_exists():
    """A vendor's component is named by its adapter (one folder); its `provision:` settings are a ground fact."""
    from sovra.core.provision import SETTINGS
    from sovra.infra.pulumi.components import component_for
    from sovra.providers import base

    named = {n for n in base.names() if base.get(n).component}
    assert named == {"aws-sagemaker", "azure-ml", "azure-foundry", "databricks", "snowflake-cortex", "kubernetes"}
    assert named <= set(SETTINGS)
    assert all(component_for(n).__name__ == base.get(n).component.rsplit(":", 1)[1] for n in named)
    assert component_for("aws-bedrock") is None  # per-token: nothing is created
