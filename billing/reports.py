"""The operator's billing reports (docs/billing.md, "Operator reports"): revenue of a UTC month by
organisation, model and day, what was invoiced, outstanding and past-due invoices, and per model
the cost of serving and the gross margin. Read by the staff console pages
(``console.pages.staff_billing``) and the staff API (``billing.api.report_views``).

Two kinds of revenue, never mixed:

- **usage revenue**: the exact sum of the usage events' ``cost`` (12 decimal places), read from
  the hourly rollups and grouped in the database. It is what the platform earned by serving
  requests in the period, postpaid and prepaid alike, whether or not an invoice has been issued;
- **invoiced**: the totals of the period's finalised invoices (rounded to cents, with base fees,
  credit notes and one-off charges; void invoices are left out). For a month not finalised yet,
  what will be added besides usage is shown apart: the base fees its invoices will charge (the
  price book now, ``billing.selectors.plan_monthly_fee``) and the pending adjustments.

Cost and margin per model: ``cost = replica-hours x cost_per_replica_hour`` of the catalog model
of that name (``inference.models.ReplicaHours``, recorded by the deployment reconciler, see
``inference.replica_hours``). Rounding, once each:

- the period's replica-seconds (a float sum) become whole replica-seconds, ROUND_HALF_UP;
- ``cost = seconds x cost_per_replica_hour / 3600``, to 12 decimal places, ROUND_HALF_UP (a
  division by 3600 has no finite decimal in general);
- ``cost_per_mtok = cost x 1,000,000 / tokens`` to 6 decimal places (a price's precision);
- ``margin = usage revenue - cost`` (exact), ``margin_percent = margin x 100 / revenue`` to 0.1.

The cost is ``None`` (unknown, no margin) for a model without a ``cost_per_replica_hour``, and
for rollup models that are no catalog model any more (deleted or renamed: rollups keep the name
served). The current ``cost_per_replica_hour`` applies to every hour of the period.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db import connection
from django.db.models import Q, Sum
from django.db.models.functions import Coalesce, TruncDay
from django.utils import timezone

from billing import spend
from billing.models import Invoice, InvoiceAdjustment, InvoiceLine, UsageRollup
from billing.selectors import plan_monthly_fee
from inference.models import CatalogModel, ReplicaHours
from tenants.models import Organization
from tenants.plans import Plan

EXACT = Decimal("0.000000000001")  # 12 decimal places: the cost field's precision
CENT = Decimal("0.01")
PRICE = Decimal("0.000001")  # 6 decimal places: a price per million tokens
TENTH = Decimal("0.1")
MILLION = Decimal(1_000_000)
SECONDS_PER_HOUR = Decimal(3600)
ZERO = Decimal(0)
# Invoices that still wait for payment.
OUTSTANDING = (Invoice.Status.OPEN, Invoice.Status.PAST_DUE)


@dataclass(frozen=True, slots=True)
class Period:
    """A UTC calendar month; ``until`` is where its data ends now: the month's end, or ``now``
    for the current month (month to date)."""

    month: str
    start: datetime
    end: datetime
    until: datetime

    @property
    def month_to_date(self) -> bool:
        return self.until < self.end

    @property
    def days(self) -> list[datetime]:
        """The UTC days of the period up to ``until`` (the current day included)."""
        out, day = [], self.start
        while day < self.until:
            out.append(day)
            day += timedelta(days=1)
        return out


def month_period(month: str | None = None, *, now: datetime | None = None) -> Period:
    """The month ``YYYY-MM`` (default: the current UTC month). ``ValueError`` for a malformed
    month or one that has not started yet."""
    now = (now or timezone.now()).astimezone(UTC)
    month = month or spend.current_month(now)
    start, end = spend.month_range(month)
    if start > now:
        raise ValueError(f"month {month} has not started yet")
    return Period(month=month, start=start, end=end, until=min(end, now))


def _usage(row: dict[str, Any]) -> dict[str, Any]:
    row["requests"] = int(row["requests"])
    row["prompt_tokens"] = int(row["prompt_tokens"])
    row["completion_tokens"] = int(row["completion_tokens"])
    row["tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    return row


@dataclass(frozen=True, slots=True)
class UsageGroups:
    """A month's usage summed three ways, each a dict of rows (``_usage``) keyed by
    organisation id, served model name, and UTC day (a midnight ``datetime``)."""

    by_organization: dict[Any, dict[str, Any]]
    by_model: dict[str, dict[str, Any]]
    by_day: dict[datetime, dict[str, Any]]


# One scan of the month's rollups for all three groupings (Postgres hashes each grouping set in
# the same pass): the report pages read a month of every organisation's rollups, millions of
# rows, so scanning them once rather than three times is most of their time.
_GROUPED_SQL = """
SELECT GROUPING(organization_id, model, day) AS grouping_set, organization_id, model, day,
       SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost)
