"""API keys -> tenants. Keys are stored as sha256 digests and compared in constant time."""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from sovra.core.api_errors import Unauthorized
from sovra.core.spec.common import Residency
from sovra.core.spec.org import Tenant
from sovra.core.spec.zones import GLOBAL

OPEN_TENANT = Tenant(name="open", key_sha256="0" * 64, residency=Residency(zones=(GLOBAL,)))


@dataclass(frozen=True)
class TenantDirectory:
    """Resolves `Authorization: Bearer <key>`; with no tenants configured the router runs open."""

    tenants: tuple[Tenant, ...]

    @classmethod
    def of(cls, tenants: Sequence[Tenant]) -> TenantDirectory:
        return cls(tuple(tenants))

    @property
    def open(self) -> bool:
        """True when no keys are configured: every request is accepted, with no residency bound."""
        return not self.tenants

    def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant owning the bearer key, or 401. Every tenant's digest is compared, so timing leaks nothing."""
        if self.open:
            return OPEN_TENANT
        digest = bearer_digest(authorization)
        found: Tenant | None = None
        for tenant in self.tenants:
            if hmac.compare_digest(digest, tenant.key_sha256):
                found = tenant
        if found is None:
            raise Unauthorized("invalid API key")
        return found

    def find(self, authorization: str | None) -> Tenant | None:
        """The tenant owning the bearer key, or None (no key, an empty one or another key: never an error)."""
        try:
            return None if self.open else self.authenticate(authorization)
        except Unauthorized:
            return None

    @staticmethod
    def visible(tenant: Tenant) -> frozenset[str] | None:
        """The deployments `tenant` may address (None = all); others answer 404 as if they did not exist."""
        return _visible(tenant)


def bearer_digest(authorization: str | None, what: str = "API key") -> str:
    """The sha256 hex digest of the key in `Authorization: Bearer <key>`; 401 when there is none or it is empty
    (whitespace only), so that no configured digest can be matched by sending nothing."""
    if not authorization or not authorization[:7].lower() == "bearer ":
        raise Unauthorized(f"missing {what}: send 'Authorization: Bearer <key>'")
    key = authorization[7:].strip()
    if not key:
        raise Unauthorized(f"empty {what}: send 'Authorization: Bearer <key>' with the key after 'Bearer '")
    return hashlib.sha256(key.encode()).hexdigest()


@functools.lru_cache(maxsize=1024)
def _visible(tenant: Tenant) -> frozenset[str] | None:
    return None if tenant.deployments is None else frozenset(tenant.deployments)
