"""Our side of Stripe's objects: an organisation's customer, and finalised invoices pushed to
Stripe for payment collection (docs/billing.md, "Stripe").

Every call carries an idempotency key derived from our ids, so a retried step (a task that died
after Stripe answered, two workers, a beat retry) gets Stripe's first answer again instead of a
second object:

- customer ``vl-customer-<organisation id>``;
- invoice ``vl-invoice-<invoice id>``; each line ``vl-invoice-<invoice id>-item-<position>``,
  the rounding item ``vl-invoice-<invoice id>-item-rounding``, the tax item
  ``vl-invoice-<invoice id>-item-tax``; ``vl-invoice-<invoice id>-finalize``.

Each Stripe id is stored as soon as Stripe returns it (the invoice's in its own transaction), so a
later retry continues from there. Stripe forgets idempotency keys after 24 hours, so a retry of a
push whose Stripe invoice exists reads it first: finalised already, only its URL is stored; still
a draft, only the items it lacks (by the ``vl_item`` metadata of its lines) are created.

**Amounts.** Stripe takes integer cents. Our lines are exact to 12 decimal places and only the
total is rounded (docs/billing.md, "Totals"). Each line is pushed rounded half up to cents and,
when those cents do not add up to our ``total``, one more item named "Rounding" carries the
difference, so the Stripe invoice's total is exactly our ``total``; the invoice's tax (stored on it
when it was built, ``billing/tax.py``) is one more item, so Stripe collects ``total_due``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import IntegrityError, transaction

from billing import stripe_client
from billing.alerts import recipients
from billing.models import Invoice, InvoiceLine, StripeCustomer
from tenants.audit import audit_record
from tenants.models import Organization

logger = logging.getLogger(__name__)

PUSH_TASK = "billing.stripe_push_invoice"
PAID_TASK = "billing.stripe_invoice_paid_out_of_band"


def customer_for(organization: Organization) -> StripeCustomer:
    """The organisation's Stripe customer, created on first need (one per organisation: the
    idempotency key and the one-to-one row make a second worker get the same customer)."""
    existing = StripeCustomer.objects.filter(organization=organization).first()
    if existing is not None:
        return existing
    emails = recipients(organization.pk)
    email = emails[0] if emails else ""
    params: dict[str, Any] = {
        "name": organization.name,
        "metadata": {"vl_organization_id": str(organization.pk), "vl_slug": organization.slug},
    }
    if email:
        params["email"] = email
    customer = stripe_client.client().v1.customers.create(
        params=params,  # type: ignore[arg-type]
        options={"idempotency_key": f"vl-customer-{organization.pk}"},
    )
    try:
        with transaction.atomic():
            row = StripeCustomer.objects.create(
                organization=organization, customer_id=customer.id, email=email
            )
            audit_record(
                organization=organization,
                actor=None,
                action="stripe.customer_created",
                target=row,
                after={"customer_id": customer.id},
            )
    except IntegrityError:  # another worker stored it first (same customer, same key)
        return StripeCustomer.objects.get(organization=organization)
    return row


@dataclass(frozen=True)
class StripeItem:
    key: str  # the idempotency suffix: a line's position, or "rounding"
    description: str
    cents: int


def stripe_items(invoice: Invoice, lines: list[InvoiceLine]) -> list[StripeItem]:
    """The invoice items pushed for ``invoice``: each line in cents (half up), plus a "Rounding"
    item when needed so that they sum to exactly ``invoice.total`` (see the module doc), plus the
    invoice's own tax as one item: Stripe collects ``total_due``, what the PDF says."""
    items = [
        StripeItem(str(line.position), line.description, stripe_client.to_cents(line.amount))
        for line in lines
    ]
    difference = stripe_client.to_cents(invoice.total) - sum(item.cents for item in items)
    if difference:
        items.append(StripeItem("rounding", "Rounding", difference))
    if invoice.tax:
        rate = invoice.tax_rate_percent.normalize() if invoice.tax_rate_percent else 0
        label = f"{invoice.tax_name} {rate:f}%"
        items.append(StripeItem("tax", label, stripe_client.to_cents(invoice.tax)))
    return items


def pushable(invoice: Invoice) -> bool:
    """Stripe collects open invoices with something to pay; a total of zero or less (credits)
    has nothing to collect and stays with staff."""
    return (
        invoice.status == Invoice.Status.OPEN
        and invoice.total_due > 0
        and not invoice.payment_url
        and stripe_client.configured()
    )


def _epoch(moment: int | None) -> datetime | None:
    return datetime.fromtimestamp(moment, tz=UTC) if moment else None