FROM (SELECT organization_id, model, (hour AT TIME ZONE 'UTC')::date AS day, requests,
             prompt_tokens, completion_tokens, cost
      FROM {table} WHERE hour >= %s AND hour < %s) AS month
GROUP BY GROUPING SETS ((organization_id), (model), (day))
"""
# GROUPING(a, b, c) has a bit set for each column *not* grouped by: 0b011 = by organisation.
_BY_ORGANIZATION, _BY_MODEL, _BY_DAY = 0b011, 0b101, 0b110


def _usage_groups_orm(period: Period) -> UsageGroups:
    """The same three groupings as three ORM queries: for SQLite (the single-machine default),
    which has neither ``GROUPING SETS`` nor ``AT TIME ZONE``."""
    month = UsageRollup.objects.filter(hour__gte=period.start, hour__lt=period.end)
    sums = {
        "requests": Sum("requests"),
        "prompt_tokens": Sum("prompt_tokens"),
        "completion_tokens": Sum("completion_tokens"),
        "revenue": Coalesce(Sum("cost"), ZERO, output_field=UsageRollup._meta.get_field("cost")),
    }
    groups = UsageGroups({}, {}, {})
    for row in month.values("organization_id").annotate(**sums):
        groups.by_organization[row["organization_id"]] = _usage(row)
    for row in month.values("model").annotate(**sums):
        groups.by_model[row["model"]] = _usage(row)
    days = month.annotate(day=TruncDay("hour", tzinfo=UTC)).values("day").annotate(**sums)
    for row in days:
        groups.by_day[row["day"]] = _usage(row)
    return groups


def usage_groups(period: Period) -> UsageGroups:
    """The period's usage by organisation, by model and by day, in one query (Postgres)."""
    if connection.vendor != "postgresql":
        return _usage_groups_orm(period)
    table = connection.ops.quote_name(UsageRollup._meta.db_table)
    groups = UsageGroups({}, {}, {})
    with connection.cursor() as cursor:
        cursor.execute(_GROUPED_SQL.format(table=table), [period.start, period.end])
        for grouping_set, org_id, model, day, requests, prompt, completion, cost in cursor:
            row = _usage(
                {
                    "requests": requests,
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "revenue": cost if cost is not None else ZERO,
                }
            )
            if grouping_set == _BY_ORGANIZATION:
                groups.by_organization[org_id] = {"organization_id": org_id, **row}
            elif grouping_set == _BY_MODEL:
                groups.by_model[model] = {"model": model, **row}
            elif grouping_set == _BY_DAY:
                at = datetime(day.year, day.month, day.day, tzinfo=UTC)
                groups.by_day[at] = {"day": at, **row}
    return groups


# --- revenue by day --------------------------------------------------------------------------
def revenue_by_day(period: Period, usage: UsageGroups | None = None) -> list[dict[str, Any]]:
    """One row per UTC day of the period up to now (days without usage as zeros): ``day``,
    ``requests``, ``prompt_tokens``, ``completion_tokens``, ``tokens``, ``revenue``. ``usage``:
    the period's ``usage_groups`` if already read."""
    found = (usage or usage_groups(period)).by_day
    empty = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "revenue": ZERO}
    return [found.get(day) or _usage({"day": day, **empty}) for day in period.days]


