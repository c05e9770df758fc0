"""Transport security, the pure parts: what counts as loopback, which CAs Sovra's clients trust, a router beyond
loopback only over HTTPS (or with the org's explicit `insecure_http`), the Ray token never in clear to a remote
dashboard, and the derived key of a KubeRay service that the router derives too. No server."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import ssl
from typing import Any

import pytest
from pydantic import ValidationError

from sovra.infra import serve_config as sc
from sovra.infra.ray_cluster import ClusterError
from sovra.infra.serve_api import ServeApi
from sovra.infra.transport import client_trust, is_loopback
from sovra.orchestrator import deploy
from sovra.orchestrator.planning import Inputs
from sovra.core.spec.org import Cluster, Org
from sovra.policies.plan import DeploymentPlan, FleetPlan, Placement
from tests.factories import deployment

REMOTE = "http://ray-head.example:8265"
TENANT = {"name": "eu", "key_sha256": hashlib.sha256(b"k").hexdigest(), "residency": {"zones": ["EU"]}}
TLS = {"cert_file": "/etc/sovra/router.crt", "key_file": "/etc/sovra/router.key"}
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"


def cluster(cid: str, **extra: Any) -> dict[str, Any]:
    return {"id": cid, "provider": "ray", "country": "FR", "zone": "EU", "operator": {"name": "self", "jurisdiction": "FR"},
            "accelerators": [{"sku": "cpu", "gpus": 1, "gpu_memory_gb": 2, "usd_per_hour": 1.0}], **extra}


def _inputs(**fields: Any) -> Inputs:
    org = Org.model_validate({"clusters": [cluster("paris", address=REMOTE, **fields)], "tenants": [TENANT]})
    return Inputs((), org, org.clusters, dt.date(2026, 11, 22))


# --- loopback and trust ------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST", "localhost."])
def test_loopback_is_an_ip_literal_in_127_8_or_ipv6_1_or_localhost(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "192.0.2.2", "ray-head.example", "vm",
                                  "localhost.example.com", "127.0.0.1.nip.io", "", None])
def test_any_other_address_is_remote_even_a_name_that_resolves_to_loopback(host):
    assert not is_loopback(host)


def test_client_trust_takes_a_company_ca_from_requests_ca_bundle(monkeypatch, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    bundle = tmp_path / "company-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    for var in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    def subjects(ctx):
        return [dict(x[0] for x in c["subject"]) for c in ctx.get_ca_certs()]

    assert not any(s.get("organizationName", "").startswith("trustme") for s in subjects(client_trust()))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    ctx = client_trust()
    assert any(s.get("organizationName", "").startswith("trustme") for s in subjects(ctx))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


# --- the router's TLS settings in org.yaml ------------------------------------------------------------------

def test_tls_is_two_paths_on_the_routers_node_never_the_key_itself():
    c = Cluster.model_validate(cluster("paris", address=REMOTE, tls=TLS))
    assert (c.tls.cert_file, c.tls.key_file) == (TLS["cert_file"], TLS["key_file"])
    with pytest.raises(ValidationError) as exc:
        Cluster.model_validate(cluster("paris", address=REMOTE, tls={**TLS, "key_file": PEM}))
    assert "not its content" in str(exc.value) and "MIIE" not in str(exc.value)  # the key is not echoed
    with pytest.raises(ValidationError, match="an absolute path on the router's node"):
        Cluster.model_validate(cluster("paris", address=REMOTE, tls={**TLS, "cert_file": "router.crt"}))
    local = Cluster.model_validate(cluster("local", tls=TLS))  # the local Ray's router may serve HTTPS too
    assert local.tls is not None
    for field in ("insecure_http", "insecure_dashboard"):
        with pytest.raises(ValidationError, match=rf"{field} apply to a cluster with an `address`"):
            Cluster.model_validate(cluster("local", **{field: True}))


def test_clusters_sharing_a_router_must_agree_on_its_tls(tmp_path):
    for a, b in (({"address": REMOTE, "tls": TLS}, {"address": REMOTE}),
                 ({"address": REMOTE, "insecure_http": True}, {"address": REMOTE}),
                 ({"address": REMOTE, "insecure_dashboard": True}, {"address": REMOTE})):
        with pytest.raises(ValidationError, match=r"clusters a, b share .* tls, insecure_http or insecure_dashboard"):
            Org.model_validate({"clusters": [cluster("a", **a), cluster("b", **b)]})
    # address-less ray clusters are all the local Ray: which providers those are is the adapters' to say, so the
    # check runs where org.yaml is loaded
    import json

    from sovra.core.errors import SpecError
    from sovra.orchestrator.catalog import load_org

    org_file = tmp_path / "org.yaml"
    org_file.write_text(json.dumps({"clusters": [cluster("a", tls=TLS), cluster("b")]}))
    with pytest.raises(SpecError, match=r"clusters a, b share the local Ray .* tls, insecure_http"):
        load_org(org_file)


# --- a router beyond loopback serves HTTPS -----------------------------------------------------------------

@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "::", "ray-head.example"])
def test_a_router_beyond_loopback_without_tls_is_refused_naming_cluster_field_and_fix(host):
    with pytest.raises(deploy.DeployError) as exc:
        deploy.refuse_plain_router(REMOTE, _inputs(router_host=host), deploy.Settings(router_port=8000))
    msg = str(exc.value)
    assert f"the router of cluster {REMOTE} (paris) would listen on {host}:8000, which is not loopback" in msg
    assert "`tls: {cert_file:" in msg and "`insecure_http: true`" in msg and "`router_host: 127.0.0.1`" in msg


@pytest.mark.parametrize("fields", [{"router_host": "0.0.0.0", "tls": TLS}, {"router_host": "10.0.0.5",
                                    "insecure_http": True}, {"router_host": "127.0.0.1"}, {"router_host": "::1"}])
def test_a_router_with_tls_on_loopback_or_on_a_trusted_network_may_be_deployed(fields):
    deploy.refuse_plain_router(REMOTE, _inputs(**fields), deploy.Settings(router_port=8000))
    deploy.refuse_plain_router(deploy.LOCAL, _inputs(), deploy.Settings(router_port=8000))  # local: loopback


def test_a_router_with_tls_is_reached_over_https_and_serve_gets_the_paths():
    inputs = _inputs(router_host="0.0.0.0", router_port=9443, tls=TLS)
    assert deploy.router_url(REMOTE, deploy.Settings(), inputs.targets) == "https://ray-head.example:9443"
    tls = deploy.router_tls(REMOTE, inputs.targets)
    config = sc.serve_config([], host="0.0.0.0", port=9443, tls=tls)
    assert config["http_options"] == {"host": "0.0.0.0", "port": 9443, "ssl_certfile": TLS["cert_file"],
                                      "ssl_keyfile": TLS["key_file"]}
    assert sc.serve_config([], host="127.0.0.1", port=8000)["http_options"] == {"host": "127.0.0.1", "port": 8000}


class RunningServe:
    """What `_check_http_options` reads of a cluster: Serve's running HTTP options (none: Serve not started)."""

    def __init__(self, options: dict[str, Any] | None):
        self.options = options

    def details(self) -> dict[str, Any]:
        return {"applications": {}, **({"http_options": self.options} if self.options else {})}


