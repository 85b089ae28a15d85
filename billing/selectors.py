"""Reads of usage for the usage API, the CSV export and the console: always from the hourly
rollups (raw events are pruned after their retention period), always for one organisation. The
one exception is the console's list of recent requests (``recent_requests``), which reads the
raw events within their retention period."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from django.conf import settings
from django.db.models import F, Func, Min, Q, QuerySet, Sum
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone

from billing import prepaid, spend, tax
from billing.models import (
    BudgetAlert,
    Invoice,
    InvoiceAdjustment,
    InvoiceLine,
    PlanPrice,
    UsageEvent,
    UsageRollup,
)
from tenants.models import ApiKey, Organization

logger = logging.getLogger(__name__)

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
    stream: bool = True,
) -> Iterator[dict[str, Any]]:
    """One row per bucket (UTC day or hour starting at ``start``) and per value of each
    ``group_by`` dimension, with usage only: empty buckets are left out. Rows are ordered by
    bucket, then key id, then model. Each row has ``start``, ``api_key_id`` (``None`` unless
    grouped by key), ``model`` (``None`` unless grouped by model), the metrics and
    ``total_tokens``. Streams from the database (``iterator``), unless ``stream`` is false:
    then the rows come in one fetch, which lets Postgres scan in parallel (it never does for a
    server-side cursor); for results of a few thousand rows, like a chart's."""
    fields = [DIMENSIONS[d] for d in DIMENSIONS if d in group_by]
    rows = (
        _rollups(organization, start, end)
        .annotate(start=_bucket(granularity))
        .values("start", *fields)
        .annotate(**{m: Sum(m) for m in METRICS})
        .order_by("start", *fields)
    )
    for row in rows.iterator(chunk_size=2000) if stream else list(rows):
        row.setdefault("api_key_id", None)
        row.setdefault("model", None)
        yield _with_total(row)


def usage_totals(*, organization: Organization, start: datetime, end: datetime) -> dict[str, Any]:
    """The metrics summed over the whole range, with ``total_tokens``."""
    return _with_total(_rollups(organization, start, end).aggregate(**{m: Sum(m) for m in METRICS}))


def key_names(organization: Organization) -> dict[Any, str]:
    """Names of the organisation's keys by id (its own keys only: tenancy fails closed)."""
    return dict(ApiKey.objects.filter(organization=organization).values_list("pk", "name"))


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


# --- The console's usage page: every key or model over a range, ranked --------------------------
# What a usage chart may rank by: each a metric of the rollups (tokens are prompt + completion).
RANKINGS: dict[str, Any] = {
    "requests": F("requests"),
    "tokens": F("prompt_tokens") + F("completion_tokens"),
    "cost": F("cost"),
}


def usage_by_group(
    *,
    organization: Organization,
    start: datetime,
    end: datetime,
    group: Literal["model", "key"],
    rank_by: str = "requests",
) -> list[dict[str, Any]]:
    """One row per key (or model) with usage in the range, with the metrics and
    ``total_tokens``, the largest ``rank_by`` (a name of ``RANKINGS``) first. Bounded by the
    organisation's keys and models; one grouped query over the range's rollups."""
    field = DIMENSIONS[group]
    rows = (
        _rollups(organization, start, end)
        .values(field)
        .annotate(**{m: Sum(m) for m in METRICS})
        .order_by(RANKINGS[rank_by].desc(nulls_last=True), field)
    )
    return [_with_total(row) for row in rows]


def usage_split_by_bucket(
    *,
    organization: Organization,
    start: datetime,
    end: datetime,
    granularity: Granularity,
    group: Literal["model", "key"],
    values: Sequence[Any],
    rank_by: str = "requests",
) -> list[dict[str, Any]]:
    """One row per bucket with usage (as ``usage_rows`` without grouping: ``start``, the metrics,
    ``total_tokens``) plus ``split``: the ``rank_by`` figure of each of ``values`` of ``group``
    in that bucket, in their order (0 without usage). One scan, grouped by bucket only, so the
    database keeps a small hash table however many keys there are (grouping by bucket and key
    instead makes Postgres sort the whole range)."""
    field = DIMENSIONS[group]
    figure = RANKINGS[rank_by]
    split = {
        f"split_{i}": Sum(figure, filter=Q(**{field: value}), default=0)
        for i, value in enumerate(values)
    }
    rows = (
        _rollups(organization, start, end)
        .annotate(start=_bucket(granularity))
        .values("start")
        .annotate(**split)
        .annotate(**{m: Sum(m) for m in METRICS})
        .order_by("start")
    )
    out = []
    for row in rows:
        row["split"] = [row.pop(name) for name in split]
        row.setdefault("api_key_id", None)
        row.setdefault("model", None)
        out.append(_with_total(row))
    return out


