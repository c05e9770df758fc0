"""Who may see more than the answer to a model request, and what the open router refuses because a web page could
make a browser send it.

- `/readyz` answers everyone with the aggregate (ready or not); per-deployment detail goes to admins, and to a
  tenant for the deployments it may call (within its own bound). `/metrics` names deployments and targets, so it
  goes to admins and to the scrape key only (org.yaml `router.scrape_key_sha256`).
- The open router (no tenants, loopback only) stays open to local programs, but not to a browser on the same
  machine: a page may POST `text/plain` anywhere, and a DNS name it controls may resolve to 127.0.0.1.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sovra.infra.transport import is_loopback
from sovra.core.api_errors import (
    CrossSite,
    RouterError,
    ScrapeKeyRequired,
    Unauthorized,
    UnsupportedMediaType,
)
from sovra.orchestrator.router.tenants import TenantDirectory, bearer_digest
from sovra.core.spec.org import Admin, RouterSettings, Tenant

#: what a caller may see of readiness: everything, one tenant's deployments, or only the aggregate
ReadinessView = Literal["all", "aggregate"] | Tenant


@dataclass(frozen=True)
class Access:
    """The keys that see past a tenant's view: admins' (org.yaml `admins`) and the metrics scraper's."""

    admin_digests: tuple[str, ...] = ()
    scrape_digest: str | None = None

    @classmethod
    def of(cls, admins: Sequence[Admin], settings: RouterSettings | None = None) -> Access:
        return cls(tuple(a.key_sha256 for a in admins), settings.scrape_key_sha256 if settings else None)

    def readiness(self, tenants: TenantDirectory, authorization: str | None) -> ReadinessView:
        """Detail for admins (and everyone on an open router without admins), a tenant's own deployments for a
        tenant, the aggregate for anyone else: a probe is never refused."""
        if tenants.open and not self.admin_digests:
            return "all"
        digest = _digest(authorization)
        if digest is not None and _any_equal(digest, self.admin_digests):
            return "all"
        tenant = tenants.find(authorization)
        return tenant if tenant is not None else "aggregate"

    def check_metrics(self, tenants: TenantDirectory, authorization: str | None) -> None:
        """Return if the caller may read /metrics; raise the 401/403 to answer otherwise."""
        keys = (*self.admin_digests, *((self.scrape_digest,) if self.scrape_digest else ()))
        if tenants.open and not keys:
            return
        digest = bearer_digest(authorization, "metrics key (an admin's key or router.scrape_key_sha256's)")
        if _any_equal(digest, keys):
            return
        if tenants.find(authorization) is not None:
            raise ScrapeKeyRequired("a tenant key cannot read the router's metrics: use an admin's key or the key "
                                    "whose sha256 is org.yaml `router.scrape_key_sha256`")
        raise Unauthorized("invalid metrics key")


def _digest(authorization: str | None) -> str | None:
    try:
        return bearer_digest(authorization)
    except Unauthorized:
        return None


def _any_equal(digest: str, digests: Sequence[str]) -> bool:
    found = False
    for known in digests:  # no early exit: the time taken says nothing about which key matched
        found |= hmac.compare_digest(digest, known)
    return found


def preflight(scope: dict[str, Any]) -> RouterError | None:
    """A CORS preflight (OPTIONS with Origin and Access-Control-Request-Method), on any router: never granted."""
    if scope.get("method") != "OPTIONS":
        return None
    names = {name for name, _ in scope["headers"]}
    if b"origin" in names and b"access-control-request-method" in names:
        return CrossSite("cross-origin requests are not served: call the router from a program, not a web page")
    return None


def cross_site(scope: dict[str, Any]) -> RouterError | None:
    """What the open router refuses: any `Origin` (a browser's cross-origin request), a `Host` that is not loopback
    (DNS rebinding: a page's own name resolved to 127.0.0.1), and a POST whose body is not declared JSON (a page
    may send text/plain or a form anywhere without asking first)."""
    host = content_type = None
    for name, value in scope["headers"]:
        if name == b"origin":
            return CrossSite("the open router refuses requests carrying Origin: it serves programs on this machine, "
                             "not web pages; configure tenants in org.yaml to serve anything else")
        if name == b"host":
            host = value.decode("latin-1")
        elif name == b"content-type":
            content_type = value.decode("latin-1")
    if host is not None and not _loopback(host):
        return CrossSite(f"the open router answers only to a loopback Host (127.0.0.1, localhost, [::1]), not "
                         f"{host[:100]!r}")
    if scope.get("method") == "POST" and (content_type or "").split(";")[0].strip().lower() != "application/json":
        return UnsupportedMediaType("send the request body as JSON with 'Content-Type: application/json'")
    return None


def _loopback(host: str) -> bool:
    """A Host header (`127.0.0.1:8000`, `localhost`, `[::1]:8000`…) naming loopback, by Sovra's one rule."""
    name = host.strip()
    if name.startswith("["):
        name = name[1:name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.split(":")[0]
    return is_loopback(name)