# --- revenue by organisation, usage and invoiced ----------------------------------------------
@dataclass(slots=True)
class OrganizationRevenue:
    """One organisation's month. ``invoice`` is its finalised invoice of the month (any status
    but draft), if any; ``base_fee`` and ``adjustments`` are that invoice's lines, or, without
    one, what its invoice will charge as of now (``upcoming`` is then true)."""

    organization_id: Any
    name: str
    slug: str
    plan: str
    billing_mode: str
    requests: int = 0
    tokens: int = 0
    revenue: Decimal = ZERO
    invoice: Invoice | None = None
    base_fee: Decimal = ZERO
    adjustments: Decimal = ZERO

    @property
    def upcoming(self) -> bool:
        return self.invoice is None

    @property
    def invoiced(self) -> Decimal | None:
        """The invoice's total; ``None`` without one or for a void one."""
        if self.invoice is None or self.invoice.status == Invoice.Status.VOID:
            return None
        return self.invoice.total


@dataclass(slots=True)
class RevenueTotals:
    """Sums over the organisations of a month."""

    requests: int = 0
    tokens: int = 0
    revenue: Decimal = ZERO
    invoices: int = 0
    invoiced: Decimal = ZERO
    invoiced_base_fees: Decimal = ZERO
    invoiced_adjustments: Decimal = ZERO
    upcoming_base_fees: Decimal = ZERO
    pending_adjustments: Decimal = ZERO
    by_status: dict[str, int] = field(default_factory=dict)


def _plan_fees() -> dict[str, Decimal]:
    return {plan: plan_monthly_fee(plan) for plan in Plan.values}


def revenue_by_organization(
    period: Period, usage: UsageGroups | None = None
) -> list[OrganizationRevenue]:
    """Every organisation with something in the month: usage, a finalised invoice, a pending
    adjustment, or a plan with a base fee (if it existed before the month ended and has no
    invoice yet: the fee its invoice will charge). Largest usage revenue first, then by name.

    A constant number of queries: the usage (``usage_groups``, unless given), the month's
    invoices, their lines grouped by invoice and kind, the pending adjustments grouped by
    organisation, the price book and the organisations' names."""
    used_by = (usage or usage_groups(period)).by_organization
    invoices = {
        invoice.organization_id: invoice
        for invoice in Invoice.objects.filter(period=period.month).exclude(
            status=Invoice.Status.DRAFT
        )
    }
    lines: dict[Any, dict[str, Decimal]] = {}
    for line in (
        InvoiceLine.objects.filter(invoice__in=[i.pk for i in invoices.values()])
        .exclude(kind=InvoiceLine.Kind.USAGE)
        .values("invoice_id", "kind")
        .annotate(amount=Sum("amount"))
        .order_by()
    ):
        lines.setdefault(line["invoice_id"], {})[line["kind"]] = line["amount"]
    pending = dict(
        InvoiceAdjustment.objects.filter(period=period.month, invoice__isnull=True)
        .values("organization_id")
        .annotate(amount=Sum("amount"))
        .order_by()
        .values_list("organization_id", "amount")
    )
    fees = _plan_fees()
    paying = [plan for plan, fee in fees.items() if fee]
    organizations = Organization.objects.filter(
        Q(pk__in=[*used_by, *invoices, *pending]) | Q(plan__in=paying, created_at__lt=period.end)
    ).values("id", "name", "slug", "plan", "billing_mode", "created_at")
    out: list[OrganizationRevenue] = []
    for org in organizations:
        row = OrganizationRevenue(
            organization_id=org["id"],
            name=org["name"],
            slug=org["slug"],
            plan=org["plan"],
            billing_mode=org["billing_mode"],
        )
        used = used_by.get(org["id"])
        if used:
            row.requests, row.tokens = used["requests"], used["tokens"]
            row.revenue = used["revenue"]
        invoice = invoices.get(org["id"])
        if invoice is not None:
            row.invoice = invoice
            kinds = lines.get(invoice.pk, {})
            row.base_fee = kinds.get(InvoiceLine.Kind.BASE_FEE, ZERO)
            row.adjustments = kinds.get(InvoiceLine.Kind.CREDIT, ZERO) + kinds.get(
                InvoiceLine.Kind.CHARGE, ZERO
            )
        else:
            fee = fees.get(org["plan"], ZERO)
            row.base_fee = fee if org["created_at"] < period.end else ZERO
            row.adjustments = pending.get(org["id"], ZERO)
        out.append(row)
    out.sort(key=lambda r: (-r.revenue, r.name, str(r.organization_id)))
    return out