# --- The console's Requests page: raw usage events, newest first ---------------------------------
# What the page shows of an event: the event holds no prompt and no output, and this list is
# what leaves the database (``values``), so a field added to the model later is not shown unless
# it is added here.
REQUEST_FIELDS = (
    "request_id",
    "started_at",
    "api_key_id",
    "model",
    "served_model",
    "endpoint",
    "stream",
    "status",
    "error_type",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost",
    "latency_ms",
    "ttft_ms",
)
# A position in the list: (started_at, request_id) of a row, the keyset the pages turn on.
Cursor = tuple[datetime, str]


@dataclass(frozen=True, slots=True)
class RequestsPage:
    """Up to ``limit`` events, newest first; ``older``/``newer`` are the cursors of the next
    pages in each direction, ``None`` at an end."""

    rows: list[dict[str, Any]]
    older: Cursor | None
    newer: Cursor | None


def retention_start(now: datetime | None = None) -> datetime:
    """The oldest moment whose events are kept (``VLINDERS_USAGE_RETENTION_DAYS``)."""
    now = now or timezone.now()
    return now - timedelta(days=settings.VLINDERS_USAGE_RETENTION_DAYS)


def recent_requests(
    *,
    organization: Organization,
    start: datetime | None = None,
    end: datetime | None = None,
    api_key_id: Any = None,
    model: str = "",
    outcome: Literal["", "ok", "error"] = "",
    before: Cursor | None = None,
    after: Cursor | None = None,
    limit: int = 50,
) -> RequestsPage:
    """A page of the organisation's usage events, newest first, within the retention period
    (``start``/``end`` narrow it; ``end`` exclusive). Filters: one key; a model by the name the
    client asked for or the catalog model that served it; ``ok`` (status < 400) or ``error``.

    Keyset pagination on ``(started_at, request_id)``: ``before`` gives the rows older than a
    cursor, ``after`` the rows newer than one; each page is one indexed range scan
    (``usage_event_org_time``) however deep it is, never an ``OFFSET``.
    """
    lower = retention_start()
    if start is not None and start > lower:
        lower = start
    events = UsageEvent.objects.filter(organization=organization, started_at__gte=lower)
    if end is not None:
        events = events.filter(started_at__lt=end)
    if api_key_id is not None:
        events = events.filter(api_key_id=api_key_id)
    if model:
        events = events.filter(Q(model=model) | Q(served_model=model))
    if outcome == "ok":
        events = events.filter(status__lt=400)
    elif outcome == "error":
        events = events.filter(status__gte=400)
    if after is not None:
        at, request_id = after
        events = events.filter(started_at__gte=at).exclude(
            started_at=at, request_id__lte=request_id
        )
        found = list(
            events.order_by("started_at", "request_id").values(*REQUEST_FIELDS)[: limit + 1]
        )
        more_newer = len(found) > limit
        rows = found[:limit][::-1]
        return RequestsPage(
            rows=rows,
            older=_cursor(rows[-1]) if rows else None,
            newer=_cursor(rows[0]) if rows and more_newer else None,
        )
    if before is not None:
        at, request_id = before
        events = events.filter(started_at__lte=at).exclude(
            started_at=at, request_id__gte=request_id
        )
    found = list(events.order_by("-started_at", "-request_id").values(*REQUEST_FIELDS)[: limit + 1])
    rows = found[:limit]
    return RequestsPage(
        rows=rows,
        older=_cursor(rows[-1]) if len(found) > limit else None,
        newer=_cursor(rows[0]) if rows and before is not None else None,
    )


def _cursor(row: dict[str, Any]) -> Cursor:
    return (row["started_at"], row["request_id"])


# --- Invoices (docs/billing.md, "Invoices") ------------------------------------------------------
CENT = Decimal("0.01")
# Rounding of an invoice's exact subtotal to cents, once, at the total.
INVOICE_ROUNDING = ROUND_HALF_UP


@dataclass
class InvoiceDraft:
    """An invoice as it would be finalised now: an unsaved ``Invoice`` and its unsaved lines
    (positions set), and the pending adjustments its credit/charge lines come from."""

    invoice: Invoice
    lines: list[InvoiceLine]
    adjustments: list[InvoiceAdjustment]

    @property
    def is_empty(self) -> bool:
        return not self.lines


