"""The plan -> Ray Serve config translation (pure), which makes `up` idempotent and keeps the router's table."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sovra.infra import serve_config as sc
from sovra.orchestrator import routing_table as rt
from sovra.core.backends import Backend
from sovra.core.spec import Deployment
from sovra.core.place import Place
from tests import factories
from tests.factories import deployment, solve, target

PARIS = Place("EU", "FR", "FR", "self")


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
    assert a["args"]["engine"] == "llama-cpp" and a["deployments"][0]["ray_actor_options"] == {
        "num_cpus": 0.25, "resources": {"sovra.target/onprem-paris": 0.001},  # replicas run only on its nodes
        "runtime_env": {"env_vars": sc.GRPC_MESSAGE_ENV}}  # by-value calls past gRPC's 4 MiB default


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


def test_router_entry_carries_place_residency_policy_and_list_price_not_secrets():
    [rp] = _rps(_dep(), [target("onprem-paris", cloud="onprem", country="FR", gb=2, price=1.46)])
    b = rt.backend_entry(rp)
    wire = b.to_wire()
    assert wire["place"] == {"zone": "EU", "country": "FR", "jurisdiction": "FR", "operator": "self"}
    assert wire["cost"] == pytest.approx(1.46) and wire["kind"] == "ray" and wire["address"] == wire["id"]
    assert (wire["deployment"], wire["model"], wire["policy"]) == ("chat", "gemma3-270m", "cost")
    assert wire["residency"] == rp.deployment.spec.residency.model_dump(mode="json")
    assert Backend.from_wire(wire) == b  # one record, one serialisation, both ways


def test_merge_replaces_only_the_deployments_apps_and_drops_the_router_for_rebuild():
    current = [{"name": "sovra.a.x", "import_path": sc.MODEL_IMPORT, "args": {"deployment": "a"}},
               {"name": "sovra.b.x", "import_path": sc.MODEL_IMPORT, "args": {"deployment": "b"}},
               {"name": "theirs", "import_path": "their.app:app", "args": {"deployment": "a"}},
               {"name": sc.ROUTER_APP, "import_path": sc.ROUTER_IMPORT, "args": {}}]
    new = [{"name": "sovra.a.y", "import_path": sc.MODEL_IMPORT, "args": {"deployment": "a"}}]
    assert [a["name"] for a in sc.merge(current, {"a"}, new)] == ["sovra.b.x", "theirs", "sovra.a.y"]
    assert [a["name"] for a in sc.merge(current, {"a"}, [])] == ["sovra.b.x", "theirs"]


def _b(i: int, deployment: str):
    return factories.backend(f"t{i}", PARIS, deployment=deployment)


def test_router_backends_keep_other_deployments():
    router = sc.router_app([_b(1, "a"), _b(2, "b")], tenants=[], audit_path=None)
    assert rt.router_backends(router, {"a"}, [_b(3, "a")]) == [_b(2, "b"), _b(3, "a")]
    assert rt.router_backends(None, {"a"}, []) == []


def test_a_router_table_from_an_older_sovra_is_refused_with_the_way_out():
    old = {"args": {"backends": [{"id": "1", "deployment": "a", "model": "m"}]}}  # no residency, no place
    with pytest.raises(rt.StaleRouterError, match="sovra down"):
        rt.router_backends(old, {"b"}, [])


@given(st.permutations(range(5)))
def test_same_plan_gives_byte_identical_config_whatever_the_order(order):
    """Serve's code version hashes import path and args: any drift would restart every replica on `up`."""
    backends = [_b(i, "d") for i in range(5)]
    one = sc.router_app(backends, tenants=[], audit_path="/a")
    two = sc.router_app([backends[i] for i in order], tenants=[], audit_path="/a")
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)


def test_the_router_leaves_per_request_records_to_the_audit_trail_not_to_serves_access_log():
    from ray.serve.schema import ServeDeploySchema

    app = sc.router_app([], tenants=[], audit_path=None)
    [router] = app["deployments"]
    assert router["logging_config"] == {"enable_access_log": False}
    # the declarative config Serve is given accepts it as written
    ServeDeploySchema.model_validate(sc.serve_config([app], host="127.0.0.1", port=8000))


