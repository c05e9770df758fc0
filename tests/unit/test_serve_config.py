"""The plan -> Ray Serve config translation (pure), which makes `up` idempotent and keeps the router's table."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra import serve_config as sc
from orchestrator.spec import Deployment
from tests.factories import deployment, solve, target


def _rps(dep: Deployment, targets):
    plan = solve([dep], targets).deployments[0]
    by_id = {t.id: t for t in targets}
    total = sum(p.replicas for p in plan.placements)
    return [sc.RayPlacement(dep, p, by_id[p.target], total) for p in plan.placements]


def _dep(**serving) -> Deployment:
    d = deployment("chat", model="gemma3-270m", gb=1, replicas=3)
    spec = d.spec.model_copy(update={"replicas": d.spec.replicas.model_copy(update={"max": 6}),
                                     "serving": d.spec.serving.model_copy(update=serving)})
    return d.model_copy(update={"spec": spec})


def test_model_app_autoscales_from_planned_replicas_to_its_share_of_max():
    paris = target("onprem-paris", cloud="onprem", country="FR", gb=2, available=2)
    berlin = target("onprem-berlin", cloud="onprem", country="DE", gb=2, available=1, price=2.0)
    apps = {rp.target.id: sc.model_app(rp) for rp in _rps(_dep(), [paris, berlin])}
    auto = {t: a["deployments"][0]["autoscaling_config"] for t, a in apps.items()}
    assert auto == {"onprem-paris": {"min_replicas": 2, "max_replicas": 4, "target_ongoing_requests": 4},
                    "onprem-berlin": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4}}
    a = apps["onprem-paris"]
    assert a["name"] == "sovra.chat.onprem-paris" and a["route_prefix"] is None
    assert a["args"]["engine"] == "llama-cpp" and a["deployments"][0]["ray_actor_options"] == {"num_cpus": 0.25}


@pytest.mark.parametrize(("model", "engine", "gpus", "expected"), [
    ("gemma3-270m", "auto", 4, ("llama-cpp", 0.0)),
    ("all-minilm-l6-v2", "auto", 1, ("minilm", 0.0)),
    ("mistral-small-24b", "auto", 2, ("vllm", 2.0)),
    ("mistral-small-24b", "llama-cpp", 2, ("llama-cpp", 0.0)),
])
def test_auto_engine_runs_packaged_models_on_cpu_and_others_on_vllm_gpus(model, engine, gpus, expected):
    d = deployment("x", model=model)
    d = d.model_copy(update={"spec": d.spec.model_copy(update={
        "serving": d.spec.serving.model_copy(update={"engine": engine})})})
    assert sc.resolve_engine(d, gpus) == expected


def test_router_entry_carries_place_and_list_price_not_secrets():
    [rp] = _rps(_dep(), [target("onprem-paris", cloud="onprem", country="FR", gb=2, price=1.46)])
    b = sc.backend_entry(rp)
    assert b["place"] == {"zone": "EU", "country": "FR", "jurisdiction": "FR", "operator": "self"}
    assert b["cost"] == pytest.approx(1.46) and b["kind"] == "ray" and b["address"] == b["id"]


def test_merge_replaces_only_the_deployments_apps_and_drops_the_router_for_rebuild():
    current = [{"name": "sovra.a.x", "import_path": sc.MODEL_IMPORT, "args": {"deployment": "a"}},
               {"name": "sovra.b.x", "import_path": sc.MODEL_IMPORT, "args": {"deployment": "b"}},
               {"name": "theirs", "import_path": "their.app:app", "args": {"deployment": "a"}},
               {"name": sc.ROUTER_APP, "import_path": sc.ROUTER_IMPORT, "args": {}}]
    new = [{"name": "sovra.a.y", "import_path": sc.MODEL_IMPORT, "args": {"deployment": "a"}}]
    assert [a["name"] for a in sc.merge(current, {"a"}, new)] == ["sovra.b.x", "theirs", "sovra.a.y"]
    assert [a["name"] for a in sc.merge(current, {"a"}, [])] == ["sovra.b.x", "theirs"]


def test_router_backends_keep_other_deployments():
    router = {"args": {"backends": [{"id": "1", "deployment": "a"}, {"id": "2", "deployment": "b"}]}}
    assert sc.router_backends(router, {"a"}, [{"id": "3", "deployment": "a"}]) == [
        {"id": "2", "deployment": "b"}, {"id": "3", "deployment": "a"}]
    assert sc.router_backends(None, {"a"}, []) == []


@given(st.permutations(range(5)))
def test_same_plan_gives_byte_identical_config_whatever_the_order(order):
    """Serve's code version hashes import path and args: any drift would restart every replica on `up`."""
    backends = [{"id": f"b{i}", "deployment": "d", "model": "m"} for i in range(5)]
    one = sc.router_app(backends, tenants=[], policies={"m": "cost", "n": "latency"}, audit_path="/a")
    two = sc.router_app([backends[i] for i in order], tenants=[], policies={"n": "latency", "m": "cost"},
                        audit_path="/a")
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)
