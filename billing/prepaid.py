"""Prepaid credit: the balance of a prepaid organisation and the one way to credit it
(docs/billing.md, "Prepaid").

The balance is never stored as a number that could drift: it is

    sum(CreditEntry.amount) - cost of the organisation's usage from ``prepaid_since`` on

read from the credit entries and the hourly rollups (exact Decimal). The gateway enforces it from
Redis through the limiter's reserve→settle scripts; this module is the authority those counters
are reconciled from (:func:`publish_balance`, :func:`reconcile_balances`), through the data
plane's own Django-free ``Limiter.set_balance``, as ``billing.spend`` does for the months: the
Redis key layout exists in one place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet, Sum
from django.db.models.functions import TruncDay

from billing import spend
from billing.models import CreditEntry, UsageRollup
from inference.serving.limits import Limiter
from tenants.models import BillingMode, Organization

logger = logging.getLogger(__name__)

ZERO = Decimal(0)
# How many balances are written concurrently (one Redis script call each).
_WRITE_CHUNK = 200


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


def usage_in(organization: Organization, start: datetime, end: datetime) -> Decimal:
    """The cost of the usage charged to the balance within ``[start, end)``: rollup hours from
    ``max(start, prepaid_since)`` to ``end`` (exact, unrounded). Zero for an organisation that
    is not prepaid now: only the current prepaid period is known (``prepaid_since`` is cleared
    when an organisation goes back to postpaid)."""
    since = organization.prepaid_since
    if since is None or end <= since:
        return ZERO
    total = UsageRollup.objects.filter(
        organization=organization, hour__gte=max(start, since), hour__lt=end
    ).aggregate(t=Sum("cost"))["t"]
    return total if total is not None else ZERO


# --- the gateway's counters -------------------------------------------------------------------
def _authority(org_ids: Collection[str] | None) -> dict[str, tuple[Decimal, Decimal]]:
    """``{org_id: (credited, used)}`` of the prepaid organisations among ``org_ids`` (every
    prepaid organisation when ``None``): two grouped queries, whatever their number."""
    orgs = Organization.objects.filter(billing_mode=BillingMode.PREPAID)
    if org_ids is not None:
        orgs = orgs.filter(id__in=list(org_ids))
    ids = [str(pk) for pk in orgs.values_list("id", flat=True)]
    if not ids:
        return {}
    out = dict.fromkeys(ids, (ZERO, ZERO))
    credits = (
        CreditEntry.objects.filter(organization_id__in=ids)
        .values("organization_id")
        .annotate(t=Sum("amount"))
    )
    for row in credits:
        out[str(row["organization_id"])] = (row["t"], ZERO)
    usage = (
        UsageRollup.objects.filter(
            organization_id__in=ids, hour__gte=F("organization__prepaid_since")
        )
        .values("organization_id")
        .annotate(t=Sum("cost"))
    )
    for row in usage:
        org = str(row["organization_id"])
        out[org] = (out[org][0], row["t"] or ZERO)
    return out


async def _write(
    client: aioredis.Redis,
    balances: Mapping[str, tuple[Decimal, Decimal]],
    ingested: Mapping[str, int],
    prefix: str,
) -> None:
    limiter = Limiter(client, prefix)
    items = list(balances.items())
    for i in range(0, len(items), _WRITE_CHUNK):
        await asyncio.gather(
            *(
                limiter.set_balance(
                    org, credited=credited, used=used, ingested_micros=ingested.get(org, 0)
                )
                for org, (credited, used) in items[i : i + _WRITE_CHUNK]
            )
        )


def reconcile_balances(
    org_ids: Collection[str] | None = None, *, ingested: Mapping[str, int] | None = None
) -> int:
    """Rewrite the gateway's balance counters of the prepaid organisations among ``org_ids``
    (all of them when ``None``) from Postgres; returns how many were written. Organisations that
    are not prepaid are skipped. ``ingested`` maps an organisation id to the micro-units of usage
    from its ``prepaid_since`` that the batch being reconciled newly inserted
    (:func:`ingested_since`), so settles not ingested yet keep counting
    (``Limiter.set_balance``). Raises ``LimiterUnavailable`` when Redis fails."""
    balances = _authority(org_ids)
    if balances:
        prefix, counts = settings.VLINDERS_REDIS_PREFIX, dict(ingested or {})
        spend.run_redis(lambda client: _write(client, balances, counts, prefix))
    return len(balances)


def ingested_since(org_hours: Mapping[tuple[str, datetime], int]) -> dict[str, int]:
    """Of a batch's newly inserted micro-units per ``(org_id, hour)``
    (``IngestResult.ingested_hours``), what each prepaid organisation's balance is charged:
    the hours from its ``prepaid_since`` on. Organisations that are not prepaid are left out."""
    orgs = {org for org, _ in org_hours}
    if not orgs:
        return {}
    since = dict(
        Organization.objects.filter(
            id__in=list(orgs), billing_mode=BillingMode.PREPAID, prepaid_since__isnull=False
        ).values_list("id", "prepaid_since")
    )
    starts = {str(k): v for k, v in since.items()}
    out: dict[str, int] = {}
    for (org, hour), micros in org_hours.items():
        start = starts.get(org)
        if start is not None and hour >= start:
            out[org] = out.get(org, 0) + micros
    return out


def publish_balance(organization: Organization) -> None:
    """Write a prepaid organisation's balance counters to the gateway's Redis from Postgres
    (credited, and the usage ingested since ``prepaid_since``). Call it after committing what
    changed the balance (a top-up credited, an adjustment, the switch to prepaid), e.g. in
    ``transaction.on_commit``. Does nothing for a postpaid organisation.

    Best effort, never raises: a Redis failure is logged, and the beat task
    ``billing.reconcile_spend`` rewrites every prepaid balance within its interval anyway (a
    gateway meanwhile refuses with ``balance_unavailable`` if the balance was never written, or
    enforces the previous one)."""
    try:
        reconcile_balances([str(organization.pk)])
    except Exception:
        logger.exception("publishing the prepaid balance of %s failed", organization.pk)


# --- what the tenant sees ---------------------------------------------------------------------
# The longest range one ledger covers: bounds the work of one request (at most one row per day).
MAX_LEDGER_DAYS = 366


@dataclass(frozen=True, slots=True)
class BalanceSummary:
    """An organisation's billing mode and its balance as Postgres knows it: ``balance =
    credited - usage`` (usage charged since ``prepaid_since``; events not ingested yet, about a
    second of traffic, are not in it)."""

    mode: str
    prepaid_since: datetime | None
    credited: Decimal
    usage: Decimal
    balance: Decimal


def summary(organization: Organization) -> BalanceSummary:
    total, usage = credited(organization), prepaid_usage(organization)
    return BalanceSummary(
        mode=organization.billing_mode,
        prepaid_since=organization.prepaid_since,
        credited=total,
        usage=usage,
        balance=total - usage,
    )


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One movement of the balance: a credit entry (``topup`` or ``adjustment``, at its time)
    or a day's usage (``usage``, at the day's start, negative). ``balance`` is the running
    balance after it."""

    kind: str
    at: datetime
    amount: Decimal
    description: str
    reference: str
    balance: Decimal


