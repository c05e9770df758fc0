"""Transport security over the real path, through the `sovra` console script as a user runs it.

- The router beyond loopback serves HTTPS: `up` refuses a plain-HTTP one before touching anything; the embedded
  local Ray started by `up` with the org's `tls` answers HTTPS (a `trustme` test CA, trusted the standard way:
  SSL_CERT_FILE), and `up`'s first request, `status` and `audit` reach it there.
- The Ray token goes to a dashboard only over https or to loopback: a real HTTP server standing in for a
  dashboard on an address that is not loopback by Sovra's rule (this machine's host name, and its non-loopback
  IP where it has one) never sees the token over plain http; it does over https, or when the org says the
  network is trusted (`insecure_dashboard: true`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Self

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sovra.infra.ray_cluster import free_port
from tests.integration.conftest import ROOT, SOVRA

pytestmark = [pytest.mark.integration]
trustme = pytest.importorskip("trustme")
TOKEN = "tok-ray-7d1c0e5f3b"
TENANT_KEY = "sk-test-transport"
TENANT = (f"  - {{name: t, key_sha256: {hashlib.sha256(TENANT_KEY.encode()).hexdigest()}, "
          "residency: {zones: [EU]}}\n")
DEPLOYMENT = """\
apiVersion: sovra/v1
kind: Deployment
metadata: {name: m}
spec:
  model: {name: m, gpu_memory_gb: 1}
  replicas: {min: 1, max: 1}
  residency: {zones: [EU]}
  serving: {engine: echo}
