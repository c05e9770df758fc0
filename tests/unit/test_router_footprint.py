"""What a router replica loads: the router app for a table of OpenAI-compatible endpoints, built as a Serve replica
builds it, imports neither httpx (its package imports its command line, and with it rich and pygments: about 4 MB
and 90 modules in every replica, seen as the replica's RSS passing issue 20's 200 MB) nor those; and the TLS
context its HTTP client uses for backends is what httpx would have made."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, sys, tempfile, pathlib
from tests.fakes.spend_router import config
from sovra.orchestrator.serving.ray_apps import build_router_state_app
tmp = pathlib.Path(tempfile.mkdtemp())
build_router_state_app(config(tmp, {"onprem-paris": "http://127.0.0.1:9"}, {"store": "sqlite",
                                                                          "path": str(tmp / "l.db")}, "r1", []))
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & {"httpx", "rich", "pygments"})))
"""


def test_a_router_replica_for_http_endpoints_does_not_import_httpx_or_rich():
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


def test_the_backend_tls_context_verifies_as_httpx_s_default_does(tmp_path, monkeypatch):
    import certifi

    from sovra.providers.clients import _ssl_context

    for var in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(var, raising=False)
    ctx = _ssl_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    bundle = ssl.create_default_context(cafile=certifi.where())
    assert len(ctx.get_ca_certs()) == len(bundle.get_ca_certs()) > 0  # certifi's bundle, as httpx loads it
    one = tmp_path / "ca.pem"
    one.write_text(ssl.DER_cert_to_PEM_cert(bundle.get_ca_certs(binary_form=True)[0]))
    monkeypatch.setenv("SSL_CERT_FILE", str(one))
    assert len(_ssl_context().get_ca_certs()) == 1  # the operator's CA file wins, as with httpx
