"""The monthly statement of an organisation: its usage of one UTC month by day, model and API
key, from the hourly rollups (which keep each hour's exact cost to 12 decimal places and outlive
the raw events). Grouped in the database: one aggregate query, however many hours there are.

The statement is a report, not an invoice: it lists usage only (no base fee, credits or tax) and
exists for every month the organisation has, not just finalised ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from django.db.models import Min, Sum
from django.db.models.functions import TruncDay, TruncMonth
from django.utils import timezone

from billing import spend
from billing.models import UsageRollup
from tenants.models import ApiKey, Organization

ZERO = Decimal(0)


class MonthOutOfRange(LookupError):
    """The month is well-formed but outside the organisation's life (before it existed and had
    usage, or after the current month): there is no statement of it."""


@dataclass(frozen=True, slots=True)
class StatementRow:
    """One day, served model and key of a statement."""

    day: date
    model: str
    api_key_id: object
    key_name: str
    key_prefix: str
    requests: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost: Decimal

    @property
    def key_label(self) -> str:
        """``name (prefix…)``, or the id of a key deleted since."""
        if not self.key_prefix:
            return self.key_name
        return f"{self.key_name} ({self.key_prefix}…)"


@dataclass(frozen=True, slots=True)
class Statement:
    organization: Organization
    month: str
    start: datetime
    end: datetime
    rows: list[StatementRow]

    @property
    def total_requests(self) -> int:
        return sum(row.requests for row in self.rows)

    @property
    def total_input_tokens(self) -> int:
        return sum(row.input_tokens for row in self.rows)

    @property
    def total_output_tokens(self) -> int:
        return sum(row.output_tokens for row in self.rows)

    @property
    def total_cached_tokens(self) -> int:
        return sum(row.cached_tokens for row in self.rows)

    @property
    def total_cost(self) -> Decimal:
        """The exact sum of the rows' cost (12 decimal places, never rounded)."""
        return sum((row.cost for row in self.rows), ZERO)


def first_month(organization: Organization) -> str:
    """The organisation's first month: that of its creation or of its oldest rollup, whichever
    is earlier (usage can be older than the row when an organisation was imported)."""
    oldest = UsageRollup.objects.filter(organization=organization).aggregate(h=Min("hour"))["h"]
    created = organization.created_at
    return spend.month_of(min(created, oldest) if oldest is not None else created)


def check_month(organization: Organization, month: str, *, now: datetime | None = None) -> None:
    """``ValueError`` for a malformed month (not ``YYYY-MM``), ``MonthOutOfRange`` for one
    before ``first_month`` or after the current UTC month."""
    spend.month_range(month)  # raises ValueError
    if month > spend.current_month(now) or month < first_month(organization):
        raise MonthOutOfRange(month)


def statement(organization: Organization, month: str, *, now: datetime | None = None) -> Statement:
    """The statement of ``month`` (checked by ``check_month``): one row per UTC day, served
    model and key with usage, ordered by day, model, key name. Keys deleted since keep their
    rows under their id."""
    check_month(organization, month, now=now)
    start, end = spend.month_range(month)
    grouped = (
        UsageRollup.objects.filter(organization=organization, hour__gte=start, hour__lt=end)
        .annotate(day=TruncDay("hour", tzinfo=UTC))
        .values("day", "model", "api_key_id")
        .annotate(
            n_requests=Sum("requests"),
            n_input=Sum("prompt_tokens"),
            n_output=Sum("completion_tokens"),
            n_cached=Sum("cached_tokens"),
            total_cost=Sum("cost"),
        )
        .order_by("day", "model", "api_key_id")
    )
    found = list(grouped)
    keys = {
        key.pk: key
        for key in ApiKey.objects.filter(
            organization=organization, pk__in={row["api_key_id"] for row in found}
        ).only("pk", "name", "prefix", "organization_id")
    }
    rows = []
    for row in found:
        key = keys.get(row["api_key_id"])
        rows.append(
            StatementRow(
                day=row["day"].astimezone(UTC).date(),
                model=row["model"],
                api_key_id=row["api_key_id"],
                key_name=key.name if key else f"deleted key {row['api_key_id']}",
                key_prefix=key.prefix if key else "",
                requests=int(row["n_requests"] or 0),
                input_tokens=int(row["n_input"] or 0),
                output_tokens=int(row["n_output"] or 0),
                cached_tokens=int(row["n_cached"] or 0),
                cost=row["total_cost"] if row["total_cost"] is not None else ZERO,
            )
        )
    rows.sort(key=lambda r: (r.day, r.model, r.key_label))
    return Statement(organization=organization, month=month, start=start, end=end, rows=rows)


def statement_months(
    organization: Organization, *, now: datetime | None = None, limit: int = 24
) -> list[str]:
    """The months with usage, newest first (at most ``limit``), plus the current month: the
    statements the console offers."""
    months = {
        spend.month_of(row)
        for row in UsageRollup.objects.filter(organization=organization)
        .annotate(month=TruncMonth("hour", tzinfo=UTC))
        .values_list("month", flat=True)
        .distinct()
        .order_by("-month")[:limit]
    }
    months.add(spend.current_month(now or timezone.now()))
    return sorted(months, reverse=True)[:limit]