"""


def _cluster(cid: str, extra: str = "") -> str:
    return (f"  - {{id: {cid}, provider: ray, country: FR, operator: {{name: self, jurisdiction: FR}},{extra}\n"
            "     accelerators: [{sku: cpu, gpus: 1, gpu_memory_gb: 2, usd_per_hour: 0.0, available: 2}]}\n")


def _sovra(*args: str | Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(SOVRA), *map(str, args)], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's shell: no Ray token in the environment, Sovra's state in a home of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOVRA_", "RAY_AUTH_")) and k != "RAY_ADDRESS"}
    env.update(SOVRA_HOME=str(tmp_path / "sovra-home"), COLUMNS="200", NO_COLOR="1", **extra)
    return env


# --- a router beyond loopback ---------------------------------------------------------------------------------

def test_up_refuses_a_plain_http_router_on_every_interface_before_touching_anything(tmp_path):
    address = "https://203.0.113.7:8265"  # TEST-NET-3: nothing answers there
    org = tmp_path / "org.yaml"
    org.write_text("apiVersion: sovra/v1\nkind: Org\nclusters:\n"
                   + _cluster("onprem-lyon", f" address: '{address}',") + "tenants:\n" + TENANT)
    spec = tmp_path / "m.yaml"
    spec.write_text(DEPLOYMENT)
    t0 = time.monotonic()
    r = _sovra("up", spec, "--org", org, env=_env(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    err = " ".join(r.stderr.split())
    assert f"the router of cluster {address} (onprem-lyon) would listen on 0.0.0.0:8000, which is not loopback" in err
    assert "`tls: {cert_file:" in err and "`insecure_http: true`" in err, err
    assert "cannot reach" not in err and time.monotonic() - t0 < 30  # it never tried the cluster
    assert not (tmp_path / "sovra-home").exists()  # no local Ray started, no token written


def _tls_files(tmp_path: Path, *names: str) -> tuple[trustme.CA, Path, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert(*names)
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "router.crt", tmp_path / "router.key"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    key_file.chmod(0o600)
    return ca, ca_file, cert_file, key_file


@pytest.mark.slow
def test_the_local_router_serves_https_with_the_orgs_certificate(tmp_path):
    """The embedded local Ray started by `up`, its router given `tls` in org.yaml: HTTPS only, reached by `up`'s
    first request, `status` and `audit` over https, the key's path (never its content) in Serve's config; and a
    later `up` that drops `tls` is refused rather than silently kept in HTTPS (or the reverse)."""
    _, ca_file, cert_file, key_file = _tls_files(tmp_path, "127.0.0.1", "localhost")
    port = free_port()
    env = _env(tmp_path, HOME=str(tmp_path / "home"), SOVRA_ROUTER_PORT=str(port),
               SOVRA_RAY_DASHBOARD_PORT=str(free_port()), SOVRA_RAY_PORT=str(free_port()),
               SSL_CERT_FILE=str(ca_file))  # the company CA, as a user gives it
    (tmp_path / "home").mkdir()
    org = tmp_path / "org.yaml"
    tls = f" tls: {{cert_file: '{cert_file}', key_file: '{key_file}'}},"
    org.write_text("apiVersion: sovra/v1\nkind: Org\nclusters:\n" + _cluster("local", tls))
    spec = tmp_path / "m.yaml"
    spec.write_text(DEPLOYMENT)
    trust = ssl.create_default_context(cafile=str(ca_file))
    try:
        up = _sovra("up", spec, "--org", org, env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"router https://127.0.0.1:{port}" in up.stdout, up.stdout
        assert "answered via target local (zone EU)" in up.stdout, up.stdout  # the first request, over https
        r = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trust, timeout=10)
        assert r.status_code == 200, r.text
        chat = httpx.post(f"https://localhost:{port}/v1/chat/completions", verify=trust, timeout=30,
                          json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 200 and chat.headers["X-Sovra-Target"] == "local", chat.text
        with pytest.raises(httpx.HTTPError):  # no plain HTTP beside it
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).raise_for_status()
        with pytest.raises(httpx.ConnectError):  # and a client that does not trust the CA is refused
            httpx.get(f"https://127.0.0.1:{port}/healthz", verify=ssl.create_default_context(), timeout=5)

        status = _sovra("status", "--org", org, env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        out = " ".join(status.stdout.split())
        assert f"router https://127.0.0.1:{port} RUNNING, live" in out, out
        assert f"router serves HTTPS on 127.0.0.1:{port}" in out, out
        audit = _sovra("audit", "-o", "json", env=env)  # its default router URL: the local one, over https
        assert audit.returncode == 0, audit.stdout + audit.stderr
        assert any(rec.get("target") == "local" for rec in json.loads(audit.stdout)), audit.stdout

        from sovra.infra.ray_cluster import cluster_token
        from sovra.infra.serve_api import ServeApi

        dashboard = f"http://127.0.0.1:{env['SOVRA_RAY_DASHBOARD_PORT']}"
        details = ServeApi(dashboard, token=cluster_token(None, home=tmp_path / "sovra-home")).details()
        assert details["http_options"]["ssl_keyfile"] == str(key_file)
        key_body = key_file.read_text().split("-----")[2].strip().splitlines()[1]
        for text in (json.dumps(details), up.stdout + up.stderr, status.stdout + status.stderr):
            assert key_body not in text  # the key's path only, never its content

        org.write_text("apiVersion: sovra/v1\nkind: Org\nclusters:\n" + _cluster("local"))
        again = _sovra("up", spec, "--org", org, env=env)
        assert again.returncode == 1, again.stdout + again.stderr
        assert ("already runs its HTTP proxy in HTTPS, and cannot switch to plain HTTP while it runs: "
                "`sovra down FILE... --stop-ray`") in " ".join(again.stderr.split()), again.stderr
        assert httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trust, timeout=10).status_code == 200
    finally:
        down = _sovra("down", spec, "--org", org, "--stop-ray", env=env)
        assert down.returncode == 0, down.stdout + down.stderr


# --- the Ray token only over https or to loopback ---------------------------------------------------------------

class FakeDashboard:
    """A real HTTP(S) server answering the dashboard paths Sovra asks, recording each request's Authorization."""

    def __init__(self, host: str, *, certfile: Path | None = None, keyfile: Path | None = None,
                 details: dict | None = None):
        self.seen: list[tuple[str, str | None]] = []
        body = details or {"applications": {}}

        async def answer(request: Request) -> JSONResponse:
            self.seen.append((request.url.path, request.headers.get("authorization")))
            if request.url.path == "/api/v0/nodes":
                return JSONResponse({"data": {"result": {"result": []}}})
            return JSONResponse(body)

        app = Starlette(routes=[Route("/{path:path}", answer, methods=["GET", "PUT", "DELETE"])])
        ssl_args = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)} if certfile else {}
        self.port = 0
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning",
                                                    **ssl_args))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            assert time.time() < deadline, "the fake dashboard did not start"
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def tokens(self) -> list[str | None]:
        return [auth for _, auth in self.seen if auth]


