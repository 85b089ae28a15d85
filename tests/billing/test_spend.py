"""Month-to-date usage from the rollups, written into the gateway's budget counters."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing import spend
from inference.serving.limits import LimitSet
from tests.billing.usage_data import add_rollup, limiter_call, make_key, redis_month
from tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db

MARCH = datetime(2026, 3, 10, 14, tzinfo=UTC)


@pytest.fixture
def acme_keys(org):
    return make_key(org, "a"), make_key(org, "b")


def test_month_usage_sums_prompt_and_completion_tokens_and_cost_of_that_month_only(org, acme_keys):
    a, b = acme_keys
    add_rollup(a, MARCH, prompt=100, completion=20, cached=50, cost="0.000100000001")
    add_rollup(a, MARCH.replace(day=31, hour=23), model="m2", prompt=5, completion=5, cost="1")
    add_rollup(b, MARCH.replace(day=1, hour=0), prompt=7, completion=3, cost="0.5")
    add_rollup(a, datetime(2026, 2, 28, 23, tzinfo=UTC), prompt=1000, cost="9")  # February
    add_rollup(a, datetime(2026, 4, 1, 0, tzinfo=UTC), prompt=1000, cost="9")  # April
    other = make_key(OrganizationFactory())
    add_rollup(other, MARCH, prompt=1000, cost="9")

    usage = spend.month_usage(
        month="2026-03", org_ids=[str(org.pk)], keys=[(str(org.pk), str(a.pk))]
    )

    assert usage.orgs == {str(org.pk): spend.MonthUsed(140, Decimal("1.500100000001"))}
    assert usage.keys == {str(a.pk): spend.MonthUsed(130, Decimal("1.000100000001"))}
    assert usage.key_orgs == {str(a.pk): str(org.pk)}


def test_scopes_without_rollups_are_reported_as_zero(org, acme_keys):
    a, _ = acme_keys
    usage = spend.month_usage(
        month="2026-03", org_ids=[str(org.pk)], keys=[(str(org.pk), str(a.pk))]
    )
    assert usage.orgs[str(org.pk)] == spend.MonthUsed(0, Decimal(0))
    assert usage.keys[str(a.pk)] == spend.MonthUsed(0, Decimal(0))


def test_reconcile_overwrites_used_and_keeps_reservations(org, acme_keys, redis_client):
    a, b = acme_keys
    add_rollup(a, MARCH, prompt=100, completion=20, cost="0.25")
    add_rollup(b, MARCH, prompt=1, completion=2, cost="0.0000001")  # rounds up to one micro-unit
    # A request in flight holds a reservation; Redis counted usage Postgres disagrees with.
    limiter_call(
        "reserve",
        key_id=str(a.pk),
        org_id=str(org.pk),
        key_limits=LimitSet(),
        org_limits=LimitSet(),
        tokens=500,
        spend=Decimal("0.5"),
        request_id="req_inflight",
        now=MARCH.timestamp(),
    )
    limiter_call("set_month_used", "org", str(org.pk), "2026-03", 999_999, Decimal(77))

    spend.reconcile(
        org_ids=[str(org.pk)],
        keys=[(str(org.pk), str(a.pk)), (str(org.pk), str(b.pk))],
        months=["2026-03"],
    )

    org_counters = redis_month("org", org.pk, "2026-03")
    assert (org_counters.used_tokens, org_counters.used_spend) == (123, Decimal("0.250001"))
    assert (org_counters.reserved_tokens, org_counters.reserved_spend) == (500, Decimal("0.5"))
    key_a = redis_month("key", a.pk, "2026-03")
    assert (key_a.used_tokens, key_a.used_spend, key_a.reserved_tokens) == (
        120,
        Decimal("0.25"),
        500,
    )
    key_b = redis_month("key", b.pk, "2026-03")
    assert (key_b.used_tokens, key_b.used_spend) == (3, Decimal("0.000001"))


def test_reconcile_active_covers_every_scope_with_usage_this_month_only(
    org, acme_keys, redis_client
):
    a, _ = acme_keys
    quiet = make_key(OrganizationFactory(), "last month only")
    add_rollup(a, MARCH, prompt=10, completion=1, cost="0.1")
    add_rollup(quiet, datetime(2026, 2, 20, tzinfo=UTC), prompt=10, cost="0.1")

    usage = spend.reconcile_active(now=MARCH.replace(day=20))

    assert usage.month == "2026-03"
    assert set(usage.orgs) == {str(org.pk)}
    assert set(usage.keys) == {str(a.pk)}
    assert redis_month("key", a.pk, "2026-03").used_tokens == 11
    assert redis_month("org", org.pk, "2026-03").used_spend == Decimal("0.1")
    untouched = redis_month("org", quiet.organization_id, "2026-02")
    assert (untouched.used_tokens, untouched.used_spend) == (0, Decimal(0))


@pytest.mark.parametrize("bad", ["2026-13", "2026-1", "26-01", "2026-01-01", "march"])
def test_month_range_refuses_anything_but_yyyy_mm(bad):
    with pytest.raises(ValueError, match="YYYY-MM"):
        spend.month_range(bad)


def test_month_range_spans_the_utc_month():
    assert spend.month_range("2026-12") == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
