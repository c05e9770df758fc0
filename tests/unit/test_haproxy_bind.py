"""HAProxy's internal listeners are bound to one address: the rewrite over Ray's own config template (rendered by
the same Jinja as Ray renders it), which binds them to every interface."""

from types import SimpleNamespace

import jinja2
from ray.serve._private.haproxy import _haproxy_fmt_literal
from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

from sovra.infra.haproxy_bind import NO_SERVER_PAGE, rewrite


def _rendered(frontend_host: str) -> str:
    config = SimpleNamespace(metrics_port=9101, stats_port=8404, frontend_host=frontend_host, frontend_port=8000,
                             stats_uri="/stats", metrics_uri="/metrics",
                             error_file_path="/ray/500.http")
    env = jinja2.Environment()
    env.filters["haproxy_fmt"] = _haproxy_fmt_literal  # as Ray's HAProxyManager sets up its environment
    return env.from_string(HAPROXY_CONFIG_TEMPLATE).render(
        config=config, backends=[], grpc_backends=[], backends_with_health_config=[],
        grpc_backends_with_health_config=[], route_info=SimpleNamespace(routes={}), healthz_rules="",
        grpc_healthz_rules="")


def _binds(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("bind ")]


def test_ray_binds_stats_and_metrics_everywhere_and_the_rewrite_binds_them_to_loopback():
    original = _rendered("*")
    assert _binds(original) == ["bind :9101", "bind *:8000", "bind *:8404"]  # Ray's template, as shipped
    bound = rewrite(original, "127.0.0.1")
    assert _binds(bound) == ["bind 127.0.0.1:9101", "bind *:8000", "bind 127.0.0.1:8404"]  # the router's stays
    assert [x for x in bound.splitlines() if "bind" not in x] == [x for x in original.splitlines() if "bind" not in x]


def test_the_router_frontend_keeps_the_orgs_host_and_a_rewritten_config_is_stable():
    bound = rewrite(_rendered("10.0.0.5"), "127.0.0.1")
    assert "bind 10.0.0.5:8000" in _binds(bound)
    assert rewrite(bound, "127.0.0.1") == bound


def test_haproxys_errors_get_pages_of_their_own_that_the_router_reads_for_what_they_mean():
    """Ray answers 502, 503 and 504 with one 500 page; the rewrite gives each Sovra's own page with its status. 503
    (HAProxy connected to no replica) carries the marker the router's HTTP client turns into a refusal that takes
    the backend out; 502 (the replica holding it went away) and 504 (it did not answer in time) stay failures that
    may have been processed, never resent; a client reads each as an OpenAI-style error."""
    import json

    import pytest

    from sovra.core.api_errors import Failed, Refused, TimedOut
    from sovra.infra.haproxy_bind import PAGES, REPLICA_LOST_PAGE, REPLICA_TIMEOUT_PAGE
    from sovra.providers.clients import _answer

    original = _rendered("*")
    errorfiles = [line.split() for line in original.splitlines() if line.strip().startswith("errorfile")]
    assert errorfiles == [["errorfile", code, "/ray/500.http"] for code in ("502", "503", "504")]
    bound = rewrite(original, "127.0.0.1", {code: f"/home/haproxy/{name}" for code, (name, _) in PAGES.items()})
    errorfiles = [line.split() for line in bound.splitlines() if line.strip().startswith("errorfile")]
    assert errorfiles == [["errorfile", code, f"/home/haproxy/sovra-{code}.http"] for code in ("502", "503", "504")]
    assert rewrite(original, "127.0.0.1", {"503": "/x/sovra-503.http"}).count("/ray/500.http") == 2  # only those given
    for status, page in (("503", NO_SERVER_PAGE), ("502", REPLICA_LOST_PAGE), ("504", REPLICA_TIMEOUT_PAGE)):
        head, body = page.split("\r\n\r\n", 1)
        assert head.startswith(f"HTTP/1.1 {status} ") and f"Content-Length: {len(body.encode())}" in head
        assert "Content-Type: application/json" in head
        assert set(json.loads(body)["error"]) == {"message", "type", "code"}
    body = NO_SERVER_PAGE.split("\r\n\r\n", 1)[1].encode()
    with pytest.raises(Refused) as exc:
        _answer("onprem-paris", 503, body, ingress=True)
    assert exc.value.down and exc.value.outcome == "refused"
    with pytest.raises(Refused) as exc:  # any other backend writing the marker: a plain refusal, not taken out
        _answer("azure-foundry/westeurope", 503, body)
    assert not exc.value.down
    with pytest.raises(Failed):  # the replica may have had it
        _answer("onprem-paris", 502, REPLICA_LOST_PAGE.split("\r\n\r\n", 1)[1].encode())
    with pytest.raises(TimedOut):
        _answer("onprem-paris", 504, REPLICA_TIMEOUT_PAGE.split("\r\n\r\n", 1)[1].encode())
    with pytest.raises(Failed):  # Ray's 500 page (a cluster Sovra did not start): the replica may have had it
        _answer("onprem-paris", 500, b"Internal Server Error")


def test_the_local_ray_pins_haproxys_retries_to_connections_that_failed(tmp_path, monkeypatch):
    """Only a connection that failed is retried (nothing was sent): an inherited `empty-response` or
    `response-timeout` would resend what a replica may have processed, and the router would read HAProxy's last
    answer (the no-live-replica page) as a refusal and send it once more."""
    from sovra.infra.ray_cluster import ingress_env
    from sovra.infra.ray_ports import RayPorts

    monkeypatch.setenv("RAY_SERVE_HAPROXY_RETRY_ON", "conn-failure empty-response response-timeout")
    monkeypatch.setenv("RAY_SERVE_HAPROXY_INGRESS_RETRY_ON", "all-retryable-errors")
    ports = RayPorts.choose(router=28000, gcs=26379, dashboard=28265, workers=(10002, 19999))
    env = ingress_env(tmp_path, ports, haproxy=True)
    assert env["RAY_SERVE_HAPROXY_RETRY_ON"] == env["RAY_SERVE_HAPROXY_INGRESS_RETRY_ON"] == "conn-failure"
    assert "RAY_SERVE_HAPROXY_RETRY_ON" not in ingress_env(tmp_path, ports, haproxy=False)  # Serve's own proxy


def test_the_wrapper_writes_its_pages_once_byte_for_byte(tmp_path, monkeypatch):
    """Serve reloads HAProxy on every replica change: the pages are written when missing or different (compared as
    bytes: their CRLFs), atomically, and the config's error lines point at them."""
    import os

    from sovra.infra import haproxy_bind

    config = tmp_path / "haproxy.cfg"
    config.write_text(_rendered("127.0.0.1"))
    calls = []
    monkeypatch.setattr(os, "execv", lambda real, argv: calls.append(argv))  # the real binary is not run here
    monkeypatch.setenv(haproxy_bind.REAL_ENV, "/bin/true")
    monkeypatch.setenv(haproxy_bind.HOST_ENV, "127.0.0.1")
    haproxy_bind.main(["-f", str(config)])
    stamps = {name: (tmp_path / name).stat().st_mtime_ns for name, _ in haproxy_bind.PAGES.values()}
    for code, (name, page) in haproxy_bind.PAGES.items():
        assert (tmp_path / name).read_bytes() == page.encode()
        assert f"errorfile {code} {tmp_path / name}" in config.read_text()
    haproxy_bind.main(["-f", str(config)])
    assert {name: (tmp_path / name).stat().st_mtime_ns for name, _ in haproxy_bind.PAGES.values()} == stamps
    assert calls == [["/bin/true", "-f", str(config)]] * 2