def test_over_serve_http_replicas_answer_under_their_route_and_no_key_is_in_any_config():
    [rp] = _rps(_dep(), [target("onprem-paris", cloud="onprem", country="FR", gb=2)])
    http = sc.ServeHttp(8123)
    app = sc.model_app(rp, http)
    assert app["route_prefix"] == "/sovra-replica/sovra.chat.onprem-paris"
    assert app["import_path"] == sc.MODEL_HTTP_IMPORT and app["args"]["replica_key"] == "ray-token"
    actor = app["deployments"][0]["ray_actor_options"]
    assert actor == {"num_cpus": 0.25, "resources": {"sovra.target/onprem-paris": 0.001}}  # pinned; no runtime_env
    b = rt.backend_entry(rp, http)
    assert b.address == app["name"]  # Serve's replica states still tell the router when the app is down
    assert b.params == {"url": "http://127.0.0.1:8123/sovra-replica/sovra.chat.onprem-paris",
                        "api_key_env": "SOVRA_REPLICA_KEY"}
    router = sc.router_app([b], tenants=[], audit_path=None, http=http)
    assert sc.holds_replica_key(router) and not sc.holds_replica_key(sc.router_app([b], tenants=[], audit_path=None))
    # the key travels in no runtime_env (Ray writes those to its logs): the router's holds Serve's settings only
    assert "runtime_env" not in json.dumps(app)
    assert router["deployments"][0]["ray_actor_options"]["runtime_env"] == {"env_vars": sc.ROUTER_SERVE_ENV}
    # the same deployment's apps are recognised whichever way they answer
    assert [a["name"] for a in sc.merge([app, sc.model_app(rp)], {"chat"}, [])] == []


def test_the_replica_key_is_derived_from_the_ray_token_and_required_by_the_replica(monkeypatch, tmp_path):
    import hmac

    from sovra.orchestrator.serving import model_http

    token = tmp_path / "token"
    token.write_text("ray-cluster-token\n")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.setenv(model_http.KEY_VARIABLE, "")  # recorded, so the key this test installs is removed after it
    monkeypatch.delenv(model_http.KEY_VARIABLE)
    model_http.install_replica_key()
    key = model_http.os.environ[model_http.KEY_VARIABLE]
    assert key == hmac.new(b"ray-cluster-token", b"sovra replica key v1", "sha256").hexdigest()
    assert "ray-cluster-token" not in key
    monkeypatch.setenv("RAY_AUTH_TOKEN", "another")  # a process holding another cluster's token gets another key
    model_http.install_replica_key()
    assert model_http.os.environ[model_http.KEY_VARIABLE] != key
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    with pytest.raises(RuntimeError, match="no auth token"):  # no token: the replica does not start keyless
        model_http.install_replica_key()


def test_router_replicas_default_to_two_spread_on_several_nodes_and_one_on_the_head_of_a_single_node():
    from sovra.core.spec.org import RouterScale
    from sovra.infra.serve_config import HEAD_NODE_RESOURCE, router_deployment

    one = router_deployment(None, nodes=1)
    assert one["num_replicas"] == 1 and one["ray_actor_options"]["resources"] == {HEAD_NODE_RESOURCE: 0.001}
    two = router_deployment(None, nodes=3)
    assert two["num_replicas"] == 2 and "resources" not in two["ray_actor_options"]  # Serve's SPREAD places them
    fixed = router_deployment(RouterScale(replicas=4), nodes=1)
    assert fixed["num_replicas"] == 4 and "autoscaling_config" not in fixed
    auto = router_deployment(RouterScale.model_validate({"autoscaling": {"min": 2, "max": 6}}), nodes=2)
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 6, "target_ongoing_requests": 64}
    for d in (one, two, fixed, auto):
        assert d["logging_config"] == {"enable_access_log": False}


def test_router_scale_takes_one_form_and_sane_bounds():
    import pydantic
    import pytest

    from sovra.core.spec.org import RouterScale

    for bad, words in (({}, "either `replicas: N` or `autoscaling"),
                       ({"replicas": 2, "autoscaling": {"min": 1, "max": 2}}, "either"),
                       ({"autoscaling": {"min": 3, "max": 2}}, "max (2) is below min (3)"),
                       ({"replicas": 0}, "greater than or equal to 1")):
        with pytest.raises(pydantic.ValidationError, match=words.replace("(", r"\(").replace(")", r"\)")):
            RouterScale.model_validate(bad)


def test_owned_capacity_is_priced_per_token_in_the_ledger_only_where_the_org_says_how():
    from sovra.core.spec.org import Cluster

    def cluster(**extra):
        return Cluster.model_validate({
            "id": "onprem-paris", "provider": "ray", "country": "FR", "zone": "EU",
            "operator": {"name": "self", "jurisdiction": "FR"},
            "accelerators": [{"sku": "a100", "gpus": 1, "gpu_memory_gb": 2, "usd_per_hour": 1.46, "available": 4}],
            **extra})

    [plain] = _rps(_dep(), [cluster()])
    assert rt.backend_entry(plain).amortised_usd_per_1k_tokens is None  # paid for whatever it serves: 0 USD
    [said] = _rps(_dep(), [cluster(tokens_per_replica_hour=730_000)])
    b = rt.backend_entry(said)
    assert b.amortised_usd_per_1k_tokens == pytest.approx(1.46 / 730_000 * 1000)
    assert b.usd_per_1k_tokens is None  # still capacity already paid for: a spill's rung, no credit burnt per answer
    assert Backend.from_wire(b.to_wire()) == b
