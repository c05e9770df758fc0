"""The Automation API wrapper's error mapping, driven by real failure outputs.

Sources of the texts (quoted as the engine printed them):
- missing CLI: reproduced here, by calling the Automation API with no `pulumi` on PATH.
- concurrent update: the Automation API's own classifier (pulumi/automation/errors.py) and pulumi/pulumi#3207,
  pulumi/actions#1034 (Pulumi Cloud 409), DefangLabs/defang#385 and PierreBeucher/cloudypad#304 (file/S3 lock).
- AWS: pulumi/pulumi-aws#1316 (NoCredentialProviders), #3310 (No valid credential sources found).
- Azure: pulumi/pulumi-azure#1130 (Please run 'az login'), Azure/azure-cli#31648 (DefaultAzureCredential failed).
- Databricks: databricks/cli#1231, databrickslabs/ucx#547 (cannot configure default credentials).
- Snowflake: snowflakedb/snowflake-connector-net#76 (390100), pulumi/pulumi-snowflake#489 (260002).
- Quotas: awsdocs/amazon-sagemaker-developer-guide#70 (ResourceLimitExceeded), nforgeio/neonKUBE#1671 and
  Azure/karpenter-provider-azure#192 (OperationNotAllowed … quota), MicrosoftLearning/mslearn-azure-ml#30
  (Not enough quota available).
- Passphrase: pulumi/pulumi#6893, #5223.
"""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovra.infra import pulumi_stack as ps
from sovra.core.errors import (
    CloudCredentialsError,
    ConcurrentUpdateError,
    ProvisionError,
    PulumiMissingError,
    QuotaError,
    SecretsProviderError,
    SovraError,
)

CONFLICT_CLOUD = """Updating (dev)
error: [409] Conflict: Another update is currently in progress.
To learn more about possible reasons and resolution, visit https://www.pulumi.com/docs/troubleshooting/#conflict"""
CONFLICT_FILE = """error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or \
delete the lock file with `pulumi cancel`.
  file:///home/u/.sovra/pulumi/.pulumi/locks/organization/sovra/ticket-triage-dev/bf4d21ea.json: created by u@host \
(pid 42) at 2025-09-23T13:21:31Z"""
AWS_OLD = """Diagnostics:
  aws:s3:Bucket (my-bucket):
    error: 1 error occurred:
    \t* error configuring Terraform AWS Provider: no valid credential sources for Terraform AWS Provider found.

    Please see https://registry.terraform.io/providers/hashicorp/aws
    for more information about providing credentials.

    Error: NoCredentialProviders: no valid providers in chain. Deprecated.
    \tFor verbose messaging see aws.Config.CredentialsChainVerboseErrors"""
AWS_NEW = """Diagnostics:
  pulumi:providers:aws (default_6_18_2):
    error: pulumi:providers:aws resource 'default_6_18_2' has a problem: No valid credential sources found.
    Please see https://www.pulumi.com/registry/packages/aws/installation-configuration/for more information."""
AZURE_CLI = """Diagnostics:
  azure:core:ResourceGroup (exampleResourceGroup):
    error: failed to load application credentials:
    Details: obtain subscription() from Azure CLI: parsing json result from the Azure CLI: waiting for the Azure \
CLI: exit status 1: ERROR: Please run 'az login' to setup account."""
AZURE_DEFAULT = """error: DefaultAzureCredential failed to retrieve a token from the included credentials.
Attempted credentials:
\tEnvironmentCredential: EnvironmentCredential authentication unavailable. Environment variables are not fully \
configured."""
DATABRICKS = """Error: cannot create job: default auth: cannot configure default credentials, please check \
https://docs.databricks.com/en/dev-tools/auth.html#databricks-client-unified-authentication to configure credentials \
for your preferred authentication method. Config: host=https://adb-xxx.azuredatabricks.net. Env: DATABRICKS_HOST"""
SNOWFLAKE_PASSWORD = "error: 390100 (08004): Incorrect username or password was specified."
SNOWFLAKE_EMPTY = """Diagnostics:
  snowflake:index:Schema (Test_Schema):
    error: 1 error occurred:
        * 260002: password is empty"""
