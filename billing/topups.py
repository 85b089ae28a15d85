"""Top-ups of a prepaid organisation's credit through Stripe Checkout (docs/billing.md,
"Stripe").

:func:`topup_start` records a ``TopUp`` (audited) and creates its Checkout session (mode
``payment``, our top-up id as ``client_reference_id`` and in the metadata, idempotency key
``vl-topup-<id>``); the member pays on Stripe's page and comes back to the console's billing page.
Nothing is credited here: the credit comes only from Stripe's signed ``checkout.session.completed``
webhook (``billing.stripe_events``), exactly once.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from billing import stripe_client, stripe_sync
from billing.models import TopUp
from tenants.audit import audit_record
from tenants.models import Organization


class TopUpNotAllowed(Exception):
    """The organisation is not prepaid: it pays its invoices instead."""


def limits() -> tuple[Decimal, Decimal]:
    return Decimal(settings.VLINDERS_TOPUP_MIN), Decimal(settings.VLINDERS_TOPUP_MAX)


def topup_check_amount(amount: Any) -> Decimal:
    """The amount as a Decimal in whole cents within the configured bounds; ``ValidationError``
    (field ``amount``) otherwise."""
    try:
        value = Decimal(str(amount))
    except (InvalidOperation, ValueError) as exc:
        raise ValidationError({"amount": "A decimal amount in USD, such as 25.00."}) from exc
    if not value.is_finite() or value != value.quantize(stripe_client.CENT):
        raise ValidationError({"amount": "The amount must be in whole cents."})
    low, high = limits()
    if not low <= value <= high:
        raise ValidationError({"amount": f"A top-up is between {low} and {high} USD."})
    return value


def billing_page_url(organization: Organization, base_url: str | None) -> str:
    """The console's billing page of the organisation: ``VLINDERS_CONSOLE_URL`` when set, else
    ``base_url`` (the request's scheme and host)."""
    base = settings.VLINDERS_CONSOLE_URL or base_url or ""
    return f"{base.rstrip('/')}/orgs/{organization.slug}/billing/"


def topup_start(
    organization: Organization, amount: Any, actor: Any, *, base_url: str | None = None
) -> TopUp:
    """Start a top-up of ``amount`` USD: returns the ``TopUp`` with its ``checkout_url``.

    Raises ``StripeNotConfigured`` without Stripe, ``TopUpNotAllowed`` for a postpaid
    organisation, ``ValidationError`` for a bad amount and ``stripe.StripeError`` when Stripe
    cannot be reached (the top-up is then marked expired: its session was never shown to
    anyone; should Stripe have created it after all, it can still only be paid through a URL
    nobody received)."""
    if not stripe_client.configured():
        raise stripe_client.StripeNotConfigured()
    if not organization.is_prepaid:
        raise TopUpNotAllowed("Only prepaid organisations top up; this one pays invoices.")
    value = topup_check_amount(amount)
    with transaction.atomic():
        topup = TopUp.objects.create(
            organization=organization,
            amount=value,
            created_by=actor if getattr(actor, "pk", None) is not None else None,
        )
        audit_record(
            organization=organization,
            actor=actor,
            action="topup.started",
            target=topup,
            after={"amount": value, "status": topup.status},
        )
    page = billing_page_url(organization, base_url)
    try:
        customer = stripe_sync.customer_for(organization)
        session = stripe_client.client().v1.checkout.sessions.create(
            params={
                "mode": "payment",
                "customer": customer.customer_id,
                "client_reference_id": str(topup.pk),
                "metadata": {
                    "vl_topup_id": str(topup.pk),
                    "vl_organization_id": str(organization.pk),
                },
                "line_items": [
                    {
                        "quantity": 1,
                        "price_data": {
                            "currency": "usd",
                            "unit_amount": stripe_client.to_cents(value),
                            "product_data": {"name": f"Vlinders credit for {organization.name}"},
                        },
                    }
                ],
                "success_url": f"{page}?topup=success",
                "cancel_url": f"{page}?topup=cancelled",
            },
            options={"idempotency_key": f"vl-topup-{topup.pk}"},
        )
    except Exception:
        TopUp.objects.filter(pk=topup.pk, status=TopUp.Status.PENDING).update(
            status=TopUp.Status.EXPIRED
        )
        raise
    topup.stripe_session_id = session.id
    topup.checkout_url = session.url or ""
    topup.save(update_fields=["stripe_session_id", "checkout_url"])
    return topup
