"""Invoices: exact totals from random usage with prices changing mid-month, the grace period for
late events, immutability after finalisation, credit notes and one-off charges, the price book,
and the read API's role matrix (docs/billing.md, "Invoices")."""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.contrib.admin.sites import site
from django.test import RequestFactory
from django.utils import timezone

from billing import selectors, services
from billing.models import Invoice, InvoiceAdjustment, InvoiceLine, PlanPrice
from billing.periodic import finalise_invoices
from tenants.models import AuditEvent, Role
from tests.billing.invoice_support import expected_by_model, ingest, month_of_events
from tests.billing.metering_support import make_event
from tests.billing.usage_data import make_key
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db

PERIOD = "2026-10"
START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
CENT = Decimal("0.01")


def _org(slug: str, plan: str = "standard") -> object:
    return OrganizationFactory(slug=slug, name=slug, plan=plan, created_at=START)


def _one_event(org, key, started: dt.datetime, cost: str = "1.234567891234") -> dict:  # type: ignore[no-untyped-def]
    return make_event(
        org_id=str(org.pk),
        key_id=str(key.pk),
        model="llama-8b",
        served_model="llama-8b",
        status=200,
        error_type=None,
        prompt_tokens=1000,
        completion_tokens=100,
        cached_tokens=0,
        cost=Decimal(cost),
        started_at=started.isoformat().replace("+00:00", "Z"),
    )


def test_totals_are_the_exact_sum_of_random_events_with_prices_changing_mid_month() -> None:
    orgs = [_org(f"org{i}") for i in range(3)]
    orgs_keys = [(org, [make_key(org, f"k{j}") for j in range(3)]) for org in orgs]
    events = month_of_events(orgs_keys, month_start=START, count=4500, seed=11)
    ingest(events)
    result = services.invoices_finalise_period(period=PERIOD, now=END + dt.timedelta(hours=2))
    assert len(result.created) == 3
    for org in orgs:
        invoice = Invoice.objects.get(organization=org, period=PERIOD)
        expected = expected_by_model(events, org, START, END)
        # Per model, its lines (one per token kind and price) add up to its events.
        by_model: dict[str, list] = {}  # type: ignore[type-arg]
        for line in invoice.lines.filter(kind=InvoiceLine.Kind.USAGE):
            row = by_model.setdefault(line.model, [0, 0, Decimal(0)])
            row[0] += line.input_tokens
            row[1] += line.output_tokens
            row[2] += line.amount
        assert set(by_model) == set(expected)
        for model, (prompt, completion, cost) in expected.items():
            assert by_model[model] == [prompt, completion, cost]  # to the 12th decimal place
        exact = sum((cost for _, _, cost in expected.values()), Decimal(0))
        assert invoice.subtotal == exact
        assert invoice.total == exact.quantize(CENT, rounding=ROUND_HALF_UP)
        assert invoice.rounding == invoice.total - exact
        assert invoice.status == Invoice.Status.OPEN
        assert invoice.issued_at is not None


def test_rounding_happens_once_at_the_total_half_up() -> None:
    org = _org("acme-r")
    key = make_key(org)
    # Three events of 0.005: each would round to 0.01 (0.03), their sum 0.015 rounds to 0.02.
    ingest([_one_event(org, key, START + dt.timedelta(hours=h), "0.005") for h in range(3)])
    invoice = services.invoice_finalise(organization_id=org.pk, period=PERIOD).invoice
    assert invoice is not None
    assert invoice.subtotal == Decimal("0.015")
    assert invoice.total == Decimal("0.02")
    assert invoice.rounding == Decimal("0.005")


def test_base_fee_from_the_price_book_and_its_changes() -> None:
    services.plan_price_set(plan="premium", monthly_fee=Decimal("49.00"))
    premium = _org("prem", plan="premium")
    _org("free-idle", plan="free")  # nothing to bill: no invoice, no number used
    draft = selectors.invoice_draft(organization=premium, period=PERIOD)
    assert [(line.kind, line.amount) for line in draft.lines] == [("base_fee", Decimal("49.00"))]
    result = services.invoices_finalise_period(period=PERIOD)
    assert len(result.created) == 1
    invoice = Invoice.objects.get(organization=premium)
    assert invoice.total == Decimal("49.00")
    # A later price change does not touch the finalised invoice.
    services.plan_price_set(plan="premium", monthly_fee=Decimal("99.00"))
    invoice.refresh_from_db()
    assert invoice.total == Decimal("49.00")
    assert PlanPrice.objects.filter(plan="free").get().monthly_fee == Decimal(0)


