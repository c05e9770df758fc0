"""The Serve REST client against a local HTTP server standing in for Ray's dashboard (real HTTP, no Ray)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sovra.infra.ray_cluster import ClusterError
from sovra.infra.serve_api import APPS_PATH, ServeApi

CONTROLLER_DIED = "ray.exceptions.ActorDiedError: The actor died unexpectedly ... name: SERVE_CONTROLLER_ACTOR"


class Dashboard:
    """Answers each request with the next scripted (status, body); records (method, path)."""

    def __init__(self) -> None:
        self.script: list[tuple[int, str]] = []
        self.seen: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.seen.append((self.command, self.path))
                self.rfile.read(int(self.headers.get("content-length") or 0))
                status, body = outer.script.pop(0) if outer.script else (200, "{}")
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            do_GET = do_PUT = do_DELETE = _answer

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def dash() -> Iterator[Dashboard]:
    d = Dashboard()
    yield d
    d.server.shutdown()


def test_a_read_during_a_controller_change_is_asked_again(dash):
    """Right after `down` removed every application, Serve's controller is killed; the dashboard still held a handle
    to it and answers 500 once. The next read sees no applications."""
    dash.script = [(500, CONTROLLER_DIED), (200, json.dumps({"applications": {}}))]
    assert ServeApi(dash.url, token=None).apps() == {}
    assert dash.seen == [("GET", APPS_PATH), ("GET", APPS_PATH)]


def test_a_read_that_keeps_failing_says_what_ray_said(dash):
    dash.script = [(500, CONTROLLER_DIED)] * 3
    with pytest.raises(ClusterError, match="SERVE_CONTROLLER_ACTOR"):
        ServeApi(dash.url, token=None).details()
    assert len(dash.seen) == 3


def test_a_write_is_sent_once(dash):
    dash.script = [(500, "controller busy")]
    with pytest.raises(ClusterError, match="PUT"):
        ServeApi(dash.url, token=None).apply({"applications": []})
    assert dash.seen == [("PUT", APPS_PATH)]


def test_a_dashboard_traceback_becomes_its_innermost_error_in_one_sentence():
    from sovra.infra.serve_api import explain

    body = ("Traceback (most recent call last):\n  File \"/x/serve_head.py\", line 175, in put_all_applications\n"
            "    client = await serve_start_async(\n"
            "ray.exceptions.RayTaskError(RuntimeError): \x1b[36mray::HAProxyManager.ready()\x1b[39m (pid=1)\n"
            "  File \"/x/haproxy.py\", line 1226, in _wait_for_hap_availability\n"
            "RuntimeError: HAProxy did not come up: [ALERT] cannot bind socket [127.0.0.1:8000]\n")
    text = explain(body)
    assert text.startswith("RuntimeError: HAProxy did not come up: [ALERT] cannot bind socket [127.0.0.1:8000]")
    assert "Traceback" not in text and "File " not in text and "\n" not in text
    assert explain('{"detail": "bad config"}') == '{"detail": "bad config"}'
