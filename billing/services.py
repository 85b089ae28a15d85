"""Writes of billing's invoices (docs/billing.md, "Invoices"): finalisation, status changes,
credit notes and one-off charges, the price book.

Finalisation is idempotent under concurrency. In one transaction per organisation and month it:

1. locks the organisation's row (``FOR NO KEY UPDATE``: does not block rows that reference it),
   which serialises everything that writes that organisation's invoices and adjustments;
2. returns the invoice if one exists already (a beat run twice, two workers, a redelivered task);
3. builds the invoice from the committed rollups (``selectors.invoice_draft``);
4. locks the sequence row, takes the next number and inserts the invoice and its lines.

The number is consumed in the transaction that inserts the invoice, so a rollback returns it:
numbers have no gaps. The unique constraint on (organisation, period) is the last line of
defence should the lock ever be bypassed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from billing import dunning, selectors, spend, stripe_sync
from billing.models import Invoice, InvoiceAdjustment, InvoiceLine, InvoiceSequence, PlanPrice
from tenants.audit import audit_record
from tenants.models import Organization

SEQUENCE = "invoice"


class InvoiceImmutable(ValidationError):
    """A change to a finalised invoice, or to a month whose invoice is finalised."""


def _lock_organization(organization_id: Any) -> Organization:
    return Organization.objects.select_for_update(no_key=True).get(pk=organization_id)


def _next_number() -> int:
    sequence, _ = InvoiceSequence.objects.get_or_create(name=SEQUENCE)
    sequence = InvoiceSequence.objects.select_for_update().get(pk=SEQUENCE)
    sequence.last_number += 1
    sequence.save(update_fields=["last_number"])
    return sequence.last_number


def _finalised(organization_id: Any, period: str) -> Invoice | None:
    return (
        Invoice.objects.filter(organization_id=organization_id, period=period)
        .exclude(status=Invoice.Status.DRAFT)
        .first()
    )


@dataclass
class FinaliseOutcome:
    invoice: Invoice | None
    created: bool


def invoice_finalise(
    *, organization_id: Any, period: str, now: datetime | None = None
) -> FinaliseOutcome:
    """Finalise ``organization_id``'s invoice for ``period`` (see the module doc). Returns the
    existing invoice when there is one, and ``None`` when there is nothing to bill."""
    spend.month_range(period)  # ValueError for a malformed period
    with transaction.atomic():
        organization = _lock_organization(organization_id)
        existing = _finalised(organization.pk, period)
        if existing is not None:
            return FinaliseOutcome(existing, created=False)
        draft = selectors.invoice_draft(organization=organization, period=period)
        if draft.is_empty:
            return FinaliseOutcome(None, created=False)
        invoice = draft.invoice
        invoice.status = Invoice.Status.OPEN
        invoice.issued_at = now or timezone.now()
        invoice.number = _next_number()
        invoice.save(force_insert=True)
        InvoiceLine.objects.bulk_create(draft.lines)
        if draft.adjustments:
            InvoiceAdjustment.objects.filter(pk__in=[a.pk for a in draft.adjustments]).update(
                invoice=invoice
            )
        audit_record(
            organization=organization,
            actor=None,
            action="invoice.finalised",
            target=invoice,
            after={
                "number": invoice.number,
                "period": period,
                "total": invoice.total,
                "subtotal": invoice.subtotal,
            },
        )
        # Stripe collects it: pushed by a task once this transaction commits (nothing without
        # Stripe; beat retries what was not pushed). docs/billing.md, "Stripe".
        stripe_sync.push_on_commit(invoice.pk)
        return FinaliseOutcome(invoice, created=True)


@dataclass
class PeriodFinalised:
    period: str
    created: list[int] = field(default_factory=list)  # invoice numbers
    existing: int = 0
    empty: int = 0


def invoices_finalise_period(*, period: str, now: datetime | None = None) -> PeriodFinalised:
    """Finalise the invoices of every organisation with something to bill in ``period``; each in
    its own transaction, so one failure leaves the others finalised and the next run goes on."""
    result = PeriodFinalised(period=period)
    for organization_id in selectors.organizations_to_invoice(period):
        outcome = invoice_finalise(organization_id=organization_id, period=period, now=now)
        if outcome.created and outcome.invoice is not None:
            result.created.append(outcome.invoice.number or 0)
        elif outcome.invoice is not None:
            result.existing += 1
        else:
            result.empty += 1
    return result


def invoices_finalise_due(*, now: datetime | None = None) -> PeriodFinalised | None:
    """What beat runs: finalise the previous month once its grace period has passed."""
    period = selectors.invoice_due_period(now)
    if period is None:
        return None
    return invoices_finalise_period(period=period, now=now)


def _set_status(
    *, invoice_id: Any, actor: Any, status: str, allowed_from: set[str], action: str
) -> Invoice:
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
        if invoice.status == status:
            return invoice
        if invoice.status not in allowed_from:
            raise InvoiceImmutable(f"A {invoice.status} invoice cannot become {status}.")
        before = invoice.status
        invoice.status = status
        stamp = "paid_at" if status == Invoice.Status.PAID else "voided_at"
        setattr(invoice, stamp, timezone.now())
        invoice.save(update_fields=["status", stamp])
        audit_record(
            organization=invoice.organization,
            actor=actor,
            action=action,
            target=invoice,
            before={"status": before},
            after={"status": status},
        )
        return invoice


def invoice_mark_paid(
    *,
    invoice_id: Any,
    actor: Any,
    paid_at: datetime | None = None,
    now: datetime | None = None,
    from_stripe: bool = False,
) -> Invoice:
    """An open or past-due invoice paid (by staff in the admin, with or without Stripe, or by
    Stripe's ``invoice.paid`` webhook, ``from_stripe``, with ``paid_at`` from Stripe).
    Idempotent. Ends the invoice's dunning and, in the same transaction, lifts the organisation's
    payment suspension when nothing else is past due beyond the grace (docs/billing.md,
    "Dunning"). Paid outside Stripe, an invoice that is on Stripe is marked paid there too after
    commit, so Stripe stops collecting it."""
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
        if invoice.status == Invoice.Status.PAID:
            return invoice
        if invoice.status not in (Invoice.Status.OPEN, Invoice.Status.PAST_DUE):
            raise InvoiceImmutable(f"A {invoice.status} invoice cannot become paid.")
        before = invoice.status
        invoice.status = Invoice.Status.PAID
        invoice.paid_at = paid_at or timezone.now()
        invoice.payment_failed_at = None
        invoice.save(update_fields=["status", "paid_at", "payment_failed_at"])
        audit_record(
            organization=invoice.organization,
            actor=actor,
            action="invoice.paid",
            target=invoice,
            before={"status": before},
            after={"status": invoice.status},
        )
        dunning.reactivate_if_settled(invoice.organization_id, actor=actor, now=now)
        if not from_stripe:
            stripe_sync.paid_out_of_band_on_commit(invoice)
        return invoice


def invoice_void(*, invoice_id: Any, actor: Any) -> Invoice:
    """An open invoice cancelled (its number stays used). Idempotent."""
    return _set_status(
        invoice_id=invoice_id,
        actor=actor,
        status=Invoice.Status.VOID,
        allowed_from={Invoice.Status.OPEN},
        action="invoice.voided",
    )


def invoice_adjustment_check(*, kind: str, amount: Decimal, reason: str) -> Decimal:
    """The signed amount of a valid adjustment; ``ValidationError`` otherwise."""
    if kind not in InvoiceAdjustment.Kind.values:
        raise ValidationError(f"Unknown adjustment kind {kind!r}.")
    if not reason or not reason.strip():
        raise ValidationError("A reason is required.")
    amount = Decimal(amount)
    if amount <= 0 or amount != amount.quantize(selectors.CENT):
        raise ValidationError("The amount must be positive, in whole cents.")
    return -amount if kind == InvoiceAdjustment.Kind.CREDIT else amount


def invoice_adjustment_create(
    *,
    organization_id: Any,
    kind: str,
    amount: Decimal,
    reason: str,
    actor: Any,
    period: str | None = None,
) -> InvoiceAdjustment:
    """A credit note (``amount`` positive, stored negative) or one-off charge on the invoice of
    ``period`` (default: the current month). Refused when that month's invoice is finalised:
    a correction of a finalised invoice goes on the next month's."""
    signed = invoice_adjustment_check(kind=kind, amount=amount, reason=reason)
    period = period or spend.current_month()
    try:
        spend.month_range(period)
    except ValueError as exc:
        raise ValidationError(str(exc)) from exc
    with transaction.atomic():
        organization = _lock_organization(organization_id)
        if _finalised(organization.pk, period) is not None:
            raise InvoiceImmutable(
                f"The invoice of {period} is finalised; put the correction on a later month."
            )
        adjustment = InvoiceAdjustment.objects.create(
            organization=organization,
            period=period,
            kind=kind,
            amount=signed,
            reason=reason.strip(),
            created_by=actor if getattr(actor, "pk", None) is not None else None,
        )
        audit_record(
            organization=organization,
            actor=actor,
            action=f"invoice.{kind}_created",
            target=adjustment,
            after={"period": period, "kind": kind, "amount": signed, "reason": adjustment.reason},
        )
        return adjustment


def plan_price_set(*, plan: str, monthly_fee: Decimal) -> PlanPrice:
    """Set a plan's monthly base fee (USD); applies to invoices finalised from now on."""
    if Decimal(monthly_fee) < 0:
        raise ValidationError("A fee cannot be negative.")
    row, _ = PlanPrice.objects.update_or_create(plan=plan, defaults={"monthly_fee": monthly_fee})
    return row
