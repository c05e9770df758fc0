"""A Ray target's place is enforced: its replicas ask for its resource, `up` refuses a target no alive node
carries, and a router with no tenants never listens beyond loopback. Pure parts, no Ray."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import pytest
from pydantic import ValidationError

from sovra.infra import serve_config as sc
from sovra.infra.ray_cluster import Node
from sovra.orchestrator import deploy
from sovra.orchestrator.planning import Inputs
from sovra.core.spec.org import Cluster, Org

REMOTE = "http://ray-head.example:8265"


def cluster(cid: str, **extra: Any) -> dict[str, Any]:
    return {"id": cid, "provider": "ray", "country": "FR", "zone": "EU", "operator": {"name": "self", "jurisdiction": "FR"},
            "accelerators": [{"sku": "cpu", "gpus": 1, "gpu_memory_gb": 2, "usd_per_hour": 1.0}], **extra}


TENANT = {"name": "eu", "key_sha256": hashlib.sha256(b"k").hexdigest(), "residency": {"zones": ["EU"]}}


class FakeDashboard:
    """What `check_places` reads of a cluster: its alive nodes."""

    dashboard = REMOTE

    def __init__(self, *resources: dict[str, float]):
        self.nodes = [Node(f"n{i}", "10.0.0.1", r) for i, r in enumerate(resources)]

    def alive_nodes(self) -> list[Node]:
        return self.nodes


def test_target_resource_is_the_target_id_verbatim():
    assert sc.target_resource("onprem-paris") == "sovra.target/onprem-paris"
    assert sc.target_resource("ray/dc-fr-001") == "sovra.target/ray/dc-fr-001"


def test_unplaced_targets_are_those_no_node_carries():
    nodes = [{"CPU": 2.0, "sovra.target/paris": 1000.0}, {"CPU": 1.0, "sovra.target/virginia": 0.0}]
    assert sc.unplaced_targets(nodes, ["paris", "virginia", "berlin", "paris"]) == ["berlin", "virginia"]
    assert sc.unplaced_targets([], ["paris"]) == ["paris"]


def test_up_refuses_a_target_no_alive_node_carries_and_gives_the_ray_start_flag():
    api = FakeDashboard({"CPU": 8.0, "sovra.target/onprem-paris": 1000.0}, {"CPU": 8.0})
    deploy.check_places(api, REMOTE, ["onprem-paris"])  # carried: nothing to say
    with pytest.raises(deploy.DeployError) as exc:
        deploy.check_places(api, REMOTE, ["onprem-paris", "onprem-lyon"])
    msg = str(exc.value)
    assert f"the Ray cluster at {REMOTE} has no alive node for target onprem-lyon" in msg
    assert """ray start ... --resources '{"sovra.target/onprem-lyon": 1000}'""" in msg


def test_the_local_ray_missing_a_target_says_to_restart_it():
    with pytest.raises(deploy.DeployError, match=r"--stop-ray"):
        deploy.check_places(FakeDashboard({"CPU": 2.0}), deploy.LOCAL, ["local"])


def test_router_binding_defaults_and_its_fields_are_for_clusters_with_an_address():
    c = Cluster.model_validate(cluster("paris", address=REMOTE))
    assert (c.router_host, c.router_port, c.auth_token_file) == ("0.0.0.0", 8000, None)
    with pytest.raises(ValidationError, match=r"router_port apply to a cluster with an `address`"):
        Cluster.model_validate(cluster("local", router_port=9000))


def test_clusters_sharing_an_address_must_agree_on_their_router_and_token():
    Org.model_validate({"clusters": [cluster("a", address=REMOTE, router_port=9000),
                                     cluster("b", address=REMOTE, router_port=9000)]})
    for diff in ({"router_port": 9001}, {"router_host": "10.0.0.5"}, {"auth_token_file": "/etc/ray/token"}):
        with pytest.raises(ValidationError, match=r"clusters a, b share address .* give them the same values"):
            Org.model_validate({"clusters": [cluster("a", address=REMOTE, router_port=9000),
                                             cluster("b", address=REMOTE, **{"router_port": 9000, **diff})]})


def _inputs(tenants: list[dict[str, Any]], **fields: Any) -> Inputs:
    org = Org.model_validate({"clusters": [cluster("paris", address=REMOTE, **fields)], "tenants": tenants})
    return Inputs((), org, org.clusters, dt.date(2026, 11, 22))


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "::", "ray-head.example"])
def test_an_open_router_is_refused_beyond_loopback_with_both_fixes(host):
    settings = deploy.Settings(router_port=8000)
    with pytest.raises(deploy.DeployError) as exc:
        deploy.refuse_open_router(REMOTE, _inputs([], router_host=host), settings)
    msg = str(exc.value)
    assert f"listen on {host}:8000" in msg and "Add tenants with key_sha256" in msg
    assert "`router_host: 127.0.0.1` on cluster paris" in msg


@pytest.mark.parametrize(("tenants", "host"), [([], "127.0.0.1"), ([], "::1"), ([], "localhost"),
                                               ([TENANT], "0.0.0.0")])
def test_a_router_on_loopback_or_with_tenants_may_be_deployed(tenants, host):
    deploy.refuse_open_router(REMOTE, _inputs(tenants, router_host=host), deploy.Settings(router_port=8000))
    deploy.refuse_open_router(deploy.LOCAL, _inputs([]), deploy.Settings(router_port=8000))  # local: loopback


def test_a_remote_router_is_bound_and_reached_where_the_org_says():
    inputs = _inputs([TENANT], router_host="0.0.0.0", router_port=9100)
    settings = deploy.Settings(router_port=8000)
    assert deploy._http(REMOTE, settings, inputs.targets) == ("0.0.0.0", 9100)
    assert deploy.router_url(REMOTE, settings, inputs.targets) == "http://ray-head.example:9100"
    assert deploy.router_url(deploy.LOCAL, settings, inputs.targets) == "http://127.0.0.1:8000"


def test_the_router_runs_on_the_head_node_beside_serves_proxy():
    app = sc.router_app([], tenants=[], audit_path=None)
    assert app["deployments"][0]["ray_actor_options"]["resources"] == {"node:__internal_head__": 0.001}
