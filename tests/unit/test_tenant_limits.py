"""A tenant's requests in flight, against its own `max_concurrent` or the router-wide default."""

import hashlib

import pytest

from sovra.core.api_errors import TenantBusy
from sovra.orchestrator.router.limits import TenantLimits
from sovra.core.spec import Residency
from sovra.core.spec.org import Org, Tenant


def tenant(name: str, max_concurrent: int | None = None) -> Tenant:
    return Tenant(name=name, key_sha256=hashlib.sha256(name.encode()).hexdigest(),
                  residency=Residency(zones=("EU",)), max_concurrent=max_concurrent)


def test_a_tenant_without_its_own_limit_gets_the_router_wide_default():
    limits = TenantLimits(default=3)
    held = [limits.acquire(tenant("quiet")) for _ in range(3)]
    with pytest.raises(TenantBusy) as busy:
        limits.acquire(tenant("quiet"))
    assert busy.value.status == 429 and busy.value.headers["Retry-After"] == "1"
    assert limits.acquire(tenant("other"))  # another tenant is not held to quiet's count
    for release in held:
        release()
        release()  # freed once, however often called
    assert limits.in_flight == {"other": 1}


def test_a_tenants_own_limit_wins_and_org_yaml_carries_both():
    limits = TenantLimits(default=64)
    limits.acquire(tenant("noisy", 1))
    with pytest.raises(TenantBusy):
        limits.acquire(tenant("noisy", 1))
    org = Org.model_validate({"tenants": [{"name": "a", "key_sha256": "1" * 64, "residency": {"zones": ["EU"]},
                                           "max_concurrent": 5}],
                              "router": {"tenant_max_concurrent": 16}})
    assert org.tenants[0].max_concurrent == 5 and org.router.tenant_max_concurrent == 16
