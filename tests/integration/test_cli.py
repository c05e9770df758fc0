"""The CLI over its real entry point: exit codes, the JSON contract, located errors, lazy imports."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest

from tests.integration.conftest import ROOT

SCHEMA = json.loads((ROOT / "tests/contract/plan.schema.json").read_text())
QS = ["examples/quickstart/deployment.yaml", "--org", "examples/quickstart/org.yaml"]

GOOD = """\
apiVersion: sovra/v1
kind: Deployment
metadata: {name: svc}
spec:
  model: {name: mistral-small-24b, gpu_memory_gb: 55, license: apache-2.0}
  replicas: {min: 2}
  residency: {zones: [EU]}
"""


def write(tmp_path: Path, text: str, name: str = "d.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_help_lists_the_commands(sovra):
    r = sovra("--help")
    assert r.returncode == 0
    for cmd in ("validate", "plan", "explain", "targets", "up", "down", "serve", "status", "audit", "schema"):
        assert cmd in r.stdout


def test_feasible_plan_exits_0_and_matches_the_json_contract(sovra):
    r = sovra("plan", *QS, "--as-of", "2026-11-22", "-o", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    jsonschema.validate(data, SCHEMA)
    assert data["placements"][0]["target"] == "local"


def test_shipped_catalog_plan_lists_rejections_with_reasons(sovra, tmp_path):
    r = sovra("plan", write(tmp_path, GOOD), "-o", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    jsonschema.validate(data, SCHEMA)
    assert all(p["target"] for p in data["placements"])
    us = [x for x in data["rejected"] if x["target"] == "aws-sagemaker/us-east-1"]
    assert us and "residency: zone US is not in [EU]" in us[0]["reasons"]


def test_infeasible_plan_exits_1_and_says_what_to_relax(sovra, tmp_path):
    bad = GOOD.replace("zones: [EU]", "zones: [CH]")
    r = sovra("plan", write(tmp_path, bad), "-o", "json")
    assert r.returncode == 1
    data = json.loads(r.stdout)
    jsonschema.validate(data, SCHEMA)
    assert not data["feasible"] and any("no target in zone CH" in x for x in data["relax"])
    r2 = sovra("plan", write(tmp_path, GOOD.replace("{min: 2}", "{min: 2}\n  budget: {monthly_usd: 100}"), "b.yaml"))
    assert r2.returncode == 1 and "exceeds its budget by $" in r2.stdout


def test_fleet_json_is_one_object_for_several_files(sovra, tmp_path):
    a = write(tmp_path, GOOD, "a.yaml")
    b = write(tmp_path, GOOD.replace("name: svc", "name: svc2"), "b.yaml")
    r = sovra("plan", a, b, "-o", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    jsonschema.validate(data, SCHEMA)
    assert [d["deployment"] for d in data["deployments"]] == ["svc", "svc2"]


@pytest.mark.parametrize(("text", "where", "field", "hint"), [
    (GOOD.replace("{min: 2}", "{min: two}"), ":6:", "spec.replicas.min", "valid integer"),
    (GOOD.replace("  replicas:", "  replica:"), ":6:3", "spec.replica", "did you mean 'replicas'"),
    (GOOD.replace("metadata: {name: svc}\n", ""), ":1:1", "metadata", "required field is missing"),
    (GOOD.replace("residency: {zones: [EU]}", "residency: {zones: [EU]}\n  budget: {monthly_usd: -5}"),
     ":8:", "spec.budget.monthly_usd", "greater than or equal to 0"),
    (GOOD.replace("residency: {zones: [EU]}", "residency: {zones: [EUR]}"), ":7:", "spec.residency.zones[0]",
     "valid zones"),
    (GOOD.replace("  replicas: {min: 2}", "    replicas: {min: 2}"), ":6:", "", "YAML syntax"),
    (GOOD.replace("residency: {zones: [EU]}", "residency: {zones: [EU]}\n  routing: {policy: latncy}"), ":8:",
     "spec.routing.policy", "did you mean 'latency'"),
])
def test_bad_deployment_yaml_exits_2_with_file_line_and_field(sovra, tmp_path, text, where, field, hint):
    p = write(tmp_path, text)
    r = sovra("validate", p)
    assert r.returncode == 2, r.stdout
    assert f"{p}{where}" in r.stderr, r.stderr
    assert field in r.stderr and hint in r.stderr, r.stderr


def test_bad_date_in_org_names_the_field_and_a_valid_form(sovra, tmp_path):
    org = write(tmp_path, "credits:\n  - {cloud: azure, usd: 100, expires: 2027-02-30}\n", "org.yaml")
    r = sovra("validate", write(tmp_path, GOOD), "--org", org)
    assert r.returncode == 2
    assert f"{org}:2:" in r.stderr and "credits[0].expires" in r.stderr and "2027-06-30" in r.stderr


def test_several_errors_across_files_are_reported_together(sovra, tmp_path):
    a = write(tmp_path, GOOD.replace("{min: 2}", "{min: 0}"), "a.yaml")
    org = write(tmp_path, "credits:\n  - {cloud: azure, usd: -1, expires: 2027-01-01, colour: red}\n", "org.yaml")
    r = sovra("plan", a, "--org", org)
    assert r.returncode == 2
    assert "a.yaml:6:" in r.stderr and "org.yaml:2:" in r.stderr and "colour" in r.stderr
    assert "3 problems" in r.stderr


def test_bad_as_of_is_invalid_input(sovra):
    r = sovra("plan", *QS, "--as-of", "tomorrow")
    assert r.returncode == 2 and "YYYY-MM-DD" in r.stderr


def test_explain_chosen_rejected_and_not_chosen(sovra, tmp_path):
    p = write(tmp_path, GOOD)
    chosen = json.loads(sovra("plan", p, "-o", "json").stdout)["placements"][0]["target"]
    e = json.loads(sovra("explain", p, "--target", chosen, "-o", "json").stdout)
    assert e["status"] == "chosen" and e["placement"]["target"] == chosen and "breakdown" in e
    e = json.loads(sovra("explain", p, "--target", "aws-sagemaker/us-east-1", "-o", "json").stdout)
    assert e["status"] == "rejected" and "residency: zone US is not in [EU]" in e["reasons"]
    e = json.loads(sovra("explain", p, "--target", "azure-ml/francecentral", "-o", "json").stdout)
    if e["status"] == "not_chosen":
        assert e["extra_monthly_usd"] >= 0 and "more" in e["why"]
    r = sovra("explain", p, "--target", "aws-sagemaker/eu-west-33")
    assert r.returncode == 2 and "did you mean" in r.stderr


def test_targets_filters(sovra):
    data = json.loads(sovra("targets", "--zone", "EU", "--provider", "azure-ml", "-o", "json").stdout)
    assert data and all(t["zone"] == "EU" and t["provider"] == "azure-ml" for t in data)
    big = json.loads(sovra("targets", "--gpu-memory", "300", "-o", "json").stdout)
    assert big and all(any(a["gpus"] * a["gpu_memory_gb"] >= 300 for a in t["accelerators"]) for t in big)
    fr = json.loads(sovra("targets", "--country", "fr", "-o", "json").stdout)
    assert fr and {t["country"] for t in fr} == {"FR"}
    assert sovra("targets", "--zone", "MARS").returncode == 2


@pytest.mark.parametrize("kind", ["deployment", "org", "catalog"])
def test_schema_prints_json_schema(sovra, kind):
    r = sovra("schema", kind)
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]


def test_plan_and_help_import_no_cloud_sdk():
    banned = ["boto3", "botocore", "azure", "snowflake", "databricks", "ray", "pulumi", "torch", "llama_cpp", "httpx"]
    code = textwrap.dedent(f"""
        import sys, json
        from sovra.orchestrator.cli import app
        for argv in (["--help"], ["plan", *{QS!r}]):
            try:
                app(argv, standalone_mode=False)
            except SystemExit:
                pass
        loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({banned!r}))
        print("LOADED=" + json.dumps(loaded), file=sys.stderr)
    """)
    r = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = [x for x in r.stderr.splitlines() if x.startswith("LOADED=")]
    assert line, r.stderr
    assert json.loads(line[0][len("LOADED="):]) == []


def test_up_refuses_cloud_placements_before_touching_anything(sovra, tmp_path, monkeypatch):
    monkeypatch.setenv("SOVRA_HOME", str(tmp_path / "home"))
    r = sovra("up", "examples/procurement/deployment.yaml", "--org", "examples/procurement/org.yaml")
    assert r.returncode == 1
    assert "cannot provision yet" in r.stderr and "--ray-only" in r.stderr and "aws-sagemaker" in r.stderr
    assert not (tmp_path / "home").exists()  # no Ray was started, nothing was written


def test_audit_without_a_trail_says_where_it_looked(sovra, tmp_path):
    r = sovra("audit", "--file", tmp_path / "none.jsonl")
    assert r.returncode == 1 and "no audit trail at" in r.stderr and "none.jsonl" in r.stderr


def test_status_with_no_local_ray_says_how_to_start_one(sovra, tmp_path, monkeypatch):
    monkeypatch.setenv("SOVRA_HOME", str(tmp_path / "home"))
    r = sovra("status", "-o", "json")
    assert r.returncode == 0
    assert json.loads(r.stdout)[0]["message"] == "local Ray is not running (run `sovra up`)"


def test_down_with_nothing_running_says_so_and_where_it_looked(tmp_path):
    """Not a silent exit: a `down` run under another SOVRA_HOME than its `up` would otherwise look like success.
    Its own SOVRA_HOME, so it cannot touch what other tests deployed."""
    import os

    r = subprocess.run([str(ROOT / ".venv" / "bin" / "sovra"), "down", str(ROOT / "examples" / "quickstart" /
                        "deployment.yaml"), "--org", str(ROOT / "examples" / "quickstart" / "org.yaml"), "--stop-ray"],
                       cwd=ROOT, capture_output=True, text=True, check=False, timeout=120,
                       env={**os.environ, "SOVRA_HOME": str(tmp_path / "home"), "COLUMNS": "200", "NO_COLOR": "1"})
    assert r.returncode == 0, r.stderr
    assert str(tmp_path / "home") in r.stdout
    assert "nothing deployed from" in r.stdout and "keeps its own record of the local Ray" in r.stdout
