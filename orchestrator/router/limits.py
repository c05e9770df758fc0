"""Per-tenant limits: how many requests one tenant may have in flight at once, so that one tenant cannot take
every slot of the router (and of the backends behind it) from the others."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sovra.core.api_errors import TenantBusy
from sovra.core.spec.org import DEFAULT_TENANT_MAX_CONCURRENT, Tenant


@dataclass
class TenantLimits:
    """Requests in flight per tenant, each held to its own `max_concurrent` (org.yaml) or to `default` (org.yaml's
    `router.tenant_max_concurrent`). One per router replica (one event loop: no locking)."""

    default: int = DEFAULT_TENANT_MAX_CONCURRENT
    in_flight: dict[str, int] = field(default_factory=dict)

    def limit(self, tenant: Tenant) -> int:
        return tenant.max_concurrent or self.default

    def acquire(self, tenant: Tenant) -> Callable[[], None]:
        """Take one of `tenant`'s slots, or raise 429 `TenantBusy`. Returns the release, which frees the slot once
        however often it is called, so every path that ends a request may call it."""
        name, limit = tenant.name, self.limit(tenant)
        held = self.in_flight.get(name, 0)
        if held >= limit:
            raise TenantBusy(f"tenant {name!r} already has {held} requests in flight, its limit "
                             f"(max_concurrent: {limit}); retry when one has finished")
        self.in_flight[name] = held + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self.in_flight.get(name, 1) - 1
            if left > 0:
                self.in_flight[name] = left
            else:
                self.in_flight.pop(name, None)

        return release
