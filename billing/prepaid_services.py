"""Staff writes of prepaid billing (docs/billing.md, "Prepaid"): switching an organisation's
billing mode, and signed adjustments of its credit.

Both are staff-only (``PermissionDenied`` otherwise), run in one transaction with their audit
record, and after commit publish what the gateway enforces: the prepaid balance
(``prepaid.publish_balance``) and, for a mode switch, the organisation's access-snapshot record
(its ``billing_mode`` tells the gateway whether to check the balance). The balance is published
before the record, so a gateway that learns the organisation is prepaid finds its balance.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from billing import prepaid
from billing.models import CreditEntry
from tenants.audit import audit_record
from tenants.models import BillingMode, Organization
from tenants.snapshot import publish_organization_on_commit

# An adjustment is exact to the micro-unit, the limiter's unit (``inference.serving.money``).
MICRO = Decimal("0.000001")
MAX_ADJUSTMENT = Decimal("1000000000")


def _require_staff(actor: Any) -> None:
    if not getattr(actor, "is_staff", False):
        raise PermissionDenied("Only staff change billing modes and credit.")


def _hour_start(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _publish_balance_on_commit(organization_id: Any) -> None:
    def publish() -> None:
        prepaid.publish_balance(Organization.objects.get(pk=organization_id))

    transaction.on_commit(publish)


def billing_mode_set(
    organization: Organization, mode: str, actor: Any, *, now: datetime | None = None
) -> Organization:
    """Make ``organization`` prepaid or postpaid. Switching to prepaid charges the balance with
    the usage from the start of the current UTC hour (``prepaid_since``: the rollups are hourly,
    so the boundary is an hour's); switching back clears it. Setting the mode it already has
    changes nothing and records nothing. Audited as ``organization.billing_mode_changed``."""
    _require_staff(actor)
    if mode not in BillingMode.values:
        raise ValidationError(f"Unknown billing mode {mode!r}.")
    with transaction.atomic():
        org = Organization.objects.select_for_update(no_key=True).get(pk=organization.pk)
        if org.billing_mode == mode:
            return org
        before = {"billing_mode": org.billing_mode, "prepaid_since": org.prepaid_since}
        org.billing_mode = mode
        org.prepaid_since = (
            _hour_start(now or timezone.now()) if mode == BillingMode.PREPAID else None
        )
        org.save(update_fields=["billing_mode", "prepaid_since"])
        audit_record(
            organization=org,
            actor=actor,
            action="organization.billing_mode_changed",
            target=org,
            before=before,
            after={"billing_mode": org.billing_mode, "prepaid_since": org.prepaid_since},
        )
        _publish_balance_on_commit(org.pk)
        publish_organization_on_commit(org.pk)
    organization.billing_mode, organization.prepaid_since = org.billing_mode, org.prepaid_since
    return org


def credit_adjust_check(amount: Decimal | str, reason: str) -> tuple[Decimal, str]:
    """The amount and reason of a valid adjustment; ``ValidationError`` otherwise (forms call
    it to show the error beside the field)."""
    try:
        value = Decimal(amount)
    except (InvalidOperation, TypeError, ValueError) as exc:
        raise ValidationError("The amount must be a decimal number.") from exc
    if not value.is_finite() or value == 0 or abs(value) > MAX_ADJUSTMENT:
        raise ValidationError(f"The amount must be non-zero and at most {MAX_ADJUSTMENT}.")
    if value != value.quantize(MICRO):
        raise ValidationError("The amount has more than 6 decimal places.")
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError("A reason is required.")
    if len(reason) > 300:
        raise ValidationError("The reason is longer than 300 characters.")
    return value, reason


def credit_adjust(
    organization: Organization, amount: Decimal | str, reason: str, actor: Any
) -> CreditEntry:
    """Add a signed adjustment to the credit (positive credits, negative debits), exact to the
    micro-unit, with a reason. Referenced ``adjustment:<uuid>`` (each call is a new entry).
    Audited as ``credit.adjusted``."""
    _require_staff(actor)
    value, reason = credit_adjust_check(amount, reason)
    with transaction.atomic():
        entry, _ = prepaid.credit(
            organization,
            value,
            kind=CreditEntry.Kind.ADJUSTMENT,
            reference=f"adjustment:{uuid.uuid4()}",
            description=reason,
            actor=actor,
        )
        audit_record(
            organization=organization,
            actor=actor,
            action="credit.adjusted",
            target=entry,
            after={"amount": entry.amount, "reason": reason, "reference": entry.reference},
        )
        _publish_balance_on_commit(organization.pk)
    return entry