SAGEMAKER_QUOTA = """error: creating SageMaker Endpoint: ResourceLimitExceeded: The account-level service limit \
'ml.g6.xlarge for endpoint usage' is 0 Instances, with current utilization of 0 Instances and a request delta of 1 \
Instances. Please contact AWS support to request an increase for this limit."""
AZURE_CORES = """RESPONSE 409: 409 Conflict
ERROR CODE: OperationNotAllowed
{"error": {"code": "OperationNotAllowed", "message": "Operation could not be completed as it results in exceeding \
approved standardDASv5Family Cores quota. Additional details - Deployment Model: Resource Manager, Location: \
eastus, Current Limit: 100, Current Usage: 96, Additional Required: 64, (Minimum) New Limit Required: 160."}}"""
AZURE_ML_QUOTA = """error: (InferencingClientCreateDeploymentFailed) InferencingClient HttpRequest error, error \
detail: {"errors":{"VmSize":["Not enough quota available for Standard_F4s_v2 in SubscriptionId a7842ee4. Current \
usage/limit: 0/6. Additional needed: 8 Please see troubleshooting guide, available here: \
https://aka.ms/oe-tsg#error-outofquota"]}}"""
AZURE_QUOTA_CODE = "error: Code=\"QuotaExceeded\" Message=\"Operation results in exceeding quota limits of Core.\""
PASSPHRASE = "error: decrypting secret value: failed to decrypt: incorrect passphrase, please set " \
             "PULUMI_CONFIG_PASSPHRASE to the correct passphrase"
PASSPHRASE_UNSET = "error: constructing secrets manager of type \"passphrase\": unable to find either " \
                   "`PULUMI_CONFIG_PASSPHRASE` or `PULUMI_CONFIG_PASSPHRASE_FILE` when trying to access the " \
                   "Passphrase Secrets Provider"

CASES = [
    (CONFLICT_CLOUD, ConcurrentUpdateError, ["pulumi cancel", "wait"]),
    (CONFLICT_FILE, ConcurrentUpdateError, ["pulumi cancel", "wait"]),
    (AWS_OLD, CloudCredentialsError, ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_REGION"]),
    (AWS_NEW, CloudCredentialsError, ["AWS_ACCESS_KEY_ID", "AWS_PROFILE"]),
    (AZURE_CLI, CloudCredentialsError, ["ARM_CLIENT_ID", "ARM_TENANT_ID", "ARM_SUBSCRIPTION_ID", "az login"]),
    (AZURE_DEFAULT, CloudCredentialsError, ["ARM_CLIENT_SECRET", "az login"]),
    (DATABRICKS, CloudCredentialsError, ["DATABRICKS_HOST", "DATABRICKS_TOKEN"]),
    (SNOWFLAKE_PASSWORD, CloudCredentialsError, ["SNOWFLAKE_USER", "SNOWFLAKE_PASSWORD"]),
    (SNOWFLAKE_EMPTY, CloudCredentialsError, ["SNOWFLAKE_PRIVATE_KEY"]),
    (SAGEMAKER_QUOTA, QuotaError, ["Service Quotas", "for endpoint usage"]),
    (AZURE_CORES, QuotaError, ["Quotas", "az quota"]),
    (AZURE_ML_QUOTA, QuotaError, ["Quotas"]),
    (AZURE_QUOTA_CODE, QuotaError, ["Quotas"]),
    (PASSPHRASE, SecretsProviderError, ["PULUMI_CONFIG_PASSPHRASE"]),
    (PASSPHRASE_UNSET, SecretsProviderError, ["PULUMI_CONFIG_PASSPHRASE"]),
]
CLOUD = {AWS_OLD: "aws", AWS_NEW: "aws", AZURE_CLI: "azure", AZURE_DEFAULT: "azure", DATABRICKS: "databricks",
         SNOWFLAKE_PASSWORD: "snowflake", SNOWFLAKE_EMPTY: "snowflake"}


@pytest.mark.parametrize(("text", "kind", "fix"), CASES, ids=[f"{c[1].__name__}-{i}" for i, c in enumerate(CASES)])
def test_each_real_failure_maps_to_its_error_and_names_its_fix(text, kind, fix):
    e = ps.errors_of(text)
    assert type(e) is kind
    assert isinstance(e, SovraError) and e.exit_code == 1
    for word in fix:
        assert word in str(e), (word, str(e))
    if kind is CloudCredentialsError:
        assert e.cloud == CLOUD[text]


def _command_error(stderr: str, stdout: str = ""):
    """An exception exactly as the Automation API raises it for a failed `pulumi` run (its own classifier)."""
    from pulumi.automation._cmd import CommandResult
    from pulumi.automation.errors import create_command_error

    return create_command_error(CommandResult(stdout=stdout, stderr=stderr, code=255))


@pytest.mark.parametrize("stderr", [CONFLICT_CLOUD, CONFLICT_FILE])
def test_the_sdks_concurrent_update_error_maps_to_ours(stderr):
    from pulumi.automation import errors as auto_errors

    exc = _command_error(stderr)
    assert isinstance(exc, auto_errors.ConcurrentUpdateError)  # the SDK itself recognises both texts
    e = ps.errors_of(exc)
    assert isinstance(e, ConcurrentUpdateError) and "pulumi cancel" in str(e)


@pytest.mark.parametrize("text", [AWS_OLD, AZURE_CLI, SAGEMAKER_QUOTA])
def test_a_command_error_carrying_a_provider_failure_is_read_from_its_output(text):
    e = ps.errors_of(_command_error(stderr="error: update failed", stdout=text))
    assert isinstance(e, (CloudCredentialsError, QuotaError))


def test_missing_cli_is_what_the_automation_api_really_raises(tmp_path, monkeypatch):
    """Reproduced, not described: the Automation API with no `pulumi` on PATH."""
    from pulumi import automation as auto

    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no pulumi
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "unused")
    backend = tmp_path / "state"
    with pytest.raises(Exception) as info:
        auto.create_or_select_stack(
            stack_name="ticket-triage-dev", project_name="sovra", program=lambda: None,
            opts=auto.LocalWorkspaceOptions(project_settings=auto.ProjectSettings(
                name="sovra", runtime="python", backend=auto.ProjectBackend(url=f"file://{backend}"))))
    assert isinstance(info.value, FileNotFoundError) and info.value.filename == "pulumi"
    e = ps.errors_of(info.value)
    assert isinstance(e, PulumiMissingError)
    assert "curl -fsSL https://get.pulumi.com | sh" in str(e) and "only for cloud" in str(e)
    assert not backend.exists()


