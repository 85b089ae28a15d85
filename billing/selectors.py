"""Reads of usage for the usage API, the CSV export and the console: always from the hourly
rollups (raw events are pruned after their retention period), always for one organisation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from django.db.models import F, Func, QuerySet, Sum
from django.db.models.functions import TruncDay, TruncHour

from billing import spend
from billing.models import BudgetAlert, UsageRollup
from tenants.models import ApiKey, Organization

Granularity = Literal["day", "hour"]
# The dimensions a report may be grouped by, in their fixed column order, and their fields.
DIMENSIONS = {"key": "api_key_id", "model": "model"}
METRICS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "cost")


def _bucket(granularity: Granularity) -> Func:
    if granularity == "hour":
        return TruncHour("hour", tzinfo=UTC)
    return TruncDay("hour", tzinfo=UTC)


def _rollups(organization: Organization, start: datetime, end: datetime) -> QuerySet[UsageRollup]:
    return UsageRollup.objects.filter(organization=organization, hour__gte=start, hour__lt=end)


def _with_total(row: dict[str, Any]) -> dict[str, Any]:
    for metric in METRICS:
        row[metric] = (
            row[metric] if row[metric] is not None else (Decimal(0) if metric == "cost" else 0)
        )
    row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    return row


def usage_rows(
    *,
    organization: Organization,
    start: datetime,
    end: datetime,
    granularity: Granularity,
    group_by: Sequence[str],
) -> Iterator[dict[str, Any]]:
    """One row per bucket (UTC day or hour starting at ``start``) and per value of each
    ``group_by`` dimension, with usage only: empty buckets are left out. Rows are ordered by
    bucket, then key id, then model. Each row has ``start``, ``api_key_id`` (``None`` unless
    grouped by key), ``model`` (``None`` unless grouped by model), the metrics and
    ``total_tokens``. Streams from the database (``iterator``)."""
    fields = [DIMENSIONS[d] for d in DIMENSIONS if d in group_by]
    rows = (
        _rollups(organization, start, end)
        .annotate(start=_bucket(granularity))
        .values("start", *fields)
        .annotate(**{m: Sum(m) for m in METRICS})
        .order_by("start", *fields)
    )
    for row in rows.iterator(chunk_size=2000):
        row.setdefault("api_key_id", None)
        row.setdefault("model", None)
        yield _with_total(row)


def usage_totals(*, organization: Organization, start: datetime, end: datetime) -> dict[str, Any]:
    """The metrics summed over the whole range, with ``total_tokens``."""
    return _with_total(_rollups(organization, start, end).aggregate(**{m: Sum(m) for m in METRICS}))


def key_names(organization: Organization) -> dict[Any, str]:
    """Names of the organisation's keys by id (its own keys only: tenancy fails closed)."""
    return dict(ApiKey.objects.filter(organization=organization).values_list("pk", "name"))


def month_by_day(
    organization: Organization, month_start: datetime, month_end: datetime
) -> list[dict[str, Any]]:
    """The console's month table: one row per day with usage."""
    return list(
        usage_rows(
            organization=organization,
            start=month_start,
            end=month_end,
            granularity="day",
            group_by=(),
        )
    )


def month_by_model(
    organization: Organization, month_start: datetime, month_end: datetime
) -> list[dict[str, Any]]:
    """The console's per-model table for a month, most expensive first."""
    rows = (
        _rollups(organization, month_start, month_end)
        .values("model")
        .annotate(**{m: Sum(m) for m in METRICS})
        .order_by(F("cost").desc(nulls_last=True), "model")
    )
    return [_with_total(row) for row in rows]


# --- The console's overview and limits pages: budgets, daily totals, top models and keys, alerts -
@dataclass(frozen=True, slots=True)
class BudgetUse:
    """One monthly budget of an organisation and what the month has used of it so far, from
    the rollups (``billing.spend``, the figures the gateway's budget counters are reconciled to).
    ``budget`` is ``None`` when none is set."""

    used: Decimal | int
    budget: Decimal | int | None

    @property
    def percent(self) -> Decimal | None:
        """How much of the budget is used, to 0.1 %, exactly (``None`` without a budget > 0)."""
        if not self.budget:
            return None
        return (Decimal(self.used) * 100 / Decimal(self.budget)).quantize(Decimal("0.1"))

    @property
    def exhausted(self) -> bool:
        """Whether the gateway now refuses requests that would add to it (``docs/limits.md``:
        refused when used + reservation > budget)."""
        return self.budget is not None and self.used >= self.budget


@dataclass(frozen=True, slots=True)
class MonthBudgets:
    """An organisation's month-to-date spend and tokens against its monthly budgets."""

    month: str
    spend: BudgetUse
    tokens: BudgetUse


def month_budgets(organization: Organization, *, month: str | None = None) -> MonthBudgets:
    """Month-to-date usage of ``organization`` (the current UTC month unless ``month``) next to
    its monthly spend and token budgets: the same figures and rule the budget alerts use."""
    month = month or spend.current_month()
    org_id = str(organization.pk)
    used = spend.month_usage(month=month, org_ids=[org_id]).orgs[org_id]
    return MonthBudgets(
        month=month,
        spend=BudgetUse(used=used.spend, budget=organization.monthly_spend_budget),
        tokens=BudgetUse(used=used.tokens, budget=organization.monthly_token_budget),
    )


def daily_usage(
    *, organization: Organization, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """One row per UTC day from ``start`` (a UTC midnight) up to ``end``, days without usage
    included as zeros, each with ``start``, the metrics and ``total_tokens``."""
    found = {
        row["start"]: row
        for row in usage_rows(
            organization=organization, start=start, end=end, granularity="day", group_by=()
        )
    }
    out: list[dict[str, Any]] = []
    day = start
    while day < end:
        empty = {"start": day, "api_key_id": None, "model": None} | dict.fromkeys(METRICS, None)
        out.append(found.get(day) or _with_total(empty))
        day += timedelta(days=1)
    return out


def top_usage(
    *,
    organization: Organization,
    start: datetime,
    end: datetime,
    by: Literal["model", "key"],
    limit: int = 5,
) -> list[dict[str, Any]]:
    """The ``limit`` models (or keys) with the most usage in the range, by cost, then requests.
    Rows have ``model`` or ``api_key_id``, the metrics and ``total_tokens``; grouped by key,
    also ``api_key``: the organisation's key, or ``None`` for one deleted since."""
    field = DIMENSIONS[by]
    rows = [
        _with_total(row)
        for row in _rollups(organization, start, end)
        .values(field)
        .annotate(**{m: Sum(m) for m in METRICS})
        .order_by(F("cost").desc(nulls_last=True), F("requests").desc(nulls_last=True), field)[
            :limit
        ]
    ]
    if by == "key":
        keys = ApiKey.objects.filter(
            organization=organization, pk__in=[row["api_key_id"] for row in rows]
        ).only("pk", "name", "prefix", "last_four", "organization_id")
        by_id = {key.pk: key for key in keys}
        for row in rows:
            row["api_key"] = by_id.get(row["api_key_id"])
    return rows


def recent_budget_alerts(organization: Organization, *, limit: int = 10) -> list[BudgetAlert]:
    """The organisation's most recent budget alerts (``billing.alerts``), newest first, with
    their keys."""
    return list(
        BudgetAlert.objects.filter(organization=organization)
        .select_related("api_key")
        .order_by("-created_at")[:limit]
    )