def plan_monthly_fee(plan: str) -> Decimal:
    """The plan's base fee in the price book now; a plan without a row costs nothing."""
    row = PlanPrice.objects.filter(plan=plan).values_list("monthly_fee", flat=True).first()
    return row if row is not None else Decimal(0)


MILLION = Decimal(1_000_000)


def _usage_lines(organization: Organization, start: datetime, end: datetime) -> list[InvoiceLine]:
    """The usage lines of a month, from its hourly rollups grouped by served model and by the
    prices the requests were served at (part of the rollup's key), models by name, a model's
    prices in the order they were first charged in the month.

    A group with prices gives an input-tokens line and an output-tokens line: quantity (tokens),
    unit price (USD per million) and amount = quantity x price / 1,000,000, exact. Their sum is
    the group's cost, the exact sum of its events' cost, because an event's cost *is* its tokens
    at those prices (``billing.events`` refuses one whose cost is not). Should a group ever
    disagree (it cannot through the ingest), it is billed as one line of its stored cost, logged:
    the invoice's total always equals the sum of the events' cost.

    Usage metered without prices (events of gateways before the prices were in the event) gives
    one line per model with its amount and no unit price. A line of no tokens is left out, and so
    are requests that never reached a model (no tokens, no cost).
    """
    groups = (
        _rollups(organization, start, end)
        .values("model", "price_input_per_mtok", "price_output_per_mtok")
        .annotate(
            requests=Sum("requests"),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            cached=Sum("cached_tokens"),
            cost=Sum("cost"),
            first_hour=Min("hour"),
        )
    )
    rows = sorted(
        groups,
        key=lambda row: (
            row["model"],
            row["price_input_per_mtok"] is not None,
            row["first_hour"],
            row["price_input_per_mtok"] or 0,
            row["price_output_per_mtok"] or 0,
        ),
    )
    lines: list[InvoiceLine] = []
    for row in rows:
        model, cost = row["model"], row["cost"]
        prompt, completion = int(row["prompt"]), int(row["completion"])
        if not prompt and not completion and not cost:
            continue  # requests that never reached a model: nothing to bill
        usage = {
            "kind": InvoiceLine.Kind.USAGE,
            "model": model,
            "requests": int(row["requests"]),
            "cached_tokens": int(row["cached"]),
        }
        price_in, price_out = row["price_input_per_mtok"], row["price_output_per_mtok"]
        if price_in is not None and price_out is not None:
            priced = [
                ("input_tokens", "input", prompt, price_in),
                ("output_tokens", "output", completion, price_out),
            ]
            amounts = [quantity * price / MILLION for _, _, quantity, price in priced]
            if sum(amounts, Decimal(0)) == cost:
                for (unit, word, quantity, price), amount in zip(priced, amounts, strict=True):
                    if not quantity:
                        continue
                    lines.append(
                        InvoiceLine(
                            **usage,
                            description=f"{model or 'no model'}: {quantity:,} {word} tokens at "
                            f"{price} USD per million",
                            input_tokens=quantity if unit == "input_tokens" else 0,
                            output_tokens=quantity if unit == "output_tokens" else 0,
                            unit=unit,
                            quantity=quantity,
                            unit_price_per_mtok=price,
                            amount=amount,
                        )
                    )
                    # Requests and cached tokens are counted once, on the model's first line.
                    usage |= {"requests": 0, "cached_tokens": 0}
                continue
            logger.error(
                "invoice of %s: rollups of %s at %s/%s cost %s, their tokens %s; billed as one "
                "line of the stored cost",
                organization.pk,
                model,
                price_in,
                price_out,
                cost,
                sum(amounts, Decimal(0)),
            )
        lines.append(
            InvoiceLine(
                **usage,
                description=f"{model or 'no model'}: {prompt} input tokens, "
                f"{completion} output tokens",
                input_tokens=prompt,
                output_tokens=completion,
                amount=cost,
            )
        )
    return lines