def test_serve_running_in_plain_http_is_not_silently_kept_when_the_org_wants_https():
    """Serve keeps its HTTP options while it runs (a PUT with others only logs a warning): refuse, with the fix."""
    wanted = sc.http_options(host="0.0.0.0", port=8000, tls=deploy.router_tls(REMOTE, _inputs(tls=TLS).targets))
    deploy._check_http_options(RunningServe(None), REMOTE, wanted)  # not started: the PUT starts it with TLS
    deploy._check_http_options(RunningServe({**wanted, "keep_alive_timeout_s": 5}), REMOTE, wanted)
    with pytest.raises(deploy.DeployError, match=r"already runs its HTTP proxy in plain HTTP, and cannot switch to "
                                                 r"HTTPS while it runs: remove its Serve applications"):
        deploy._check_http_options(RunningServe({"host": "0.0.0.0", "port": 8000, "ssl_certfile": None}), REMOTE,
                                   wanted)
    with pytest.raises(deploy.DeployError, match=r"runs its HTTP proxy in HTTPS.*--stop-ray"):
        deploy._check_http_options(RunningServe(wanted), deploy.LOCAL, {"host": "127.0.0.1", "port": 8000})


def test_status_says_how_the_router_is_reached():
    url, info = deploy.router_transport("http://10.0.0.5:8000", {"host": "0.0.0.0", "port": 8000})
    assert url == "http://10.0.0.5:8000" and info["https"] is False
    assert "plain HTTP on 0.0.0.0, which is not loopback" in info["warning"]
    url, info = deploy.router_transport("http://10.0.0.5:8000", {"host": "0.0.0.0", "port": 8000,
                                                                "ssl_certfile": TLS["cert_file"]})
    assert url == "https://10.0.0.5:8000" and info == {"https": True, "listen": "0.0.0.0:8000"}
    url, info = deploy.router_transport("http://127.0.0.1:8000", {"host": "127.0.0.1", "port": 8000})
    assert info == {"https": False, "listen": "127.0.0.1:8000"}  # loopback: nothing crosses a network


# --- the Ray token only over https or to loopback -----------------------------------------------------------

def test_the_ray_token_is_never_sent_in_clear_to_a_remote_dashboard():
    with pytest.raises(ClusterError) as exc:
        ServeApi(REMOTE, token="tok-123")
    msg = str(exc.value)
    assert "the Ray token for the dashboard at http://ray-head.example:8265 would go in clear" in msg
    assert "https://" in msg and "`insecure_dashboard: true`" in msg and "tok-123" not in msg
    for ok in ({"dashboard": "https://ray-head.example:8265", "token": "tok-123"},
               {"dashboard": "http://127.0.0.1:8265", "token": "tok-123"},
               {"dashboard": "http://[::1]:8265", "token": "tok-123"},
               {"dashboard": REMOTE, "token": None},  # nothing secret to send
               {"dashboard": REMOTE, "token": "tok-123", "insecure_http": True}):  # the org says it is trusted
        ServeApi(ok.pop("dashboard"), **ok)


