"""Prepaid credit: the balance of a prepaid organisation and the one way to credit it
(docs/billing.md, "Prepaid").

The balance is never stored as a number that could drift: it is

    sum(CreditEntry.amount) - cost of the organisation's usage from ``prepaid_since`` on

read from the credit entries and the hourly rollups (exact Decimal). The gateway enforces it from
Redis through the limiter's reserve→settle scripts; this module is the authority those counters
are reconciled from.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Sum

from billing.models import CreditEntry, UsageRollup
from tenants.models import Organization

ZERO = Decimal(0)


def credited(organization: Organization) -> Decimal:
    """Everything ever credited (top-ups and signed adjustments)."""
    total = CreditEntry.objects.filter(organization=organization).aggregate(t=Sum("amount"))["t"]
    return total if total is not None else ZERO


def prepaid_usage(organization: Organization) -> Decimal:
    """The cost of the usage charged to the balance: every rollup hour from ``prepaid_since``."""
    if organization.prepaid_since is None:
        return ZERO
    total = UsageRollup.objects.filter(
        organization=organization, hour__gte=organization.prepaid_since
    ).aggregate(t=Sum("cost"))["t"]
    return total if total is not None else ZERO


def balance_of(organization: Organization) -> Decimal:
    """The credit balance as Postgres knows it (usage not yet ingested is not subtracted)."""
    return credited(organization) - prepaid_usage(organization)


def credit(
    organization: Organization,
    amount: Decimal,
    *,
    kind: str,
    reference: str,
    description: str = "",
    actor: Any = None,
) -> tuple[CreditEntry, bool]:
    """Add a credit entry once per ``reference``: returns ``(entry, created)``; a second call
    with the same reference returns the first entry and ``created=False`` (a redelivered webhook,
    a retried task). Runs in the caller's transaction when there is one (a savepoint)."""
    if not isinstance(amount, Decimal):
        raise TypeError("amount must be a Decimal")
    try:
        with transaction.atomic():
            entry = CreditEntry.objects.create(
                organization=organization,
                kind=kind,
                amount=amount,
                reference=reference,
                description=description,
                created_by=actor,
            )
    except IntegrityError:
        return CreditEntry.objects.get(reference=reference), False
    return entry, True