def invoice_draft(*, organization: Organization, period: str) -> InvoiceDraft:
    """What ``organization``'s invoice for ``period`` holds from the data committed now.

    Usage lines (``_usage_lines``): per served model and price, input and output tokens with
    their unit price, from the hourly rollups of the month (which keep the exact sum of the
    events' cost and the prices they were served at, and outlive the raw events). Then the plan's
    base fee (if the organisation existed before the month ended and the fee is not zero); then,
    for a prepaid organisation, "Paid from prepaid credit": minus the month's usage charged to
    its balance (``billing.prepaid.usage_in``: the hours from ``prepaid_since``); then the
    pending credit notes and one-off charges of the month, oldest first. The subtotal is the
    exact sum; the total is rounded once to cents.
    """
    start, end = spend.month_range(period)
    invoice = Invoice(
        organization=organization,
        period=period,
        status=Invoice.Status.DRAFT,
        plan=organization.plan,
        period_start=start,
        period_end=end,
    )
    lines = _usage_lines(organization, start, end)
    for line in lines:
        line.invoice = invoice
    fee = plan_monthly_fee(organization.plan)
    if fee and organization.created_at < end:
        lines.append(
            InvoiceLine(
                invoice=invoice,
                kind=InvoiceLine.Kind.BASE_FEE,
                description=f"{organization.get_plan_display()} plan, {period}",
                amount=fee,
            )
        )
    charged_to_credit = prepaid.usage_in(organization, start, end)
    if charged_to_credit:
        lines.append(
            InvoiceLine(
                invoice=invoice,
                kind=InvoiceLine.Kind.PREPAID,
                description=f"Paid from prepaid credit, {period}",
                amount=-charged_to_credit,
            )
        )
    adjustments = list(
        InvoiceAdjustment.objects.filter(
            organization=organization, period=period, invoice__isnull=True
        ).order_by("created_at", "id")
    )
    for adjustment in adjustments:
        lines.append(
            InvoiceLine(
                invoice=invoice,
                kind=adjustment.kind,
                description=f"{adjustment.get_kind_display()}: {adjustment.reason}"[:300],
                amount=adjustment.amount,
            )
        )
    for position, line in enumerate(lines, start=1):
        line.position = position
    invoice.subtotal = sum((line.amount for line in lines), Decimal(0))
    invoice.total = invoice.subtotal.quantize(CENT, rounding=INVOICE_ROUNDING)
    invoice.rounding = invoice.total - invoice.subtotal
    tax.apply_tax(invoice)  # the rate in force now; finalisation stores it with the invoice
    return InvoiceDraft(invoice=invoice, lines=lines, adjustments=adjustments)


def upcoming_invoice(*, organization: Organization, now: datetime | None = None) -> InvoiceDraft:
    """The draft of the current UTC month."""
    return invoice_draft(organization=organization, period=spend.current_month(now))


def invoices_of(organization: Organization) -> QuerySet[Invoice]:
    """The organisation's finalised invoices, newest first."""
    return (
        Invoice.objects.filter(organization=organization)
        .exclude(status=Invoice.Status.DRAFT)
        .order_by("-period", "-number")
    )


def invoice_lines(invoice: Invoice) -> list[InvoiceLine]:
    return list(invoice.lines.order_by("position"))


def invoice_due_period(now: datetime | None = None, *, grace_s: int | None = None) -> str | None:
    """The month whose invoices may be finalised at ``now``: the previous UTC month once the
    grace period for late usage events has passed since it ended, else ``None``."""
    now = (now or timezone.now()).astimezone(UTC)
    grace = settings.VLINDERS_INVOICE_GRACE_S if grace_s is None else grace_s
    this_month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if now < this_month_start + timedelta(seconds=grace):
        return None
    return spend.month_of(this_month_start - timedelta(days=1))


def organizations_to_invoice(period: str) -> list[Any]:
    """Ids of the organisations that have something to bill for ``period`` and no invoice yet:
    usage in the month, a pending adjustment, or a plan with a base fee (if they existed before
    the month ended)."""
    start, end = spend.month_range(period)
    paying_plans = list(PlanPrice.objects.filter(monthly_fee__gt=0).values_list("plan", flat=True))
    with_usage = set(
        UsageRollup.objects.filter(hour__gte=start, hour__lt=end)
        .values_list("organization_id", flat=True)
        .distinct()
    )
    with_adjustments = set(
        InvoiceAdjustment.objects.filter(period=period, invoice__isnull=True).values_list(
            "organization_id", flat=True
        )
    )
    with_fee = set(
        Organization.objects.filter(plan__in=paying_plans, created_at__lt=end).values_list(
            "id", flat=True
        )
    )
    existing = set(Invoice.objects.filter(period=period).values_list("organization_id", flat=True))
    known = set(Organization.objects.values_list("id", flat=True))
    return sorted((with_usage | with_adjustments | with_fee) & known - existing, key=str)
