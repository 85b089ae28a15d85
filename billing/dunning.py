"""Dunning: what happens when an invoice is not paid (docs/billing.md, "Dunning").

1. A failed payment (Stripe's ``invoice.payment_failed``) marks the invoice ``past_due`` with
   ``payment_failed_at`` and e-mails the organisation's owners and admins, once per invoice
   (:func:`mark_past_due`).
2. ``VLINDERS_DUNNING_GRACE_S`` (default 7 days) after that failure, beat suspends the
   organisation for payment (:func:`suspend_due`): ``Organization.payment_suspended_at`` is set,
   audited, and the organisation's access-snapshot record is republished after commit, so the
   gateway refuses its keys (``suspended_reason: "payment"``); the admins are e-mailed.
3. A payment (Stripe's ``invoice.paid`` or staff's ``invoice_mark_paid``) lifts the suspension
   when no other invoice of the organisation is past due beyond the grace
   (:func:`reactivate_if_settled`), audited and republished the same way.

Every change takes the organisation's row lock (as invoice finalisation does), so a suspension
and a payment of the same organisation never interleave.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from billing.alerts import recipients
from billing.models import Invoice
from tenants import snapshot
from tenants.audit import audit_record
from tenants.models import Organization

logger = logging.getLogger(__name__)


def grace() -> timedelta:
    return timedelta(seconds=settings.VLINDERS_DUNNING_GRACE_S)


def grace_days() -> str:
    days = settings.VLINDERS_DUNNING_GRACE_S / 86400
    return f"{days:g}"


def email_admins_on_commit(
    organization: Organization, subject: str, template: str, context: dict[str, Any]
) -> None:
    """After commit, e-mail the organisation's active owners and admins (rendered from
    ``billing/email/<template>.txt``). A failed send is logged, never raised: the state change
    it reports is already committed."""
    body = render_to_string(
        f"billing/email/{template}.txt",
        {"organization": organization, "grace_days": grace_days(), **context},
    )
    organization_id = organization.pk

    def send() -> None:
        to = recipients(organization_id)
        if not to:
            logger.warning("dunning: organisation %s has no owner or admin e-mail", organization_id)
            return
        try:
            send_mail(subject, body, None, to)
        except Exception:
            logger.exception("dunning: sending %r to %s failed", subject, organization_id)

    transaction.on_commit(send)


def _lock(organization_id: Any) -> Organization:
    return Organization.objects.select_for_update(no_key=True).get(pk=organization_id)


def mark_past_due(invoice: Invoice, *, failed_at: datetime) -> bool:
    """An open or past-due invoice whose payment failed; ``invoice`` must be locked by the
    caller's transaction. The first failure sets ``payment_failed_at`` (the grace runs from it),
    audits and e-mails; later failures of the same invoice change nothing. Returns whether this
    was the first failure."""
    if invoice.status not in (Invoice.Status.OPEN, Invoice.Status.PAST_DUE):
        return False  # paid or void: a late failure report of something already settled
    if invoice.payment_failed_at is not None:
        return False
    before = invoice.status
    invoice.status = Invoice.Status.PAST_DUE
    invoice.payment_failed_at = failed_at
    invoice.save(update_fields=["status", "payment_failed_at"])
    audit_record(
        organization=invoice.organization,
        actor=None,
        action="invoice.past_due",
        target=invoice,
        before={"status": before},
        after={"status": invoice.status, "payment_failed_at": failed_at},
    )
    email_admins_on_commit(
        invoice.organization,
        f"[Vlinders] Payment of invoice {invoice.display_number} failed",
        "payment_failed",
        {"invoice": invoice},
    )
    return True


def overdue_invoices(organization_id: Any, now: datetime) -> list[Invoice]:
    """The organisation's past-due invoices whose grace has run out at ``now``."""
    return list(
        Invoice.objects.filter(
            organization_id=organization_id,
            status=Invoice.Status.PAST_DUE,
            payment_failed_at__lte=now - grace(),
        ).order_by("number")
    )


def suspend_due(*, now: datetime | None = None) -> list[Any]:
    """Suspend every organisation with an invoice past due beyond the grace that is not
    suspended yet; returns their ids. Each in its own transaction; idempotent."""
    now = now or timezone.now()
    candidates = (
        Invoice.objects.filter(
            status=Invoice.Status.PAST_DUE,
            payment_failed_at__lte=now - grace(),
            organization__payment_suspended_at__isnull=True,
        )
        .values_list("organization_id", flat=True)
        .distinct()
    )
    suspended = []
    for organization_id in list(candidates):
        with transaction.atomic():
            organization = _lock(organization_id)
            if organization.payment_suspended_at is not None:
                continue
            overdue = overdue_invoices(organization_id, now)
            if not overdue:
                continue
            organization.payment_suspended_at = now
            organization.save(update_fields=["payment_suspended_at", "updated_at"])
            audit_record(
                organization=organization,
                actor=None,
                action="organization.payment_suspended",
                target=organization,
                before={"payment_suspended_at": None},
                after={
                    "payment_suspended_at": now,
                    "invoices": [invoice.display_number for invoice in overdue],
                },
            )
            snapshot.publish_organization_on_commit(organization.id)
            email_admins_on_commit(
                organization,
                f"[Vlinders] {organization.name}'s API keys are suspended for non-payment",
                "payment_suspended",
                {"invoices": overdue},
            )
            suspended.append(organization_id)
    return suspended


def reactivate_if_settled(organization_id: Any, *, actor: Any, now: datetime | None = None) -> bool:
    """Lift a payment suspension when no invoice of the organisation is past due beyond the
    grace any more. Runs in the caller's transaction (the one that recorded the payment).
    Returns whether the organisation was reactivated."""
    now = now or timezone.now()
    with transaction.atomic():
        organization = _lock(organization_id)
        if organization.payment_suspended_at is None:
            return False
        if overdue_invoices(organization_id, now):
            return False
        before = organization.payment_suspended_at
        organization.payment_suspended_at = None
        organization.save(update_fields=["payment_suspended_at", "updated_at"])
        audit_record(
            organization=organization,
            actor=actor,
            action="organization.payment_reactivated",
            target=organization,
            before={"payment_suspended_at": before},
            after={"payment_suspended_at": None},
        )
        snapshot.publish_organization_on_commit(organization.id)
        email_admins_on_commit(
            organization,
            f"[Vlinders] {organization.name}'s API keys work again",
            "payment_reactivated",
            {},
        )
        return True
