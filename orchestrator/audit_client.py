"""Where `sovra audit` reads the trail: the router's admin endpoints (so a remote cluster works) or a local copy;
and what the auditor remembers between runs (`Memory`: the last heads it verified, and the router's key)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from sovra.core.errors import SovraError

DEFAULT_KEY_ENV = "SOVRA_ADMIN_KEY"


class AuditReadError(SovraError):
    """The trail could not be read; the message says where we looked and what to do."""


@dataclass(frozen=True)
class Trail:
    """Records (oldest first), how many torn lines were skipped, and where they came from."""

    records: list[dict[str, Any]]
    torn: int
    source: str
    incomplete: str = ""  # the router could not read some nodes' chains: which, and why


def default_router() -> str:
    """The local router: 127.0.0.1:$SOVRA_ROUTER_PORT (8000 when unset), over https when the local Ray's Serve
    serves HTTPS (the org gave the local cluster `tls`)."""
    port = os.environ.get("SOVRA_ROUTER_PORT") or "8000"
    if not port.isdigit():
        raise AuditReadError(f"SOVRA_ROUTER_PORT={port!r} is not a port number")
    from sovra.orchestrator.deploy import Settings, local_router_url

    return local_router_url(Settings(router_port=int(port)))


def from_router(router: str, key_env: str, filters: Mapping[str, Any], limit: int) -> Trail:
    """`GET /v1/audit` with the admin key read from the environment variable `key_env`."""
    params = {k: str(v) for k, v in filters.items() if v is not None} | {"limit": str(limit)}
    data = _get(router, "/v1/audit", key_env, params)
    return Trail(list(data["records"]), int(data["torn"]), f"{router} ({data['file']})",
                 str(data.get("incomplete") or ""))


def verify_router(router: str, key_env: str, checkpoint: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`GET /v1/audit/verify`: the router checks its own files, and knows the newest hash it wrote; with a signed
    `checkpoint` (`POST`), also that the trail still extends it."""
    if checkpoint is None:
        return _get(router, "/v1/audit/verify", key_env, {})
    return _call(router, "POST", "/v1/audit/verify", key_env, {}, json.dumps(checkpoint).encode())


def checkpoint_router(router: str, key_env: str) -> dict[str, Any]:
    """`GET /v1/audit/checkpoint`: the router's heads, signed with its key."""
    return _get(router, "/v1/audit/checkpoint", key_env, {})


def from_file(path: Path, filters: Mapping[str, Any], limit: int) -> Trail:
    """Read a local trail (e.g. copied from a cluster)."""
    from sovra.orchestrator.router.audit import read

    _exists(path)
    try:
        result = read(path, limit=limit, **filters)
    except ValueError as exc:
        raise AuditReadError(str(exc)) from None
    return Trail(list(result.records), result.torn, str(path))


def verify_file(path: Path, checkpoint: Mapping[str, Any] | None = None,
                public_key: str | None = None) -> dict[str, Any]:
    """Check every chain of a local trail (a directory, or one of its segment files); with a signed `checkpoint`
    (by `public_key` when given), also that the trail still extends it."""
    from sovra.orchestrator.router.audit import verify
    from sovra.orchestrator.router.audit_sign import CheckpointError, check

    _exists(path)
    try:
        expect = None if checkpoint is None else check(checkpoint, public_key=public_key)
    except CheckpointError as exc:
        raise AuditReadError(str(exc)) from None
    return {"file": str(path), **verify(path, expect=expect).to_json()}


def heads_checkpoint(result: Mapping[str, Any]) -> dict[str, Any]:
    """The heads a verify result saw, as an unsigned record for the auditor's own memory of a local trail."""
    return {"heads": [c["last"] for c in result.get("chains", []) if c.get("last")]}


def extends(path: Path, heads: Mapping[str, Any]) -> dict[str, Any]:
    """Whether a local trail still holds each remembered head (unsigned: the auditor's own record)."""
    from sovra.orchestrator.router.audit import verify
    from sovra.orchestrator.router.audit_chain import Head

    expect = {h.writer: h for h in (Head.of(x) for x in heads.get("heads", []))}
    return verify(path, expect=expect).to_json()


class Memory:
    """What this auditor verified last, per trail, under its own $SOVRA_HOME (`auditor/`, 0700): the heads (a
    router's signed checkpoint, or a local trail's heads) and the router's public key, pinned on first use.
    A later trail that does not extend them is a warning `verify` prints and fails on."""

    def __init__(self, home: Path, source: str):
        self.source = source
        self.path = home / "auditor" / (hashlib.sha256(source.encode()).hexdigest()[:24] + ".json")

    def load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("source") == self.source else None

    def save(self, checkpoint: Mapping[str, Any], *, time: str) -> None:
        from sovra.orchestrator.router.audit_chain import FILE_MODE, private_dir

        private_dir(self.path.parent)
        data = {"source": self.source, "verified_at": time, "checkpoint": dict(checkpoint)}
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, self.path)

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)


def attempts_text(record: Mapping[str, Any]) -> str:
    """Every attempt in one cell, e.g. `onprem-paris:failed → onprem-lyon:ok`."""
    attempts = record.get("attempts") or []
    return " → ".join(f"{a.get('target')}:{a.get('outcome')}" for a in attempts if isinstance(a, dict)) or "-"


def _exists(path: Path) -> None:
    from sovra.orchestrator.router.audit_chain import chain_segments, trail_dir

    if not chain_segments(trail_dir(path)):
        raise AuditReadError(f"no audit trail at {path}: give the trail's directory (e.g. ~/.sovra/audit); the "
                             "router writes it once it has served a request")


def _get(router: str, route: str, key_env: str, params: Mapping[str, str]) -> dict[str, Any]:
    return _call(router, "GET", route, key_env, params, None)


def _call(router: str, method: str, route: str, key_env: str, params: Mapping[str, str],
          body: bytes | None) -> dict[str, Any]:
    from sovra.infra.transport import PLAIN_HTTP_ENV, key_may_travel

    key = os.environ.get(key_env) or None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    url = router.rstrip("/") + route
    if key and not key_may_travel(url):
        raise AuditReadError(f"{router} is plain http to another machine: the admin key (${key_env}) would cross the "
                             f"network in clear. Give the router `tls:` in org.yaml and use https://, or set "
                             f"{PLAIN_HTTP_ENV}=1 for a network you trust")
    try:
        response = httpx.request(method, url, params=params, headers=headers, content=body, timeout=60,
                                 verify=_trust(url))
    except httpx.HTTPError as exc:
        raise AuditReadError(f"no router answering at {router} ({type(exc).__name__}): start it with `sovra up` "
                             "or `sovra serve`, point --router at it, or read a local file with --file PATH") from None
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code == 200 and isinstance(data, dict):
        return data
    message = _message(data) or f"HTTP {response.status_code}"
    if response.status_code in (401, 403):
        state = "set" if key else "not set"
        raise AuditReadError(f"{router} refused to show the audit trail: {message} "
                             f"(the admin key is read from ${key_env}, which is {state}; see --admin-key-env)")
    if response.status_code == 404:
        raise AuditReadError(f"{url} does not exist: that router has no audit endpoint; read its file with --file")
    raise AuditReadError(f"{url} answered {response.status_code}: {message}")


def _trust(url: str) -> Any:
    """https: the CAs the standard variables name (a company CA in SSL_CERT_FILE or REQUESTS_CA_BUNDLE)."""
    from sovra.infra.transport import client_trust

    return client_trust() if url.startswith("https:") else True


def _message(data: object) -> str | None:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message"))
    return None