def _non_loopback_ip() -> str | None:
    """This machine's address on its default route, if it has one (no packet is sent: UDP connect only)."""
    for probe in ("192.0.2.123", "10.255.255.255", "203.0.113.1"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((probe, 9))
            except OSError:
                continue
            ip = s.getsockname()[0]
            if not ip.startswith("127.") and ip != "0.0.0.0":
                return ip
    return None


def _remote_names() -> list[tuple[str, str]]:
    """(name in the org's address, address to bind): this machine's host name, which Sovra's rule treats as remote
    whatever it resolves to (127.0.0.1 on many machines), and its non-loopback IP where it has one."""
    out = []
    name = socket.gethostname()
    try:
        out.append((name, socket.gethostbyname(name)))
    except OSError:
        pass
    ip = _non_loopback_ip()
    if ip:
        out.append((ip, ip))
    return out


REMOTE = _remote_names()


def _org_with(tmp_path: Path, address: str, extra: str = "") -> Path:
    token = tmp_path / "ray.token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    org = tmp_path / "org.yaml"
    org.write_text("apiVersion: sovra/v1\nkind: Org\nclusters:\n"
                   + _cluster("onprem-lyon", f" address: '{address}', auth_token_file: '{token}', router_host: "
                                             f"127.0.0.1,{extra}") + "tenants:\n" + TENANT)
    return org


@pytest.mark.skipif(not REMOTE, reason="this machine has neither a resolvable host name nor a non-loopback address")
@pytest.mark.parametrize(("name", "bind"), REMOTE, ids=[n for n, _ in REMOTE])
def test_the_ray_token_never_reaches_a_plain_http_dashboard_that_is_not_loopback(tmp_path, name, bind):
    spec = tmp_path / "m.yaml"
    spec.write_text(DEPLOYMENT)
    with FakeDashboard(bind) as dash:
        address = f"http://{name}:{dash.port}"
        org = _org_with(tmp_path, address)
        status = _sovra("status", "--org", org, env=_env(tmp_path), timeout=120)
        assert status.returncode == 0, status.stdout + status.stderr
        out = " ".join(status.stdout.split())
        assert f"the Ray token for the dashboard at {address} would go in clear over http:// to {name}" in out, out
        assert "https://" in out and "`insecure_dashboard: true`" in out
        up = _sovra("up", spec, "--org", org, env=_env(tmp_path), timeout=120)
        assert up.returncode == 1, up.stdout + up.stderr
        assert "would go in clear" in " ".join(up.stderr.split()), up.stderr
        assert TOKEN not in status.stdout + status.stderr + up.stdout + up.stderr
        assert dash.tokens == [] and dash.seen == []  # nothing was sent there, the token least of all
        assert not (tmp_path / "sovra-home" / "ray").exists()  # `up` stopped before touching anything

        # The org says that network is trusted: then, and only then, the token goes over plain http
        org = _org_with(tmp_path, address, " insecure_dashboard: true,")
        status = _sovra("status", "--org", org, env=_env(tmp_path), timeout=120)
        assert status.returncode == 0, status.stdout + status.stderr
        assert dash.tokens and set(dash.tokens) == {f"Bearer {TOKEN}"}, dash.seen


@pytest.mark.skipif(not REMOTE, reason="this machine has neither a resolvable host name nor a non-loopback address")
@pytest.mark.parametrize("ca_variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"])
def test_the_ray_token_goes_to_an_https_dashboard_verified_with_the_company_ca(tmp_path, ca_variable):
    name, bind = REMOTE[0]
    _, ca_file, cert_file, key_file = _tls_files(tmp_path, name, bind)
    with FakeDashboard(bind, certfile=cert_file, keyfile=key_file) as dash:
        org = _org_with(tmp_path, f"https://{name}:{dash.port}")
        env = _env(tmp_path)
        for var in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"):
            env.pop(var, None)
        untrusted = _sovra("status", "--org", org, env=env, timeout=120)  # certifi's CAs only: refused
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stdout, untrusted.stdout + untrusted.stderr
        assert dash.tokens == []  # the handshake failed before any header left
        env[ca_variable] = str(ca_file)
        status = _sovra("status", "--org", org, env=env, timeout=120)
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"(dashboard https://{name}:{dash.port})" in " ".join(status.stdout.split()), status.stdout
        assert set(dash.tokens) == {f"Bearer {TOKEN}"}, dash.seen


def test_status_warns_of_a_router_in_plain_http_beyond_loopback(tmp_path):
    """A cluster whose router the org lets serve plain HTTP on every interface (`insecure_http: true`): `status`
    says so, from what Serve itself reports (a dashboard on loopback, so the token may go there)."""
    router_port = free_port()
    details = {"applications": {"sovra-router": {
                   "status": "RUNNING", "message": "", "deployments": {},
                   "deployed_app_config": {"name": "sovra-router", "args": {"backends": []}}}},
               "http_options": {"host": "0.0.0.0", "port": router_port}}
    with FakeDashboard("127.0.0.1", details=details) as dash:
        address = f"http://127.0.0.1:{dash.port}"
        token = tmp_path / "ray.token"
        token.write_text(TOKEN)
        org = tmp_path / "org.yaml"
        org.write_text("apiVersion: sovra/v1\nkind: Org\nclusters:\n"
                       + _cluster("onprem-lyon", f" address: '{address}', auth_token_file: '{token}', "
                                                 f"router_port: {router_port}, insecure_http: true,")
                       + "tenants:\n" + TENANT)
        status = _sovra("status", "--org", org, env=_env(tmp_path), timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    err = " ".join(status.stderr.split())
    assert (f"warning: router of {address}: plain HTTP on 0.0.0.0, which is not loopback: tenants' keys, prompts "
            "and answers cross the network in clear (give the cluster `tls` in org.yaml)") in err, status.stderr
    assert f"router http://127.0.0.1:{router_port}" in " ".join(status.stdout.split())
