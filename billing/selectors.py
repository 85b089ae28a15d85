"""Reads of usage for the usage API, the CSV export and the console: always from the hourly
rollups (raw events are pruned after their retention period), always for one organisation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from django.db.models import F, Func, QuerySet, Sum
from django.db.models.functions import TruncDay, TruncHour

from billing.models import UsageRollup
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