def test_require_cli_fails_before_anything_with_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PulumiMissingError, match="get.pulumi.com"):
        ps.require_cli()
    with pytest.raises(PulumiMissingError):
        ps.open_stack("x", lambda: None, ps.settings(f"file://{tmp_path / 's'}", home=tmp_path / "home"))
    assert not (tmp_path / "s").exists() and not (tmp_path / "home").exists()


def test_an_unknown_failure_keeps_the_engines_last_error_line():
    e = ps.errors_of("Previewing update (dev)\nerror: something new went wrong\n")
    assert type(e) is ProvisionError and "something new went wrong" in str(e)


# Lines the engine prints around a failure (from the outputs above), and filler that holds no signature.
NOISE = st.lists(st.one_of(
    st.sampled_from(["Previewing update (ticket-triage-eu-dev)", "Updating (dev)", "     Type  Name  Plan  Info",
                     " +   pulumi:pulumi:Stack  sovra-ticket-triage-eu-dev  create", "Resources:", "    + 3 to create",
                     "View Live: https://app.pulumi.com/acme/sovra/dev/previews/a4c7df34", "Diagnostics:",
                     "warning: A new version of Pulumi is available.", "Duration: 3s"]),
    st.text(alphabet="abcdefghijkmnpstuvwxyz ._-/", max_size=40)), max_size=8).map("\n".join)


@settings(max_examples=60, deadline=None)
@given(before=NOISE, after=NOISE, case=st.sampled_from(CASES))
def test_the_mapping_holds_whatever_the_engine_prints_around_the_key_text(before, after, case):
    text, kind, fix = case
    e = ps.errors_of(f"{before}\n{text}\n{after}")
    assert type(e) is kind and all(word in str(e) for word in fix)


@settings(max_examples=60, deadline=None)
@given(noise=NOISE)
def test_noise_alone_is_a_plain_engine_failure(noise):
    assert type(ps.errors_of(noise)) is ProvisionError


# ---------------------------------------------------------------------------------------- settings, secrets


def test_stack_names_and_backends(tmp_path, monkeypatch):
    monkeypatch.delenv(ps.BACKEND_VAR, raising=False)
    s = ps.settings(home=tmp_path)
    assert s.backend_url == f"file://{tmp_path / 'pulumi'}" and s.stack_name("ticket-triage") == "ticket-triage-dev"
    assert ps.settings(env="prod", home=tmp_path).stack_name("a") == "a-prod"
    for url in ("s3://acme-pulumi", "azblob://state", "https://api.pulumi.com", "gs://b"):
        assert ps.settings(url, home=tmp_path).backend_url == url
    monkeypatch.setenv(ps.BACKEND_VAR, "s3://from-env")
    assert ps.settings(home=tmp_path).backend_url == "s3://from-env"
    with pytest.raises(ProvisionError, match="not a Pulumi backend URL"):
        ps.settings("ftp://nope", home=tmp_path)
    assert not any(tmp_path.iterdir())  # settings write nothing