def test_late_events_within_the_grace_period_are_on_the_invoice() -> None:
    org = _org("late")
    key = make_key(org)
    ingest([_one_event(org, key, START + dt.timedelta(days=3), "1.5")])
    # 30 minutes after the month ended (grace 1 h): not due yet.
    assert selectors.invoice_due_period(END + dt.timedelta(minutes=30), grace_s=3600) is None
    assert services.invoices_finalise_due(now=END + dt.timedelta(minutes=30)) is None
    # An event of the month's last second arrives late, within the grace period.
    ingest([_one_event(org, key, END - dt.timedelta(microseconds=1), "2.25")])
    result = services.invoices_finalise_due(now=END + dt.timedelta(minutes=61))
    assert result is not None
    assert result.period == PERIOD
    assert len(result.created) == 1
    invoice = Invoice.objects.get(organization=org, period=PERIOD)
    assert invoice.subtotal == Decimal("3.75")
    # Arriving after finalisation: the invoice does not change.
    ingest([_one_event(org, key, END - dt.timedelta(seconds=2), "7")])
    services.invoices_finalise_due(now=END + dt.timedelta(hours=3))
    invoice.refresh_from_db()
    assert invoice.subtotal == Decimal("3.75")
    assert Invoice.objects.filter(organization=org).count() == 1


def test_the_beat_task_finalises_the_previous_month(settings) -> None:  # type: ignore[no-untyped-def]
    assert "billing.finalise_invoices" in {
        entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()
    }
    assert settings.VLINDERS_INVOICE_GRACE_S == 3600
    org = _org("beat")
    key = make_key(org)
    now = timezone.now()
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_month = month_start - dt.timedelta(days=1)
    ingest([_one_event(org, key, last_month, "0.5")])
    settings.VLINDERS_INVOICE_GRACE_S = 0
    assert finalise_invoices()["created"] == 1  # type: ignore[index]
    assert finalise_invoices()["created"] == 0  # type: ignore[index]
    assert Invoice.objects.filter(organization=org).count() == 1


def test_finalising_twice_gives_the_same_invoice_and_uses_one_number() -> None:
    org = _org("twice")
    key = make_key(org)
    ingest([_one_event(org, key, START + dt.timedelta(days=1))])
    first = services.invoice_finalise(organization_id=org.pk, period=PERIOD)
    second = services.invoice_finalise(organization_id=org.pk, period=PERIOD)
    assert first.created
    assert not second.created
    assert first.invoice is not None
    assert second.invoice is not None
    assert first.invoice.pk == second.invoice.pk
    other = _org("other")
    ingest([_one_event(other, make_key(other), START + dt.timedelta(days=1))])
    third = services.invoice_finalise(organization_id=other.pk, period=PERIOD).invoice
    assert third is not None
    assert third.number == (first.invoice.number or 0) + 1


def test_finalised_invoices_are_immutable(staff) -> None:  # type: ignore[no-untyped-def]
    org = _org("immutable")
    key = make_key(org)
    ingest([_one_event(org, key, START + dt.timedelta(days=1))])
    invoice = services.invoice_finalise(organization_id=org.pk, period=PERIOD).invoice
    assert invoice is not None
    with pytest.raises(services.InvoiceImmutable):
        services.invoice_adjustment_create(
            organization_id=org.pk,
            period=PERIOD,
            kind="credit",
            amount=Decimal("1.00"),
            reason="too late",
            actor=staff,
        )
    services.invoice_void(invoice_id=invoice.pk, actor=staff)
    with pytest.raises(services.InvoiceImmutable):
        services.invoice_mark_paid(invoice_id=invoice.pk, actor=staff)
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.VOID
    assert invoice.voided_at is not None
    # A void invoice keeps its period and number: finalising again creates nothing new.
    again = services.invoice_finalise(organization_id=org.pk, period=PERIOD)
    assert not again.created
    assert again.invoice is not None
    assert again.invoice.pk == invoice.pk
    # The admin is view-only for invoices and their lines.
    request = RequestFactory().get("/")
    request.user = staff
    model_admin = site._registry[Invoice]
    assert not model_admin.has_change_permission(request, invoice)
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_delete_permission(request, invoice)
    assert not site._registry[InvoiceAdjustment].has_change_permission(request, object())


def test_paid(staff) -> None:  # type: ignore[no-untyped-def]
    org = _org("paid")
    ingest([_one_event(org, make_key(org), START)])
    invoice = services.invoice_finalise(organization_id=org.pk, period=PERIOD).invoice
    assert invoice is not None
    services.invoice_mark_paid(invoice_id=invoice.pk, actor=staff)
    services.invoice_mark_paid(invoice_id=invoice.pk, actor=staff)  # idempotent
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert invoice.paid_at is not None
    assert AuditEvent.objects.filter(action="invoice.paid", target_id=str(invoice.pk)).count() == 1


