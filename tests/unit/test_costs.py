import datetime as dt

import pytest

from sovra.core.spec.common import Accelerator, ManagedModel
from sovra.core.spec.deployment import Traffic
from sovra.core.spec.org import Credit
from sovra.policies import costs


@pytest.mark.parametrize(("expires", "as_of", "months"), [
    (dt.date(2027, 6, 30), dt.date(2026, 11, 22), 8),   # Nov (started) .. Jun
    (dt.date(2026, 11, 30), dt.date(2026, 11, 22), 1),
    (dt.date(2026, 11, 22), dt.date(2026, 11, 22), 1),  # last day still counts
    (dt.date(2026, 11, 21), dt.date(2026, 11, 22), 0),  # expired
    (dt.date(2027, 1, 1), dt.date(2026, 12, 31), 2),
])
def test_months_left_counts_started_months_whole(expires, as_of, months):
    assert costs.months_left(expires, as_of) == months


def test_credit_caps_spread_balance_and_sum_per_cloud_ignoring_expired():
    caps = costs.monthly_credit_caps([
        Credit(cloud="azure", usd=80_000, expires=dt.date(2027, 6, 30)),   # 8 months -> 10,000
        Credit(cloud="azure", usd=2_000, expires=dt.date(2026, 12, 15)),   # 2 months -> 1,000
        Credit(cloud="aws", usd=99_999, expires=dt.date(2026, 1, 1)),      # expired
    ], dt.date(2026, 11, 22))
    assert caps == pytest.approx({"azure": 11_000.0})


def test_replica_cost_is_hourly_times_730():
    acc = Accelerator(sku="x", gpus=1, gpu_memory_gb=80, usd_per_hour=6.98)
    assert costs.replica_monthly_usd(acc) == pytest.approx(5095.4)


def test_managed_cost_is_tokens_per_month_times_price():
    # 5 req/s × 2,628,000 s × 800 tokens = 10.512e9 tokens; /1000 × $0.006 = $63,072
    cost = costs.managed_monthly_usd(ManagedModel(name="m", usd_per_1k_tokens=0.006),
                                     Traffic(requests_per_second=5, tokens_per_request=800))
    assert cost == pytest.approx(63_072.0)


def test_egress_skips_sources_at_the_target_location():
    sources = {"aws/eu-central-1": (500.0, 0.09), "azure/westeurope": (100.0, 0.087)}
    assert costs.egress_usd_if_all("aws/eu-central-1", sources) == pytest.approx(8.7)
    assert costs.egress_usd_if_all("onprem/paris", sources) == pytest.approx(45 + 8.7)
