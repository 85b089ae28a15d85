"""The operator's billing reports (``billing.reports``): revenue by organisation, model and day
equal to independently computed sums, exactly; the invoiced view; cost, cost per million tokens
and margin per model with known numbers; outstanding and past-due invoices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing import reports
from billing.models import Invoice, InvoiceAdjustment, PlanPrice, UsageRollup
from inference.models import ReplicaHours
from tests.billing.report_support import END, MONTH, START, finalised_invoice, random_rollups
from tests.billing.usage_data import make_key
from tests.factories import CatalogModelFactory, OrganizationFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 5, 10, 12, tzinfo=UTC)  # March 2026 is a closed month
MARCH = reports.month_period(MONTH, now=NOW)


def _orgs(n: int) -> list:  # type: ignore[type-arg]
    return [
        OrganizationFactory(slug=f"org-{i}", name=f"Org {i}", plan="free", created_at=START)
        for i in range(n)
    ]


# --- periods ------------------------------------------------------------------------------------
def test_a_past_month_is_whole_and_the_current_one_runs_to_now() -> None:
    assert (MARCH.start, MARCH.end, MARCH.until) == (START, END, END)
    assert not MARCH.month_to_date
    assert len(MARCH.days) == 31
    current = reports.month_period(now=NOW)
    assert current.month == "2026-05"
    assert current.month_to_date
    assert current.until == NOW
    assert current.days[-1] == datetime(2026, 5, 10, tzinfo=UTC)  # today, so far
    assert len(current.days) == 10


@pytest.mark.parametrize("month", ["2026-13", "2026-3", "March", "2026-03-01", "2026-06"])
def test_a_malformed_or_future_month_is_refused(month: str) -> None:
    with pytest.raises(ValueError, match="month"):
        reports.month_period(month, now=NOW)


# --- usage revenue: exact sums ------------------------------------------------------------------
def test_revenue_by_organisation_model_and_day_equal_independent_sums() -> None:
    orgs = _orgs(6)
    expected = random_rollups(orgs)
    assert UsageRollup.objects.count() > 300

    by_org = reports.revenue_by_organization(MARCH)
    assert {row.organization_id: row.revenue for row in by_org} == {
        org_id: sums["cost"] for org_id, sums in expected["org"].items()
    }
    for row in by_org:
        sums = expected["org"][row.organization_id]
        assert row.requests == sums["requests"]
        assert row.tokens == sums["prompt"] + sums["completion"]
    revenues = [row.revenue for row in by_org]
    assert revenues == sorted(revenues, reverse=True)

    by_model = reports.revenue_by_model(MARCH)
    assert {row.model: row.revenue for row in by_model} == {
        model: sums["cost"] for model, sums in expected["model"].items()
    }
    for row in by_model:
        sums = expected["model"][row.model]
        assert (row.requests, row.prompt_tokens, row.completion_tokens) == (
            sums["requests"],
            sums["prompt"],
            sums["completion"],
        )
        assert row.cost is None  # no catalog model, no cost: unknown, not zero

    by_day = reports.revenue_by_day(MARCH)
    assert [row["day"] for row in by_day] == MARCH.days
    for row in by_day:
        sums = expected["day"].get(row["day"].date(), {"requests": 0, "cost": Decimal(0)})
        assert (row["requests"], row["revenue"]) == (sums["requests"], sums["cost"])

    grand = sum((s["cost"] for s in expected["org"].values()), Decimal(0))
    assert grand.as_tuple().exponent == -12  # not rounded anywhere
    totals = reports.revenue_totals(by_org)
    assert totals.revenue == grand
    assert reports.model_totals(by_model).revenue == grand
    assert sum((row["revenue"] for row in by_day), Decimal(0)) == grand


def test_the_sqlite_fallback_groups_exactly_as_the_single_postgres_scan() -> None:
    """SQLite (the single-machine default) has no GROUPING SETS: its three ORM queries must give
    the very rows the Postgres query gives."""
    random_rollups(_orgs(4), per_org=40)
    scan = reports.usage_groups(MARCH)
    orm = reports._usage_groups_orm(MARCH)
    assert scan.by_organization
    assert scan.by_model
    assert scan.by_day
    assert orm.by_organization == scan.by_organization
    assert orm.by_model == scan.by_model
    assert orm.by_day == scan.by_day


def test_the_revenue_queries_are_grouped_not_per_organisation() -> None:
    random_rollups(_orgs(3), per_org=20)
    with CaptureQueriesContext(connection) as few:
        reports.revenue_by_organization(MARCH)
    random_rollups(OrganizationFactory.create_batch(10, plan="free"), seed=9, per_org=20)
    with CaptureQueriesContext(connection) as many:
        assert len(reports.revenue_by_organization(MARCH)) == 13
    assert len(many) == len(few)
    with CaptureQueriesContext(connection) as model_queries:
        reports.revenue_by_model(MARCH)
    assert len(model_queries) == 3


# --- invoiced view ------------------------------------------------------------------------------
def test_invoiced_totals_base_fees_and_adjustments(staff) -> None:  # type: ignore[no-untyped-def]
    PlanPrice.objects.update_or_create(plan="standard", defaults={"monthly_fee": Decimal("10.00")})
    billed = OrganizationFactory(slug="billed", plan="standard", created_at=START)
    voided = OrganizationFactory(slug="voided", plan="standard", created_at=START)
    waiting = OrganizationFactory(slug="waiting", plan="standard", created_at=START)
    later = OrganizationFactory(slug="later", plan="standard", created_at=END)  # after March
    OrganizationFactory(slug="idle-free", plan="free", created_at=START)
    key = make_key(billed)
    UsageRollup.objects.create(
        organization=billed, api_key=key, hour=START, model="m", cost=Decimal("5.123456789012")
    )
    finalised_invoice(
        billed,
        number=1,
        lines=[
            ("usage", "5.123456789012"),
            ("base_fee", "10.00"),
            ("credit", "-2.50"),
            ("charge", "1.00"),
        ],
    )
    finalised_invoice(voided, number=2, status=Invoice.Status.VOID, lines=[("base_fee", "10")])
    InvoiceAdjustment.objects.create(
        organization=waiting, period=MONTH, kind="credit", amount=Decimal("-3.00"), reason="sorry"
    )

    rows = {row.slug: row for row in reports.revenue_by_organization(MARCH)}
    assert set(rows) == {"billed", "voided", "waiting"}
    assert later.slug not in rows  # created after the month: no fee for it
    b = rows["billed"]
    assert not b.upcoming
    assert b.invoice is not None
    assert b.invoice.display_number == "VL-00000001"
    assert (b.revenue, b.base_fee, b.adjustments) == (
        Decimal("5.123456789012"),
        Decimal("10.00"),
        Decimal("-1.50"),
    )
    assert b.invoiced == Decimal("13.62")  # 13.623456789012 rounded once, half up
    assert rows["voided"].invoiced is None
    w = rows["waiting"]
    assert w.upcoming
    assert (w.revenue, w.base_fee, w.adjustments, w.invoiced) == (0, Decimal("10"), -3, None)

    totals = reports.revenue_totals(rows.values())
    assert totals.revenue == Decimal("5.123456789012")
    assert (totals.invoices, totals.invoiced) == (1, Decimal("13.62"))
    assert (totals.invoiced_base_fees, totals.invoiced_adjustments) == (10, Decimal("-1.50"))
    assert (totals.upcoming_base_fees, totals.pending_adjustments) == (10, -3)
    assert totals.by_status == {"open": 1, "void": 1}


# --- cost and margin per model ------------------------------------------------------------------
def test_cost_per_million_tokens_and_margin_with_known_numbers() -> None:
    org = OrganizationFactory(created_at=START)
    key = make_key(org)
    costed = CatalogModelFactory(name="costed", cost_per_replica_hour=Decimal("2.50"))
    idle = CatalogModelFactory(name="idle", cost_per_replica_hour=Decimal("1"))
    unknown = CatalogModelFactory(name="uncosted", cost_per_replica_hour=None)
    for hour, prompt, completion, cost in (
        (START, 2_000_000, 500_000, "7.000000000001"),
        (START + timedelta(days=3), 400_000, 100_000, "3.000000000000"),
    ):
        UsageRollup.objects.create(
            organization=org,
            api_key=key,
            hour=hour,
            model="costed",
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost=Decimal(cost),
        )
    UsageRollup.objects.create(
        organization=org, api_key=key, hour=START, model="uncosted", cost=Decimal("1")
    )
    UsageRollup.objects.create(
        organization=org, api_key=key, hour=START, model="gone", cost=Decimal("2")
    )
    for model, hour, seconds in (
        (costed, START, 3600.0),
        (costed, START + timedelta(hours=1), 5400.6),  # 9000.6 s in all -> 9001 s
        (costed, START - timedelta(hours=1), 99999.0),  # February: not counted
        (idle, START + timedelta(days=2), 1800.0),
        (unknown, START, 7200.0),
    ):
        ReplicaHours.objects.create(catalog_model=model, hour=hour, replica_seconds=seconds)

    rows = {row.model: row for row in reports.revenue_by_model(MARCH)}
    c = rows["costed"]
    assert c.revenue == Decimal("10.000000000001")
    assert c.tokens == 3_000_000
    assert c.replica_seconds == 9001
    assert c.replica_hours == Decimal("2.500")  # 2.50027… to 0.001
    # 9001 x 2.50 / 3600 = 6.250694444…, to 12 places
    assert c.cost == Decimal("6.250694444444")
    assert c.cost_per_mtok == Decimal("2.083565")  # 6.250694444444 / 3
    assert c.revenue_per_mtok == Decimal("3.333333")
    assert c.margin == Decimal("3.749305555557")
    assert c.margin_percent == Decimal("37.5")

    i = rows["idle"]  # replicas ran, nothing was served
    assert (i.revenue, i.tokens, i.replica_seconds) == (0, 0, 1800)
    assert i.cost == Decimal("0.5")
    assert i.margin == Decimal("-0.5")
    assert i.cost_per_mtok is None
    assert i.margin_percent is None

    u = rows["uncosted"]
    assert u.in_catalog
    assert u.replica_seconds == 7200
    assert (u.cost, u.margin, u.margin_percent, u.cost_per_mtok) == (None, None, None, None)
    g = rows["gone"]
    assert not g.in_catalog
    assert g.cost is None

    totals = reports.model_totals(rows.values())
    assert totals.revenue == Decimal("13.000000000001")
    assert totals.cost == Decimal("6.750694444444")
    assert totals.costed_revenue == Decimal("10.000000000001")
    assert totals.margin == Decimal("3.249305555557")
    assert not totals.cost_known


def test_whole_seconds_rounds_half_up_once() -> None:
    assert reports.whole_seconds(None) == 0
    assert reports.whole_seconds(0.5) == 1
    assert reports.whole_seconds(1.4999) == 1
    assert reports.whole_seconds(7200.5) == 7201
    assert reports.replica_cost(1, Decimal("3600")) == Decimal(1)
    assert reports.replica_cost(1, Decimal("1")) == Decimal("0.000277777778")


# --- outstanding and past due -------------------------------------------------------------------
def test_outstanding_and_past_due_invoices() -> None:
    org = OrganizationFactory(slug="debtor", created_at=START)
    issued = NOW - timedelta(days=20)
    fresh = finalised_invoice(
        org,
        number=1,
        period="2026-04",
        lines=[("base_fee", "10")],
        issued_at=NOW - timedelta(days=3),
        due_at=NOW + timedelta(days=11),
    )
    overdue = finalised_invoice(
        org,
        number=2,
        period="2026-03",
        lines=[("base_fee", "20.005")],
        issued_at=issued,
        due_at=NOW - timedelta(days=6, hours=1),
    )
    failed = finalised_invoice(
        org,
        number=3,
        period="2026-02",
        status=Invoice.Status.PAST_DUE,
        lines=[("charge", "5")],
        issued_at=NOW - timedelta(days=40),
    )
    finalised_invoice(org, number=4, period="2026-01", status=Invoice.Status.PAID)
    finalised_invoice(org, number=5, period="2025-12", status=Invoice.Status.VOID)

    rows = reports.outstanding_invoices(now=NOW)
    assert [r.invoice.pk for r in rows] == [failed.pk, overdue.pk, fresh.pk]  # oldest first
    by_number = {r.invoice.number: r for r in rows}
    assert (by_number[1].past_due, by_number[1].age_days, by_number[1].days_overdue) == (
        False,
        3,
        None,
    )
    assert (by_number[2].past_due, by_number[2].age_days, by_number[2].days_overdue) == (
        True,
        20,
        6,
    )
    assert (by_number[3].past_due, by_number[3].age_days) == (True, 40)
    totals = reports.outstanding_totals(rows)
    assert (totals.count, totals.amount) == (3, Decimal("10") + Decimal("20.01") + Decimal("5"))
    assert (totals.past_due_count, totals.past_due_amount) == (2, Decimal("25.01"))