def test_credit_notes_and_one_off_charges_are_lines_of_the_month_and_audited(staff) -> None:  # type: ignore[no-untyped-def]
    org = _org("credit")
    key = make_key(org)
    ingest([_one_event(org, key, START + dt.timedelta(days=2), "10.004")])
    credit = services.invoice_adjustment_create(
        organization_id=org.pk,
        period=PERIOD,
        kind="credit",
        amount=Decimal("2.50"),
        reason="Outage on the 3rd",
        actor=staff,
    )
    services.invoice_adjustment_create(
        organization_id=org.pk,
        period=PERIOD,
        kind="charge",
        amount=Decimal("5.00"),
        reason="Dedicated onboarding",
        actor=staff,
    )
    assert credit.amount == Decimal("-2.50")
    for bad in ({"amount": Decimal("0")}, {"amount": Decimal("1.001")}, {"reason": " "}):
        args = {"amount": Decimal("1.00"), "reason": "r", **bad}
        with pytest.raises(services.ValidationError):
            services.invoice_adjustment_create(
                organization_id=org.pk, period=PERIOD, kind="credit", actor=staff, **args
            )
    draft = selectors.invoice_draft(organization=org, period=PERIOD)
    assert [line.kind for line in draft.lines] == ["usage", "credit", "charge"]
    invoice = services.invoice_finalise(organization_id=org.pk, period=PERIOD).invoice
    assert invoice is not None
    assert invoice.subtotal == Decimal("12.504")
    assert invoice.total == Decimal("12.50")
    assert invoice.adjustments.count() == 2
    assert [line.amount for line in invoice.lines.filter(kind__in=["credit", "charge"])] == [
        Decimal("-2.50"),
        Decimal("5.00"),
    ]
    audits = AuditEvent.objects.filter(
        action__in=["invoice.credit_created", "invoice.charge_created"]
    )
    assert audits.count() == 2
    assert {a.actor_id for a in audits} == {staff.pk}
    assert AuditEvent.objects.filter(action="invoice.finalised", organization=org).count() == 1


# --- API -----------------------------------------------------------------------------------


@pytest.fixture
def billed(org):  # type: ignore[no-untyped-def]
    org.created_at = START
    org.save()
    key = make_key(org)
    ingest([_one_event(org, key, START + dt.timedelta(days=1), "0.123456789012")])
    invoice = services.invoice_finalise(organization_id=org.pk, period=PERIOD).invoice
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    ingest([_one_event(org, key, now, "3.000000000001")])
    return invoice


@pytest.fixture
def as_admin(org):  # type: ignore[no-untyped-def]
    from rest_framework.test import APIClient

    user = MembershipFactory(organization=org, user=UserFactory(username="admin"), role=Role.ADMIN)
    client = APIClient()
    client.force_login(user.user)
    return client


@pytest.mark.parametrize(
    ("actor", "status"),
    [
        ("as_owner", 200),
        ("as_admin", 200),
        ("as_member", 403),
        ("as_viewer", 403),
        ("as_outsider", 404),
    ],
)
def test_role_matrix(request, billed, actor: str, status: int) -> None:  # type: ignore[no-untyped-def]
    client = request.getfixturevalue(actor)
    base = "/api/v1/orgs/acme/invoices/"
    for url in (base, f"{base}{billed.number}/", f"{base}upcoming/"):
        assert client.get(url).status_code == status, url


def test_anonymous_is_refused(anonymous, billed) -> None:  # type: ignore[no-untyped-def]
    assert anonymous.get("/api/v1/orgs/acme/invoices/").status_code in (401, 403)


def test_list_detail_and_upcoming_with_money_as_strings(as_owner, billed) -> None:  # type: ignore[no-untyped-def]
    listing = as_owner.get("/api/v1/orgs/acme/invoices/").json()
    assert [row["number"] for row in listing["results"]] == [billed.number]
    assert listing["results"][0]["total"] == "0.12"
    detail = as_owner.get(f"/api/v1/orgs/acme/invoices/{billed.number}/").json()
    assert detail["subtotal"] == "0.123456789012"
    assert detail["rounding"] == "-0.003456789012"
    assert detail["status"] == "open"
    assert detail["display_number"] == f"VL-{billed.number:08d}"
    usage = [line for line in detail["lines"] if line["kind"] == "usage"]
    assert usage == [
        {
            "position": 1,
            "kind": "usage",
            "description": "llama-8b: 1000 input tokens, 100 output tokens",
            "model": "llama-8b",
            "requests": 1,
            "input_tokens": 1000,
            "output_tokens": 100,
            "cached_tokens": 0,
            # The event carried no prices (as before they were in the event): no unit price.
            "unit": "",
            "quantity": 0,
            "unit_price_per_mtok": None,
            "amount": "0.123456789012",
        }
    ]
    upcoming = as_owner.get("/api/v1/orgs/acme/invoices/upcoming/").json()
    assert upcoming["status"] == "draft"
    assert upcoming["number"] is None
    assert upcoming["period"] == timezone.now().strftime("%Y-%m")
    assert upcoming["subtotal"] == "3.000000000001"
    assert upcoming["total"] == "3.00"
    # The upcoming invoice is not stored.
    assert Invoice.objects.filter(organization__slug="acme").count() == 1


def test_another_organisations_invoice_number_is_404(as_owner, billed) -> None:  # type: ignore[no-untyped-def]
    other = _org("elsewhere")
    ingest([_one_event(other, make_key(other), START)])
    invoice = services.invoice_finalise(organization_id=other.pk, period=PERIOD).invoice
    assert invoice is not None
    assert as_owner.get(f"/api/v1/orgs/acme/invoices/{invoice.number}/").status_code == 404
