"""Where `sovra audit` reads the trail: the router's admin endpoints (so a remote cluster works) or a local file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from orchestrator.errors import SovraError

DEFAULT_KEY_ENV = "SOVRA_ADMIN_KEY"


class AuditReadError(SovraError):
    """The trail could not be read; the message says where we looked and what to do."""


@dataclass(frozen=True)
class Trail:
    """Records (oldest first), how many torn lines were skipped, and where they came from."""

    records: list[dict[str, Any]]
    torn: int
    source: str


def default_router() -> str:
    """The local router: http://127.0.0.1:$SOVRA_ROUTER_PORT (8000 when unset)."""
    port = os.environ.get("SOVRA_ROUTER_PORT") or "8000"
    if not port.isdigit():
        raise AuditReadError(f"SOVRA_ROUTER_PORT={port!r} is not a port number")
    return f"http://127.0.0.1:{port}"


def from_router(router: str, key_env: str, filters: Mapping[str, Any], limit: int) -> Trail:
    """`GET /v1/audit` with the admin key read from the environment variable `key_env`."""
    params = {k: str(v) for k, v in filters.items() if v is not None} | {"limit": str(limit)}
    data = _get(router, "/v1/audit", key_env, params)
    return Trail(list(data["records"]), int(data["torn"]), f"{router} ({data['file']})")


def verify_router(router: str, key_env: str) -> dict[str, Any]:
    """`GET /v1/audit/verify`: the router checks its own files, and knows the newest hash it wrote."""
    return _get(router, "/v1/audit/verify", key_env, {})


def from_file(path: Path, filters: Mapping[str, Any], limit: int) -> Trail:
    """Read a local trail (e.g. copied from a cluster)."""
    from orchestrator.router.audit import read

    _exists(path)
    try:
        result = read(path, limit=limit, **filters)
    except ValueError as exc:
        raise AuditReadError(str(exc)) from None
    return Trail(list(result.records), result.torn, str(path))


def verify_file(path: Path) -> dict[str, Any]:
    """Check a local trail's chain (`path` and its rotated `path.N` files)."""
    from orchestrator.router.audit import verify

    _exists(path)
    return {"file": str(path), **verify(path).to_json()}


def attempts_text(record: Mapping[str, Any]) -> str:
    """Every attempt in one cell, e.g. `onprem-paris:failed → onprem-lyon:ok`."""
    attempts = record.get("attempts") or []
    return " → ".join(f"{a.get('target')}:{a.get('outcome')}" for a in attempts if isinstance(a, dict)) or "-"


def _exists(path: Path) -> None:
    if not path.exists() and not path.with_name(path.name + ".1").exists():
        raise AuditReadError(f"no audit trail at {path}: the router writes it once it has served a request")


def _get(router: str, route: str, key_env: str, params: Mapping[str, str]) -> dict[str, Any]:
    key = os.environ.get(key_env) or None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = router.rstrip("/") + route
    try:
        response = httpx.get(url, params=params, headers=headers, timeout=60)
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


def _message(data: object) -> str | None:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message"))
    return None