@dataclass(frozen=True, slots=True)
class Ledger:
    """The movements of ``[start, end)`` (UTC days), oldest first, between the opening balance
    (everything before ``start``) and the closing one."""

    start: date
    end: date
    opening: Decimal
    closing: Decimal
    rows: list[LedgerRow]


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _usage_between(organization: Organization, start: datetime, end: datetime) -> QuerySet[Any]:
    since = organization.prepaid_since
    assert since is not None
    return UsageRollup.objects.filter(
        organization=organization, hour__gte=max(start, since), hour__lt=end
    )


def ledger(organization: Organization, start: date, end: date) -> Ledger:
    """Top-ups, adjustments and usage by UTC day for the days ``start <= day < end``, with the
    running balance. Usage counts from ``prepaid_since`` (none for a postpaid organisation),
    read from the hourly rollups in one grouped query. ``ValueError`` for an empty range or one
    longer than :data:`MAX_LEDGER_DAYS`."""
    if end <= start:
        raise ValueError("The range is empty: 'to' must be after 'from'.")
    if (end - start).days > MAX_LEDGER_DAYS:
        raise ValueError(f"The range is longer than {MAX_LEDGER_DAYS} days.")
    lo, hi = _day_start(start), _day_start(end)
    entries = CreditEntry.objects.filter(organization=organization)
    opening = entries.filter(created_at__lt=lo).aggregate(t=Sum("amount"))["t"] or ZERO
    moves: list[tuple[datetime, int, str, Decimal, str, str]] = [
        (e.created_at, 0, e.kind, e.amount, e.description, e.reference)
        for e in entries.filter(created_at__gte=lo, created_at__lt=hi).order_by("created_at")
    ]
    if organization.prepaid_since is not None:
        before = _usage_between(organization, organization.prepaid_since, lo)
        opening -= before.aggregate(t=Sum("cost"))["t"] or ZERO
        days = (
            _usage_between(organization, lo, hi)
            .annotate(day=TruncDay("hour", tzinfo=UTC))
            .values("day")
            .annotate(cost=Sum("cost"))
            .order_by("day")
        )
        # A day's usage comes after that day's credit entries (sort key 1 within the day).
        moves += [
            (row["day"], 1, "usage", -row["cost"], "Usage", "") for row in days if row["cost"]
        ]
    moves.sort(key=lambda m: (m[0].astimezone(UTC).date(), m[1], m[0]))
    running, rows = opening, []
    for at, _, kind, amount, description, reference in moves:
        running += amount
        rows.append(LedgerRow(kind, at, amount, description, reference, running))
    return Ledger(start=start, end=end, opening=opening, closing=running, rows=rows)
