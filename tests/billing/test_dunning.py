"""Dunning (docs/billing.md, "Dunning"): a failed payment makes the invoice past due and e-mails
the admins; after the grace beat suspends the organisation (audited, the access snapshot says
so, the gateway refuses its keys); a payment lifts it when nothing else is overdue. Time moves
through ``now=`` arguments, never by sleeping."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.db import transaction

from billing import dunning, services
from billing.models import Invoice
from billing.stripe_tasks import dunning_suspend_due
from tenants import snapshot
from tenants.models import AuditEvent, Organization, Role
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 11, 3, 12, 0, tzinfo=dt.UTC)
GRACE = dt.timedelta(days=7)


def make_org(slug: str = "acme") -> Organization:
    org = OrganizationFactory(slug=slug, name=slug.title())
    MembershipFactory(organization=org, user=UserFactory(username=f"{slug}-owner"), role=Role.OWNER)
    MembershipFactory(organization=org, user=UserFactory(username=f"{slug}-admin"), role=Role.ADMIN)
    MembershipFactory(
        organization=org, user=UserFactory(username=f"{slug}-viewer"), role=Role.VIEWER
    )
    return org


_numbers = iter(range(900_000, 1_000_000))


def make_invoice(
    org: Organization,
    period: str = "2026-10",
    total: str = "12.34",
    stripe_id: str = "",
    **fields: object,
) -> Invoice:
    """A finalised, open invoice as finalisation leaves it (built directly: these tests are
    about what happens to it afterwards)."""
    year, month = (int(x) for x in period.split("-"))
    start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return Invoice.objects.create(
        organization=org,
        period=period,
        status=Invoice.Status.OPEN,
        number=next(_numbers),
        period_start=start,
        period_end=end,
        subtotal=Decimal(total),
        total=Decimal(total),
        rounding=Decimal(0),
        issued_at=end + dt.timedelta(hours=2),
        stripe_invoice_id=stripe_id,
        payment_url=f"https://pay.example/{stripe_id}" if stripe_id else "",
        **fields,
    )


def fail(invoice: Invoice, at: dt.datetime) -> bool:
    with transaction.atomic():
        locked = (
            Invoice.objects.select_for_update().select_related("organization").get(pk=invoice.pk)
        )
        return dunning.mark_past_due(locked, failed_at=at)


def gateway_record(redis_client, org: Organization) -> dict:  # type: ignore[no-untyped-def]
    raw = redis_client.get(snapshot.org_record_name(org.id))
    assert raw is not None
    return json.loads(raw)  # type: ignore[no-any-return]


def test_a_failed_payment_makes_the_invoice_past_due_and_emails_the_admins_once(
    mailoutbox, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    org = make_org()
    invoice = make_invoice(org, stripe_id="in_1")
    with django_capture_on_commit_callbacks(execute=True):
        assert fail(invoice, T0) is True
        assert fail(invoice, T0 + dt.timedelta(days=1)) is False  # Stripe's next attempt
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAST_DUE
    assert invoice.payment_failed_at == T0  # the grace runs from the first failure
    assert len(mailoutbox) == 1
    mail = mailoutbox[0]
    assert sorted(mail.to) == ["acme-admin@example.test", "acme-owner@example.test"]
    assert invoice.display_number in mail.subject
    assert "https://pay.example/in_1" in mail.body
    assert (
        AuditEvent.objects.filter(action="invoice.past_due", target_id=str(invoice.pk)).count() == 1
    )


def test_a_failure_of_a_paid_or_void_invoice_changes_nothing(mailoutbox) -> None:  # type: ignore[no-untyped-def]
    org = make_org()
    paid = make_invoice(org, "2026-09")
    services.invoice_mark_paid(invoice_id=paid.pk, actor=None)
    void = make_invoice(org, "2026-10")
    services.invoice_void(invoice_id=void.pk, actor=None)
    assert fail(paid, T0) is False
    assert fail(void, T0) is False
    assert Invoice.objects.get(pk=paid.pk).status == Invoice.Status.PAID
    assert Invoice.objects.get(pk=void.pk).status == Invoice.Status.VOID


def test_after_the_grace_beat_suspends_the_organisation_and_the_gateway_sees_it(
    redis_client, mailoutbox, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    org = make_org()
    invoice = make_invoice(org, stripe_id="in_1")
    with django_capture_on_commit_callbacks(execute=True):
        fail(invoice, T0)
        snapshot.publish_organization_on_commit(org.id)
    assert gateway_record(redis_client, org)["status"] == "active"
    mailoutbox.clear()

    # One second short of the grace: nothing.
    with django_capture_on_commit_callbacks(execute=True):
        assert dunning.suspend_due(now=T0 + GRACE - dt.timedelta(seconds=1)) == []
    org.refresh_from_db()
    assert org.payment_suspended_at is None
    assert mailoutbox == []

    later = T0 + GRACE
    with django_capture_on_commit_callbacks(execute=True):
        assert dunning.suspend_due(now=later) == [org.pk]
    org.refresh_from_db()
    assert org.payment_suspended_at == later
    record = gateway_record(redis_client, org)
    assert record["status"] == "suspended"
    assert record["suspended_reason"] == "payment"
    audit = AuditEvent.objects.get(action="organization.payment_suspended")
    assert audit.after["invoices"] == [invoice.display_number]
    assert len(mailoutbox) == 1
    assert "suspended" in mailoutbox[0].subject
    assert "https://pay.example/in_1" in mailoutbox[0].body

    # Beat again: already suspended, nothing new.
    with django_capture_on_commit_callbacks(execute=True):
        assert dunning.suspend_due(now=later + dt.timedelta(hours=1)) == []
    assert AuditEvent.objects.filter(action="organization.payment_suspended").count() == 1
    assert len(mailoutbox) == 1


def test_the_grace_is_configurable(settings) -> None:  # type: ignore[no-untyped-def]
    settings.VLINDERS_DUNNING_GRACE_S = 3600
    org = make_org()
    fail(make_invoice(org), T0)
    assert dunning.suspend_due(now=T0 + dt.timedelta(minutes=59)) == []
    assert dunning.suspend_due(now=T0 + dt.timedelta(hours=1)) == [org.pk]


def test_staff_payment_reactivates_and_republishes(
    redis_client, mailoutbox, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    org = make_org()
    invoice = make_invoice(org)
    fail(invoice, T0)
    with django_capture_on_commit_callbacks(execute=True):
        dunning.suspend_due(now=T0 + GRACE)
    mailoutbox.clear()
    staff = UserFactory(username="staff", is_staff=True)

    with django_capture_on_commit_callbacks(execute=True):
        paid = services.invoice_mark_paid(invoice_id=invoice.pk, actor=staff)
    assert paid.status == Invoice.Status.PAID
    assert paid.payment_failed_at is None
    org.refresh_from_db()
    assert org.payment_suspended_at is None
    record = gateway_record(redis_client, org)
    assert record["status"] == "active"
    assert record["suspended_reason"] is None
    audit = AuditEvent.objects.get(action="organization.payment_reactivated")
    assert audit.actor == staff
    assert len(mailoutbox) == 1
    assert "work again" in mailoutbox[0].subject


def test_reactivation_waits_for_every_overdue_invoice(django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    org = make_org()
    september, october = make_invoice(org, "2026-09"), make_invoice(org, "2026-10")
    fail(september, T0)
    fail(october, T0 + dt.timedelta(hours=1))
    now = T0 + GRACE + dt.timedelta(days=1)
    dunning.suspend_due(now=now)

    services.invoice_mark_paid(invoice_id=september.pk, actor=None, now=now)
    org.refresh_from_db()
    assert org.payment_suspended_at is not None  # October is still overdue
    services.invoice_mark_paid(invoice_id=october.pk, actor=None, now=now)
    org.refresh_from_db()
    assert org.payment_suspended_at is None


def test_an_invoice_past_due_within_its_grace_does_not_keep_the_suspension() -> None:
    org = make_org()
    september, october = make_invoice(org, "2026-09"), make_invoice(org, "2026-10")
    fail(september, T0)
    now = T0 + GRACE
    dunning.suspend_due(now=now)
    fail(october, now - dt.timedelta(days=1))  # failed yesterday: its grace runs for 6 more days

    services.invoice_mark_paid(invoice_id=september.pk, actor=None, now=now)
    org.refresh_from_db()
    assert org.payment_suspended_at is None
    # ... until October's own grace ends.
    assert dunning.suspend_due(now=now + dt.timedelta(days=6)) == [org.pk]


def test_the_beat_task_suspends(settings) -> None:  # type: ignore[no-untyped-def]
    settings.VLINDERS_DUNNING_GRACE_S = 0
    org = make_org()
    fail(make_invoice(org), dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert dunning_suspend_due() == {"suspended": 1}
    assert dunning_suspend_due() == {"suspended": 0}


def test_a_staff_suspension_is_not_lifted_by_a_payment(django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    from tenants.services import organization_set_status

    org = make_org()
    invoice = make_invoice(org)
    fail(invoice, T0)
    dunning.suspend_due(now=T0 + GRACE)
    organization_set_status(organization=org, status=Organization.Status.SUSPENDED)
    services.invoice_mark_paid(invoice_id=invoice.pk, actor=None)
    org.refresh_from_db()
    assert org.payment_suspended_at is None
    assert org.status == Organization.Status.SUSPENDED
