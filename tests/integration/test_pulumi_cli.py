"""`sovra preview/up/refresh/down` through the console script on examples/cloud (an Azure ML and a SageMaker
placement). This machine has no Pulumi CLI: there each command must fail cleanly, before touching anything. The
tests that need the engine run where `pulumi` is on PATH and are skipped, with the reason, where it is not."""

from __future__ import annotations

import shutil

import pytest

DEPLOYMENT, ORG = "examples/cloud/deployment.yaml", "examples/cloud/org.yaml"
HINT = "curl -fsSL https://get.pulumi.com | sh"
needs_cli = pytest.mark.skipif(shutil.which("pulumi") is None,
                               reason="the Pulumi CLI is not installed here (and cannot be: every route downloads it)")


@pytest.fixture
def no_pulumi(tmp_path, monkeypatch):
    """A PATH without `pulumi` and a fresh SOVRA_HOME that must stay unwritten."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("SOVRA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SOVRA_PULUMI_BACKEND", raising=False)
    yield tmp_path / "home"
    assert not (tmp_path / "home").exists(), "a command wrote under SOVRA_HOME without the Pulumi CLI"


def test_the_example_plans_an_azure_and_a_sagemaker_placement(sovra):
    import json

    r = sovra("plan", DEPLOYMENT, "--org", ORG, "--as-of", "2026-11-22", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert {p["provider"] for p in json.loads(r.stdout)["placements"]} == {"azure-ml", "aws-sagemaker"}


@pytest.mark.parametrize("command", [["preview"], ["up", "--yes"], ["refresh"]])
def test_without_the_cli_each_command_fails_with_the_install_hint_and_touches_nothing(sovra, no_pulumi, command):
    r = sovra(*command, DEPLOYMENT, "--org", ORG)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert HINT in r.stderr and "only for cloud" in r.stderr
    assert "azure-ml/swedencentral" in r.stderr and "aws-sagemaker/eu-central-1" in r.stderr
    assert "Traceback" not in r.stderr
    for claim in ("up:", "provisioned", "to create", "deleted"):
        assert claim not in r.stdout  # nothing claims a change that did not happen


def test_down_without_the_cli_destroys_a_stack_it_finds_only_with_the_cli(sovra, no_pulumi, tmp_path):
    state = tmp_path / "state"
    r = sovra("down", DEPLOYMENT, "--org", ORG, "--backend", f"file://{state}")
    assert r.returncode == 0, r.stderr  # no CLI here, so no stack was ever made here
    assert "no Pulumi stack ticket-triage-eu-dev" in r.stdout and "nothing to destroy" in r.stdout
    stack = state / ".pulumi" / "stacks" / "sovra" / "ticket-triage-eu-dev.json"
    stack.parent.mkdir(parents=True)
    stack.write_text("{}")  # state made elsewhere: destroying it needs the engine
    r = sovra("down", DEPLOYMENT, "--org", ORG, "--backend", f"file://{state}")
    assert r.returncode == 1 and HINT in r.stderr and "deleted" not in r.stdout


def test_a_plan_without_cloud_placements_needs_no_cli(sovra, no_pulumi):
    r = sovra("preview", "examples/quickstart/deployment.yaml", "--org", "examples/quickstart/org.yaml")
    assert r.returncode == 0, r.stderr
    assert "nothing to provision with Pulumi" in r.stdout


def test_a_bad_backend_url_is_refused_before_anything(sovra, tmp_path, monkeypatch):
    monkeypatch.setenv("SOVRA_HOME", str(tmp_path / "home"))
    if shutil.which("pulumi") is None:
        pytest.skip("the backend is read after the CLI check, which fails first here")
    r = sovra("preview", DEPLOYMENT, "--org", ORG, "--backend", "ftp://nope")
    assert r.returncode == 1 and "not a Pulumi backend URL" in r.stderr


@needs_cli
def test_preview_reaches_the_engine_and_maps_its_failure(sovra, tmp_path, monkeypatch):
    """With the CLI and no cloud credentials, the preview fails in the providers, mapped to the variables to set;
    with credentials, it lists what `up` would create. Either way nothing is created."""
    pytest.importorskip("sovra.infra.pulumi.components")
    monkeypatch.setenv("SOVRA_HOME", str(tmp_path / "home"))
    r = sovra("preview", DEPLOYMENT, "--org", ORG, "--backend", f"file://{tmp_path / 'state'}")
    if r.returncode == 0:
        assert "ticket-triage-eu-dev" in r.stdout and "to create" in r.stdout
    else:
        assert r.returncode == 1 and ("AWS_ACCESS_KEY_ID" in r.stderr or "ARM_CLIENT_ID" in r.stderr), r.stderr


@needs_cli
def test_refresh_of_a_stack_never_applied_reports_no_drift(sovra, tmp_path, monkeypatch):
    pytest.importorskip("sovra.infra.pulumi.components")
    monkeypatch.setenv("SOVRA_HOME", str(tmp_path / "home"))
    r = sovra("refresh", DEPLOYMENT, "--org", ORG, "--backend", f"file://{tmp_path / 'state'}")
    assert r.returncode == 0, r.stderr
    assert "no drift" in r.stdout


KUBERAY_ORG = """apiVersion: sovra/v1
kind: Org
clusters:
  - id: k8s-paris
    provider: kubernetes
    country: FR
    operator: {name: self, jurisdiction: FR}
    accelerators: [{sku: l40s, gpus: 1, gpu_memory_gb: 48, usd_per_hour: 1.0, available: 4}]
%s"""
CONTRACTS = """apiVersion: sovra/v1
kind: Deployment
metadata: {name: contracts}
spec:
  model: {name: mistral-small-24b, gpu_memory_gb: 40, license: apache-2.0}
  replicas: {min: 1, max: 2}
  residency: {countries: [FR]}
"""


def test_a_kuberay_placement_goes_through_pulumi_and_without_the_cli_fails_before_applying_anything(
        sovra, no_pulumi, tmp_path):
    import json

    org, dep = tmp_path / "org.yaml", tmp_path / "deployment.yaml"
    org.write_text(KUBERAY_ORG % "    provision: {image: registry.paris.internal/sovra-ray:0.1}\n")
    dep.write_text(CONTRACTS)
    plan = sovra("plan", str(dep), "--org", str(org), "-o", "json")
    assert plan.returncode == 0, plan.stderr
    assert [p["target"] for p in json.loads(plan.stdout)["placements"]] == ["k8s-paris"]  # FR: only the cluster
    r = sovra("up", str(dep), "--org", str(org), "--yes")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert HINT in r.stderr and "contracts on k8s-paris (kubernetes)" in r.stderr
    assert "Traceback" not in r.stderr and "up:" not in r.stdout


def test_a_kubernetes_cluster_without_an_image_is_refused_where_the_org_file_says_so(sovra, no_pulumi, tmp_path):
    org, dep = tmp_path / "org.yaml", tmp_path / "deployment.yaml"
    org.write_text(KUBERAY_ORG % "")
    dep.write_text(CONTRACTS)
    r = sovra("plan", str(dep), "--org", str(org))
    assert r.returncode != 0
    assert "org.yaml" in r.stderr and "clusters[0].provision" in r.stderr
    assert "image: a Ray image with Sovra installed" in r.stderr and "Traceback" not in r.stderr
