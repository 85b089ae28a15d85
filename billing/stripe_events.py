"""Processing of stored Stripe webhook events (docs/billing.md, "Stripe").

:func:`process` runs one event in one transaction with its effect: it locks the event row
(``SELECT … FOR UPDATE``), returns if it is already processed, applies the handler of its type
and sets ``processed_at``. Two workers given the same event (a redelivery, the beat retry) thus
apply it once. A handler that fails rolls everything back; the error and the attempt are recorded
and beat retries the event.

Handlers decide from the state of our rows, not from the order of delivery (Stripe does not
guarantee one): a payment failure reported after the invoice was paid changes nothing, a
checkout completed twice credits once (the credit's unique reference), an expiry reported after
the completion leaves the top-up completed. Event types without a handler are stored and marked
processed (ignored).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from billing import dunning, prepaid, services, stripe_client
from billing.models import Invoice, StripeCustomer, StripeEvent, TopUp
from tenants.audit import audit_record

logger = logging.getLogger(__name__)

Handler = Callable[[StripeEvent, dict[str, Any]], None]


def _when(event: StripeEvent) -> datetime:
    return event.stripe_created or timezone.now()


def _our_invoice(obj: dict[str, Any]) -> Invoice | None:
    """Our invoice behind a Stripe invoice object (by the id we put in its metadata, else by its
    Stripe id), locked; ``None`` for an invoice that is not ours."""
    ours = (obj.get("metadata") or {}).get("vl_invoice_id")
    query = Invoice.objects.select_for_update().select_related("organization")
    if ours:
        try:
            found = query.filter(pk=ours).first()
        except ValidationError:  # not a UUID: not one of ours
            found = None
        if found is not None:
            return found
    stripe_id = obj.get("id")
    return query.filter(stripe_invoice_id=stripe_id).first() if stripe_id else None


def invoice_paid(event: StripeEvent, obj: dict[str, Any]) -> None:
    invoice = _our_invoice(obj)
    if invoice is None or invoice.status not in (Invoice.Status.OPEN, Invoice.Status.PAST_DUE):
        return
    paid = (obj.get("status_transitions") or {}).get("paid_at")
    paid_at = datetime.fromtimestamp(paid, tz=UTC) if paid else _when(event)
    services.invoice_mark_paid(invoice_id=invoice.pk, actor=None, paid_at=paid_at, from_stripe=True)


def invoice_payment_failed(event: StripeEvent, obj: dict[str, Any]) -> None:
    invoice = _our_invoice(obj)
    if invoice is None:
        return
    # A failure Stripe reports after the invoice was paid or voided (out of order) is stale:
    # mark_past_due only moves an open or past-due invoice.
    dunning.mark_past_due(invoice, failed_at=_when(event))


def invoice_payment_action_required(event: StripeEvent, obj: dict[str, Any]) -> None:
    invoice = _our_invoice(obj)
    if invoice is None or invoice.status not in (Invoice.Status.OPEN, Invoice.Status.PAST_DUE):
        return
    url = obj.get("hosted_invoice_url") or invoice.payment_url
    dunning.email_admins_on_commit(
        invoice.organization,
        f"[Vlinders] Invoice {invoice.display_number}: your payment needs confirming",
        "payment_action_required",
        {"invoice": invoice, "payment_url": url},
    )


def _topup(obj: dict[str, Any]) -> TopUp | None:
    ours = obj.get("client_reference_id") or (obj.get("metadata") or {}).get("vl_topup_id")
    query = TopUp.objects.select_for_update().select_related("organization")
    if ours:
        try:
            found = query.filter(pk=ours).first()
        except ValidationError:  # not a UUID: not one of ours
            found = None
        if found is not None:
            return found
    return query.filter(stripe_session_id=obj.get("id") or "-").first()


def checkout_completed(event: StripeEvent, obj: dict[str, Any]) -> None:
    """A top-up paid: credit it once (``checkout:<session id>`` is the credit's unique
    reference), mark it completed, publish the new balance after commit. A session whose payment
    is still pending (a delayed payment method) is credited by its
    ``checkout.session.async_payment_succeeded`` event instead."""
    if obj.get("payment_status") != "paid":
        return
    topup = _topup(obj)
    if topup is None:
        logger.warning("stripe: checkout session %s is not one of our top-ups", obj.get("id"))
        return
    session_id = str(obj["id"])
    paid_cents = obj.get("amount_total")
    if paid_cents is not None and int(paid_cents) != stripe_client.to_cents(topup.amount):
        raise ValueError(
            f"checkout session {session_id} paid {paid_cents} cents for top-up {topup.pk} "
            f"of {topup.amount}; not credited, see the event in the admin"
        )
    organization = topup.organization
    entry, created = prepaid.credit(
        organization,
        Decimal(topup.amount),
        kind="topup",
        reference=f"checkout:{session_id}",
        description=f"Top-up {topup.pk}",
        actor=topup.created_by,
    )
    if topup.status != TopUp.Status.COMPLETED:
        before = topup.status
        topup.status = TopUp.Status.COMPLETED
        topup.completed_at = _when(event)
        topup.stripe_session_id = topup.stripe_session_id or session_id
        topup.save(update_fields=["status", "completed_at", "stripe_session_id"])
        audit_record(
            organization=organization,
            actor=None,
            action="topup.completed",
            target=topup,
            before={"status": before},
            after={"status": topup.status, "amount": topup.amount, "credit": entry.pk},
        )
    if created:
        transaction.on_commit(lambda: prepaid.publish_balance(organization))


def checkout_expired(event: StripeEvent, obj: dict[str, Any]) -> None:
    topup = _topup(obj)
    if topup is None or topup.status != TopUp.Status.PENDING:
        return  # completed stays completed, whatever order the events came in
    topup.status = TopUp.Status.EXPIRED
    topup.save(update_fields=["status"])
    audit_record(
        organization=topup.organization,
        actor=None,
        action="topup.expired",
        target=topup,
        before={"status": TopUp.Status.PENDING},
        after={"status": topup.status},
    )


def customer_updated(event: StripeEvent, obj: dict[str, Any]) -> None:
    email = obj.get("email") or ""
    StripeCustomer.objects.filter(customer_id=obj.get("id") or "-").exclude(email=email).update(
        email=email
    )


HANDLERS: dict[str, Handler] = {
    "invoice.paid": invoice_paid,
    "invoice.payment_failed": invoice_payment_failed,
    "invoice.payment_action_required": invoice_payment_action_required,
    "checkout.session.completed": checkout_completed,
    "checkout.session.async_payment_succeeded": checkout_completed,
    "checkout.session.expired": checkout_expired,
    "customer.updated": customer_updated,
}


def process(event_id: str) -> bool:
    """Apply one stored event (see the module doc). Returns whether it was applied now (False:
    already processed). A handler's exception is recorded on the event and raised again."""
    try:
        with transaction.atomic():
            event = StripeEvent.objects.select_for_update().get(pk=event_id)
            if event.processed_at is not None:
                return False
            handler = HANDLERS.get(event.type)
            if handler is not None:
                handler(event, (event.payload.get("data") or {}).get("object") or {})
            event.processed_at = timezone.now()
            event.attempts += 1
            event.error = ""
            event.save(update_fields=["processed_at", "attempts", "error"])
            return True
    except Exception as exc:
        StripeEvent.objects.filter(pk=event_id, processed_at__isnull=True).update(
            attempts=F("attempts") + 1, error=f"{type(exc).__name__}: {exc}"[:2000]
        )
        raise


def pending_events() -> list[str]:
    """Ids of the stored events not processed yet, oldest first (what beat retries)."""
    return list(
        StripeEvent.objects.filter(processed_at__isnull=True)
        .order_by("received_at")
        .values_list("event_id", flat=True)
    )