def revenue_totals(rows: Iterable[OrganizationRevenue]) -> RevenueTotals:
    """The month's totals from ``revenue_by_organization``'s rows (no further query)."""
    totals = RevenueTotals()
    for row in rows:
        totals.requests += row.requests
        totals.tokens += row.tokens
        totals.revenue += row.revenue
        if row.invoice is None:
            totals.upcoming_base_fees += row.base_fee
            totals.pending_adjustments += row.adjustments
            continue
        status = row.invoice.status
        totals.by_status[status] = totals.by_status.get(status, 0) + 1
        if status != Invoice.Status.VOID:
            totals.invoices += 1
            totals.invoiced += row.invoice.total
            totals.invoiced_base_fees += row.base_fee
            totals.invoiced_adjustments += row.adjustments
    return totals


# --- revenue, cost and margin by model --------------------------------------------------------
@dataclass(slots=True)
class ModelRevenue:
    """One served model's month: usage, revenue, replica-hours, cost and margin (module
    docstring for the rounding). ``cost`` and what derives from it are ``None`` when unknown."""

    model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    revenue: Decimal = ZERO
    in_catalog: bool = False
    replica_seconds: int = 0
    cost_per_replica_hour: Decimal | None = None
    cost: Decimal | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def replica_hours(self) -> Decimal:
        """Replica-hours to 0.001 (display; the cost uses the whole seconds)."""
        return (Decimal(self.replica_seconds) / SECONDS_PER_HOUR).quantize(
            Decimal("0.001"), rounding=ROUND_HALF_UP
        )

    @property
    def cost_per_mtok(self) -> Decimal | None:
        if self.cost is None or not self.tokens:
            return None
        return (self.cost * MILLION / self.tokens).quantize(PRICE, rounding=ROUND_HALF_UP)

    @property
    def revenue_per_mtok(self) -> Decimal | None:
        """What a million tokens earned on average (to 6 places)."""
        if not self.tokens:
            return None
        return (self.revenue * MILLION / self.tokens).quantize(PRICE, rounding=ROUND_HALF_UP)

    @property
    def margin(self) -> Decimal | None:
        return None if self.cost is None else self.revenue - self.cost

    @property
    def margin_percent(self) -> Decimal | None:
        margin = self.margin
        if margin is None or not self.revenue:
            return None
        return (margin * 100 / self.revenue).quantize(TENTH, rounding=ROUND_HALF_UP)


