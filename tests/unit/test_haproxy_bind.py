"""HAProxy's internal listeners are bound to one address: the rewrite over Ray's own config template (rendered by
the same Jinja as Ray renders it), which binds them to every interface."""

from types import SimpleNamespace

import jinja2
from ray.serve._private.haproxy import _haproxy_fmt_literal
from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

from sovra.infra.haproxy_bind import rewrite


def _rendered(frontend_host: str) -> str:
    config = SimpleNamespace(metrics_port=9101, stats_port=8404, frontend_host=frontend_host, frontend_port=8000,
                             stats_uri="/stats", metrics_uri="/metrics")
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
