"""The local Ray's ports: every one chosen before `ray start`, distinct, outside Ray's worker range, and checked free
against real sockets, each refusal naming the port and the setting that moves it."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings, strategies as st

from sovra.infra.ray_ports import PortError, RayPorts, parse_range, port_free


def _ports(**given_ports) -> RayPorts:
    return RayPorts.choose(router=given_ports.get("router", 28000), gcs=given_ports.get("gcs", 26379),
                           dashboard=given_ports.get("dashboard", 28265),
                           workers=given_ports.get("workers", (10002, 19999)))


def test_every_port_ray_and_serve_open_is_given_explicitly():
    p = _ports()
    args = p.start_args()
    for flag in ("--port", "--dashboard-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                 "--ray-client-server-port", "--node-manager-port", "--object-manager-port", "--metrics-export-port",
                 "--runtime-env-agent-port", "--min-worker-port", "--max-worker-port"):
        assert flag in args
    env = p.serve_env()  # Ray's fixed defaults (8500, 9500, 8404, 9101) are never used
    assert set(env) == {"RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
                        "RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"}
    assert not {"8500", "9500", "8404", "9101"} & set(env.values())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1024, 65535), min_size=20, max_size=20))
def test_chosen_ports_are_distinct_and_outside_the_worker_range(picks):
    it = iter(picks + list(range(40000, 40100)))
    p = RayPorts.choose(router=8000, gcs=6379, dashboard=8265, workers=(10002, 19999), pick=lambda: next(it))
    numbers = [n for _, n in p.singles()]
    assert len(set(numbers)) == len(numbers)
    assert not any(10002 <= n <= 19999 for n in numbers)


def test_a_setting_inside_the_worker_range_is_refused_with_both_settings_named():
    with pytest.raises(PortError) as exc:
        _ports(gcs=16379).check(free=lambda _p: True)
    text = str(exc.value)
    assert "GCS (port 16379)" in text and "SOVRA_RAY_PORT" in text and "SOVRA_RAY_WORKER_PORTS" in text


def test_two_settings_on_one_port_are_refused():
    with pytest.raises(PortError, match="router and GCS are both set to port 9000|GCS and router"):
        _ports(router=9000, gcs=9000).check(free=lambda _p: True)


def test_a_taken_router_port_is_found_before_anything_starts():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert not port_free(port)
        with pytest.raises(PortError) as exc:
            _ports(router=port, workers=(2000, 2100)).check()
    assert f"port {port}" in str(exc.value) and "SOVRA_ROUTER_PORT" in str(exc.value)
    assert port_free(port)  # closed: free again


def test_an_internal_port_taken_asks_for_another_start_not_a_setting():
    p = _ports()
    with pytest.raises(PortError, match=r"HAProxy stats listener.*run `sovra up` again \(a free one is picked at each start\)"):
        p.check(free=lambda n: n != p.haproxy_stats)


def test_a_bad_range_is_a_sentence():
    with pytest.raises(PortError, match="SOVRA_RAY_WORKER_PORTS='ten' is not a port range"):
        parse_range("ten", "SOVRA_RAY_WORKER_PORTS")
    with pytest.raises(PortError, match="not a range of ports above 1023"):
        _ports(workers=(20, 10)).check(free=lambda _p: True)