def whole_seconds(replica_seconds: float | None) -> int:
    """A float sum of replica-seconds as whole seconds, ROUND_HALF_UP (the one rounding)."""
    if not replica_seconds:
        return 0
    return int(Decimal(replica_seconds).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def replica_cost(seconds: int, cost_per_replica_hour: Decimal) -> Decimal:
    """``seconds`` replica-seconds at ``cost_per_replica_hour``, to 12 places, ROUND_HALF_UP."""
    return (Decimal(seconds) * cost_per_replica_hour / SECONDS_PER_HOUR).quantize(
        EXACT, rounding=ROUND_HALF_UP
    )


def revenue_by_model(period: Period, usage: UsageGroups | None = None) -> list[ModelRevenue]:
    """Every model with usage or replica-hours in the month (an idle deployment costs without
    earning): its usage revenue, tokens, replica-hours and cost, largest revenue first, then by
    name. Three queries: the usage (``usage_groups``, unless given), replica-hours grouped by
    catalog model, the catalog's names and costs."""
    rows: dict[str, ModelRevenue] = {}
    for name, used in (usage or usage_groups(period)).by_model.items():
        rows[name] = ModelRevenue(
            model=name,
            requests=used["requests"],
            prompt_tokens=used["prompt_tokens"],
            completion_tokens=used["completion_tokens"],
            revenue=used["revenue"],
        )
    hours = dict(
        ReplicaHours.objects.filter(hour__gte=period.start, hour__lt=period.end)
        .values("catalog_model_id")
        .annotate(seconds=Sum("replica_seconds"))
        .order_by()
        .values_list("catalog_model_id", "seconds")
    )
    catalog = CatalogModel.objects.filter(Q(name__in=list(rows)) | Q(pk__in=list(hours))).values(
        "id", "name", "cost_per_replica_hour"
    )
    for model in catalog:
        row = rows.setdefault(model["name"], ModelRevenue(model=model["name"]))
        row.in_catalog = True
        row.replica_seconds = whole_seconds(hours.get(model["id"]))
        row.cost_per_replica_hour = model["cost_per_replica_hour"]
        if row.cost_per_replica_hour is not None:
            row.cost = replica_cost(row.replica_seconds, row.cost_per_replica_hour)
    return sorted(rows.values(), key=lambda r: (-r.revenue, r.model))


@dataclass(slots=True)
class ModelTotals:
    """Sums over the models; ``cost`` covers the models whose cost is known (``cost_known``
    says whether that is all of them), ``margin`` is revenue of those models minus their cost."""

    requests: int = 0
    tokens: int = 0
    revenue: Decimal = ZERO
    replica_seconds: int = 0
    cost: Decimal = ZERO
    costed_revenue: Decimal = ZERO
    cost_known: bool = True

    @property
    def margin(self) -> Decimal:
        return self.costed_revenue - self.cost

    @property
    def margin_percent(self) -> Decimal | None:
        if not self.costed_revenue:
            return None
        return (self.margin * 100 / self.costed_revenue).quantize(TENTH, rounding=ROUND_HALF_UP)


def model_totals(rows: Iterable[ModelRevenue]) -> ModelTotals:
    totals = ModelTotals()
    for row in rows:
        totals.requests += row.requests
        totals.tokens += row.tokens
        totals.revenue += row.revenue
        totals.replica_seconds += row.replica_seconds
        if row.cost is None:
            if row.revenue or row.replica_seconds:
                totals.cost_known = False
            continue
        totals.cost += row.cost
        totals.costed_revenue += row.revenue
    return totals


# --- outstanding and past-due invoices --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OutstandingInvoice:
    """A finalised invoice not paid yet. ``past_due``: a payment failed (status ``past_due``)
    or its due date has passed. ``age_days``: whole days since it was issued."""

    invoice: Invoice
    age_days: int
    past_due: bool
    days_overdue: int | None


def outstanding_invoices(*, now: datetime | None = None) -> list[OutstandingInvoice]:
    """Every ``open`` or ``past_due`` invoice, oldest issued first, with its organisation (one
    query)."""
    now = now or timezone.now()
    out = []
    for invoice in (
        Invoice.objects.filter(status__in=OUTSTANDING)
        .select_related("organization")
        .order_by("issued_at", "number")
    ):
        issued = invoice.issued_at or invoice.created_at
        overdue = invoice.due_at is not None and invoice.due_at < now
        out.append(
            OutstandingInvoice(
                invoice=invoice,
                age_days=max(0, (now - issued).days),
                past_due=invoice.status == Invoice.Status.PAST_DUE or overdue,
                days_overdue=(now - invoice.due_at).days
                if invoice.due_at is not None and overdue
                else None,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class OutstandingTotals:
    count: int
    amount: Decimal
    past_due_count: int
    past_due_amount: Decimal


def outstanding_totals(rows: Iterable[OutstandingInvoice]) -> OutstandingTotals:
    rows = list(rows)
    late = [r for r in rows if r.past_due]
    return OutstandingTotals(
        count=len(rows),
        amount=sum((r.invoice.total for r in rows), ZERO),
        past_due_count=len(late),
        past_due_amount=sum((r.invoice.total for r in late), ZERO),
    )
