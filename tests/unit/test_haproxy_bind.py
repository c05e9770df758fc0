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


def test_haproxys_503_gets_a_page_of_its_own_that_the_router_reads_as_no_replica_got_it():
    """Ray answers 502, 503 and 504 with one 500 page; the rewrite gives 503 (HAProxy connected to no replica)
    Sovra's page, whose marker the router's HTTP client turns into a refusal that takes the backend out."""
    import pytest

    from sovra.core.api_errors import Failed, Refused
    from sovra.providers.clients import _answer

    original = _rendered("*")
    errorfiles = [line.split() for line in original.splitlines() if line.strip().startswith("errorfile")]
    assert errorfiles == [["errorfile", code, "/ray/500.http"] for code in ("502", "503", "504")]
    bound = rewrite(original, "127.0.0.1", "/home/haproxy/sovra-503.http")
    errorfiles = [line.split() for line in bound.splitlines() if line.strip().startswith("errorfile")]
    assert errorfiles == [["errorfile", "502", "/ray/500.http"], ["errorfile", "503", "/home/haproxy/sovra-503.http"],
                          ["errorfile", "504", "/ray/500.http"]]  # a replica lost mid-request stays a failure
    head, body = NO_SERVER_PAGE.split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 503 ") and f"Content-Length: {len(body)}" in head
    with pytest.raises(Refused) as exc:
        _answer("onprem-paris", 503, body.encode())
    assert exc.value.down and exc.value.outcome == "refused"
    with pytest.raises(Failed):  # Ray's 500 page: the replica may have had it
        _answer("onprem-paris", 500, b"Internal Server Error")