def test_local_backend_keeps_a_generated_passphrase_0600_and_never_returns_it(tmp_path, monkeypatch):
    for v in ps.PASSPHRASE_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.delenv(ps.SECRETS_PROVIDER_VAR, raising=False)
    s = ps.settings(home=tmp_path)
    env = ps.engine_env(s)
    path = tmp_path / "pulumi" / "passphrase"
    assert env["PULUMI_CONFIG_PASSPHRASE_FILE"] == str(path) and "PULUMI_CONFIG_PASSPHRASE" not in env
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    secret = path.read_text()
    assert len(secret) >= 32 and secret not in repr(env)
    assert ps.engine_env(s) == env and path.read_text() == secret  # kept, not regenerated


def test_a_shared_backend_needs_an_explicit_passphrase(tmp_path, monkeypatch):
    for v in ps.PASSPHRASE_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.delenv(ps.SECRETS_PROVIDER_VAR, raising=False)
    with pytest.raises(SecretsProviderError, match="PULUMI_CONFIG_PASSPHRASE"):
        ps.engine_env(ps.settings("s3://acme-pulumi", home=tmp_path))
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "team secret")
    env = ps.engine_env(ps.settings("s3://acme-pulumi", home=tmp_path))
    assert "team secret" not in env.values() and not (tmp_path / "pulumi").exists()
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE")
    monkeypatch.setenv(ps.SECRETS_PROVIDER_VAR, "awskms://alias/sovra")
    assert ps.engine_env(ps.settings("s3://acme-pulumi", home=tmp_path)) == {"PULUMI_SKIP_UPDATE_CHECK": "true"}


# ------------------------------------------------------------------------------------------ events, outputs


def _event(kind: str, op: str, type_: str, name: str, **extra):
    from pulumi.automation.events import EngineEvent

    meta = {"op": op, "urn": f"urn:pulumi:dev::sovra::{type_}::{name}", "type": type_, "provider": ""}
    return EngineEvent.from_json({"sequence": 1, "timestamp": 0, kind: {"metadata": meta, **extra}})


def test_plain_display_prints_one_line_per_resource_change():
    lines: list[str] = []
    d = ps.EventDisplay(lines.append)
    ep = "aws:sagemaker/endpoint:Endpoint"
    d.on_event(_event("resourcePreEvent", "create", ep, "ticket-triage-eu-ep"))
    d.on_event(_event("resOutputsEvent", "create", ep, "ticket-triage-eu-ep"))
    d.on_event(_event("resourcePreEvent", "same", "aws:iam/role:Role", "role"))
    d.on_event(_event("resourcePreEvent", "create", "pulumi:pulumi:Stack", "sovra-dev"))
    d.on_event(_event("resourcePreEvent", "create", "azure-native:machinelearningservices:OnlineEndpoint", "ep",
                      planning=True))
    d.on_event(_event("resOpFailedEvent", "create", "azure-native:machinelearningservices:OnlineDeployment",
                      "blue", status=1, steps=1))
    assert lines == [f"+ create   {ep} ticket-triage-eu-ep: done",
                     "+ create   azure-native:machinelearningservices:OnlineEndpoint ep: planned",
                     "+ create   azure-native:machinelearningservices:OnlineDeployment blue: failed"]
    assert [c.status for c in d.changes] == ["done", "planned", "failed"]


def _targets():
    from sovra.orchestrator.catalog import load_org, load_targets

    return {t.id: t for t in load_targets(None, load_org(None))}


def test_outputs_become_endpoints_the_router_can_reach():
    from pulumi.automation import OutputValue

    from sovra.core.spec.org import Endpoint

    t = _targets()
    chosen = [t["aws-sagemaker/eu-central-1"], t["azure-ml/swedencentral"]]
    outputs = {"endpoints": OutputValue({
        "aws-sagemaker/eu-central-1": {"endpoint": "ticket-triage-eu", "region": "eu-central-1"},
        "azure-ml/swedencentral": {"subscription_id": "0000", "resource_group": "sovra", "workspace": "sovra-ws",
                                   "endpoint": "ticket-triage-eu"}}, False),
        "azure_key": OutputValue("s3cr3t", True)}
    eps = ps.outputs_to_endpoints(outputs, chosen)
    assert [e.id for e in eps] == ["aws-sagemaker/eu-central-1", "azure-ml/swedencentral"]
    assert all(isinstance(e, Endpoint) for e in eps)
    assert eps[0].connection["endpoint"] == "ticket-triage-eu" and eps[0].zone == "EU" and eps[0].country == "DE"
    assert "s3cr3t" not in repr(eps)
    with pytest.raises(ProvisionError, match="secret"):
        ps.outputs_to_endpoints({"endpoints": OutputValue({}, True)}, chosen)
    with pytest.raises(ProvisionError, match="does not know"):
        ps.outputs_to_endpoints({"endpoints": {"aws-sagemaker/us-east-1": {"endpoint": "x"}}}, chosen)
    assert ps.outputs_to_endpoints({}, chosen) == []