def invoice_push(invoice_id: Any) -> Invoice:
    """Push one finalised invoice to Stripe (customer, invoice, items, finalise) and store its
    Stripe id and payment URL. Idempotent: a pushed invoice, or one not to push, is returned as
    it is. A Stripe error propagates (the caller retries later; nothing is duplicated)."""
    invoice = Invoice.objects.select_related("organization").get(pk=invoice_id)
    if not pushable(invoice):
        return invoice
    api = stripe_client.client()
    customer = customer_for(invoice.organization)
    currency = invoice.currency.lower()
    key = f"vl-invoice-{invoice.pk}"
    stripe_id = invoice.stripe_invoice_id
    if not stripe_id:
        created = api.v1.invoices.create(
            params={
                "customer": customer.customer_id,
                "currency": currency,
                "collection_method": "send_invoice",
                "days_until_due": settings.STRIPE_INVOICE_DAYS_UNTIL_DUE,
                "auto_advance": False,
                "pending_invoice_items_behavior": "exclude",
                "description": f"Vlinders invoice {invoice.display_number} ({invoice.period})",
                "metadata": {
                    "vl_invoice_id": str(invoice.pk),
                    "vl_invoice_number": invoice.display_number,
                    "vl_organization_id": str(invoice.organization_id),
                },
            },
            options={"idempotency_key": key},
        )
        stripe_id = created.id
        Invoice.objects.filter(pk=invoice.pk, stripe_invoice_id="").update(
            stripe_invoice_id=stripe_id
        )
    already: set[str] = set()
    if invoice.stripe_invoice_id:
        # A retry of a push that got as far as creating the Stripe invoice, maybe hours later:
        # read what Stripe has rather than rely on idempotency keys alone (Stripe forgets them
        # after 24 hours).
        remote = api.v1.invoices.retrieve(stripe_id)
        if remote.status != "draft":
            return _store_pushed(invoice, stripe_id, remote)
        listed = api.v1.invoices.line_items.list(stripe_id, params={"limit": 100})
        metadata = [_metadata(line) for line in listed.auto_paging_iter()]
        already = {
            meta.get("vl_item", "")
            for meta in metadata
            if meta.get("vl_invoice_id") == str(invoice.pk)
        }
    lines = list(invoice.lines.order_by("position"))
    for item in stripe_items(invoice, lines):
        if item.key in already:
            continue
        api.v1.invoice_items.create(
            params={
                "customer": customer.customer_id,
                "invoice": stripe_id,
                "currency": currency,
                "amount": item.cents,
                "description": item.description[:500],
                "metadata": {"vl_invoice_id": str(invoice.pk), "vl_item": item.key},
            },
            options={"idempotency_key": f"{key}-item-{item.key}"},
        )
    finalized = api.v1.invoices.finalize_invoice(
        stripe_id, params={"auto_advance": True}, options={"idempotency_key": f"{key}-finalize"}
    )
    return _store_pushed(invoice, stripe_id, finalized)


def _metadata(obj: Any) -> dict[str, str]:
    raw = getattr(obj, "metadata", None)
    return {str(k): str(v) for k, v in raw.to_dict().items()} if raw else {}


def _store_pushed(invoice: Invoice, stripe_id: str, finalized: Any) -> Invoice:
    """Store what the finalised Stripe invoice says (payment URL, due date); audited once."""
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if locked.payment_url:
            return locked
        locked.stripe_invoice_id = stripe_id
        locked.payment_url = finalized.hosted_invoice_url or ""
        fields = ["stripe_invoice_id", "payment_url"]
        due = _epoch(getattr(finalized, "due_date", None))
        if due is not None and locked.due_at is None:
            locked.due_at = due
            fields.append("due_at")
        locked.save(update_fields=fields)
        audit_record(
            organization=invoice.organization,
            actor=None,
            action="invoice.pushed",
            target=locked,
            after={"stripe_invoice_id": stripe_id, "total": locked.total, "due_at": locked.due_at},
        )
    return locked


def push_on_commit(invoice_id: Any) -> None:
    """After the current transaction commits, queue the push of ``invoice_id`` (nothing without
    Stripe). A queueing failure is logged: the beat task pushes every unpushed invoice."""
    if not stripe_client.configured():
        return

    def enqueue() -> None:
        try:
            current_app.tasks[PUSH_TASK].delay(str(invoice_id))
        except Exception:
            logger.exception(
                "stripe: queueing the push of invoice %s failed; beat retries", invoice_id
            )

    transaction.on_commit(enqueue)


def invoices_to_push() -> list[Any]:
    """Ids of the invoices beat pushes: open, with something to pay, not pushed yet."""
    if not stripe_client.configured():
        return []
    return list(
        Invoice.objects.filter(status=Invoice.Status.OPEN, total__gt=0, payment_url="")
        .order_by("issued_at")
        .values_list("pk", flat=True)
    )


def paid_out_of_band_on_commit(invoice: Invoice) -> None:
    """After commit, tell Stripe that an invoice staff marked paid was paid outside Stripe, so
    Stripe stops asking the organisation for it (and cannot collect it twice)."""
    if not stripe_client.configured() or not invoice.stripe_invoice_id:
        return
    invoice_id = invoice.pk

    def enqueue() -> None:
        try:
            current_app.tasks[PAID_TASK].delay(str(invoice_id))
        except Exception:
            logger.exception("stripe: queueing paid-out-of-band of invoice %s failed", invoice_id)

    transaction.on_commit(enqueue)


def invoice_paid_out_of_band(invoice_id: Any) -> bool:
    """Mark our paid invoice's Stripe invoice paid out of band (``POST /v1/invoices/<id>/pay``,
    ``paid_out_of_band``; key ``vl-invoice-<id>-paid-out-of-band``). Returns whether Stripe took
    it; a Stripe invoice that is already paid (the customer paid there meanwhile) raises
    Stripe's ``InvalidRequestError``."""
    invoice = Invoice.objects.get(pk=invoice_id)
    if invoice.status != Invoice.Status.PAID or not invoice.stripe_invoice_id:
        return False
    stripe_client.client().v1.invoices.pay(
        invoice.stripe_invoice_id,
        params={"paid_out_of_band": True},
        options={"idempotency_key": f"vl-invoice-{invoice.pk}-paid-out-of-band"},
    )
    return True