def test_up_refuses_a_plain_http_remote_dashboard_before_touching_anything(monkeypatch, tmp_path):
    token = tmp_path / "token"
    token.write_text("tok-123")
    for address in (REMOTE, "ray://ray-head.example:10001"):
        inputs = _inputs(router_host="127.0.0.1", auth_token_file=str(token)) if address == REMOTE else Inputs(
            (), (org := Org.model_validate({"clusters": [cluster("p", address=address, router_host="127.0.0.1",
                                                                 auth_token_file=str(token))], "tenants": [TENANT]})),
            org.clusters, dt.date(2026, 11, 22))
        with pytest.raises(ClusterError, match="would go in clear over http:// to ray-head.example"):
            deploy._refuse_token_in_clear(address, deploy.Settings(home=tmp_path), inputs.targets)
    ok = _inputs(router_host="127.0.0.1", auth_token_file=str(token), insecure_dashboard=True)
    deploy._refuse_token_in_clear(REMOTE, deploy.Settings(home=tmp_path), ok.targets)


# --- KubeRay: a key the org did not name is derived, and the router derives the same ---------------------------

def _kuberay_inputs(*extra_clusters: dict[str, Any], placements_on: tuple[str, ...] = ("k8s",), **provision: Any
                    ) -> tuple[Inputs, FleetPlan]:
    k8s = {**cluster("k8s", provider="kubernetes", address="paris-gpu"),
           "provision": {"image": "registry.internal/sovra-ray:1", **provision}}
    org = Org.model_validate({"clusters": [k8s, *extra_clusters], "tenants": [TENANT]})
    d = deployment("d", residency={"zones": ["EU"]})
    plan = DeploymentPlan("d", True, tuple(
        Placement(target=t.id, provider=t.provider, zone=t.zone, country=t.country, replicas=1, accelerator="cpu",
                  compute_usd=1.0, credits_usd=0.0, egress_usd=0.0) for t in org.clusters if t.id in placements_on),
        ())
    return Inputs((d,), org, org.clusters, dt.date(2026, 11, 22)), FleetPlan((plan,))


def test_a_kuberay_service_without_api_key_env_gets_a_key_the_local_router_derives_too(monkeypatch, tmp_path):
    from sovra.orchestrator.provisioning import service_keys
    from sovra.orchestrator.serving import model_http

    monkeypatch.setenv("SOVRA_HOME", str(tmp_path))
    inputs, plan = _kuberay_inputs()
    keys = service_keys(inputs, plan)
    token_file = tmp_path / "ray" / "auth_token"  # the local Ray's token, created here as `up` would
    assert set(keys) == {"k8s"} and token_file.read_text().strip() not in keys["k8s"]
    assert service_keys(inputs, plan) == keys  # stable: the Secret does not change from one `up` to the next
    # the router on the local Ray derives the same key into the variable the stack output names
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    monkeypatch.setenv(model_http.SERVICE_KEY_ENV, "")  # recorded, so the key this test installs is removed after it
    monkeypatch.delenv(model_http.SERVICE_KEY_ENV)
    model_http.install_replica_key(model_http.SERVICE_KEY_ENV, model_http.SERVICE_PURPOSE)
    assert os.environ[model_http.SERVICE_KEY_ENV] == keys["k8s"]
    model_http.install_replica_key(model_http.SERVICE_KEY_ENV)  # the HAProxy replicas' key is another one
    assert os.environ[model_http.SERVICE_KEY_ENV] != keys["k8s"]
    named, plan = _kuberay_inputs(api_key_env="PARIS_KEY")
    assert service_keys(named, plan) == {}  # the org's own key: nothing to derive


def test_a_derived_key_needs_one_router_with_a_known_token(monkeypatch, tmp_path):
    from sovra.core.errors import ProvisionError
    from sovra.orchestrator.provisioning import service_keys

    monkeypatch.setenv("SOVRA_HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    lyon = cluster("lyon", address="https://ray-lyon.example:8265")
    inputs, plan = _kuberay_inputs(lyon, placements_on=("k8s", "lyon"))
    with pytest.raises(ProvisionError, match=r"needs a key, derived from the Ray token of the cluster whose router "
                                             r"reaches it \(https://ray-lyon.example:8265\).*api_key_env"):
        service_keys(inputs, plan)
    inputs, plan = _kuberay_inputs(lyon, cluster("local"), placements_on=("k8s", "lyon", "local"))
    with pytest.raises(ProvisionError, match=r"routers of several Ray clusters.*api_key_env"):
        service_keys(inputs, plan)
