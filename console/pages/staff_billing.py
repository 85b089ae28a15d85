"""Platform staff's billing pages (docs/billing.md, "Operator reports"):

* ``/staff/revenue/?month=YYYY-MM`` (``staff-revenue``): a month's revenue by organisation, by
  model (with replica-hours, cost, cost per million tokens and gross margin) and by day; the
  current month (month to date) unless ``month`` names a past one;
* ``/staff/revenue/<table>.csv?month=`` (``staff-revenue-csv``): each of those tables as CSV;
* ``/staff/invoices/`` (``staff-invoices``) and ``/staff/invoices.csv``: outstanding and
  past-due invoices, linking to the admin.

Contract: the figures come from ``billing.reports`` (grouped queries, never a loop over events);
money stays Decimal and is shown exact (usage revenue, cost and margin to 12 places, invoice
amounts to cents). A table and its CSV are built by one function (``_table``), so the CSV holds
exactly the rows the page shows (the totals row is the page's footer and not in the CSV).
Signed-in users who are not staff get 404 (the pages do not exist for them), anonymous visitors
the sign-in page; a malformed or future month is a 400 page that says so.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path, reverse
from django.utils import timezone

from billing import reports
from billing.spend import month_of
from console.staff import staff_page
from vlinders.csv_export import cell


@dataclass(frozen=True, slots=True)
class Table:
    """A report table: column headers, and rows of cells (text or numbers, exactly as the CSV
    has them) each with an optional link for its first cell. ``numeric`` marks right-aligned
    columns."""

    name: str
    headers: Sequence[str]
    numeric: Sequence[bool]
    rows: list[tuple[list[Any], str | None]]
    footer: list[Any] | None = None
    empty: str = "Nothing in this period."

    @property
    def columns(self) -> list[tuple[str, bool]]:
        return list(zip(self.headers, self.numeric, strict=True))

    @property
    def shown(self) -> list[tuple[list[tuple[Any, bool]], str | None]]:
        """The rows for the template: each cell with whether it is a number column."""
        return [(list(zip(cells, self.numeric, strict=True)), link) for cells, link in self.rows]

    @property
    def shown_footer(self) -> list[tuple[Any, bool]]:
        return list(zip(self.footer or [], self.numeric, strict=True))


class Figure(str):
    """A number the page formatted itself (exact decimal text): written to the CSV as it is,
    where other text is guarded against spreadsheet formulas (a negative margin stays a
    number)."""

    __slots__ = ()


def _money(value: Decimal | None) -> str:
    return "" if value is None else Figure(f"{value:f}")


def _when(value: datetime | None) -> str:
    return "" if value is None else f"{value:%Y-%m-%d %H:%M}"


def _admin(name: str, pk: Any) -> str:
    return reverse(f"admin:{name}_change", args=[pk])


# --- the tables ------------------------------------------------------------------------------
def organizations_table(period: reports.Period, usage: reports.UsageGroups | None = None) -> Table:
    rows = reports.revenue_by_organization(period, usage)
    totals = reports.revenue_totals(rows)
    return Table(
        name="organizations",
        headers=(
            "Organisation",
            "Slug",
            "Plan",
            "Billing mode",
            "Requests",
            "Tokens",
            "Usage revenue (USD)",
            "Invoice",
            "Invoice status",
            "Invoiced (USD)",
            "Base fee (USD)",
            "Adjustments (USD)",
        ),
        numeric=(False, False, False, False, True, True, True, False, False, True, True, True),
        rows=[
            (
                [
                    row.name,
                    row.slug,
                    row.plan,
                    row.billing_mode,
                    row.requests,
                    row.tokens,
                    _money(row.revenue),
                    row.invoice.display_number if row.invoice else "upcoming",
                    row.invoice.status if row.invoice else "",
                    _money(row.invoiced),
                    _money(row.base_fee),
                    _money(row.adjustments),
                ],
                _admin("tenants_organization", row.organization_id),
            )
            for row in rows
        ],
        footer=[
            f"{len(rows)} organisations",
            "",
            "",
            "",
            totals.requests,
            totals.tokens,
            _money(totals.revenue),
            f"{totals.invoices} invoiced",
            "",
            _money(totals.invoiced),
            _money(totals.invoiced_base_fees + totals.upcoming_base_fees),
            _money(totals.invoiced_adjustments + totals.pending_adjustments),
        ],
    )


def models_table(period: reports.Period, usage: reports.UsageGroups | None = None) -> Table:
    rows = reports.revenue_by_model(period, usage)
    totals = reports.model_totals(rows)
    return Table(
        name="models",
        headers=(
            "Model",
            "Requests",
            "Input tokens",
            "Output tokens",
            "Usage revenue (USD)",
            "Revenue / 1M tokens",
            "Replica-hours",
            "Cost / replica-hour",
            "Cost (USD)",
            "Cost / 1M tokens",
            "Gross margin (USD)",
            "Margin %",
        ),
        numeric=(False, *([True] * 11)),
        rows=[
            (
                [
                    row.model or "(no model)",
                    row.requests,
                    row.prompt_tokens,
                    row.completion_tokens,
                    _money(row.revenue),
                    _money(row.revenue_per_mtok),
                    _money(row.replica_hours) if row.in_catalog else "",
                    _money(row.cost_per_replica_hour),
                    _money(row.cost),
                    _money(row.cost_per_mtok),
                    _money(row.margin),
                    _money(row.margin_percent),
                ],
                None,
            )
            for row in rows
        ],
        footer=[
            f"{len(rows)} models",
            totals.requests,
            "",
            "",
            _money(totals.revenue),
            "",
            _money(
                (Decimal(totals.replica_seconds) / reports.SECONDS_PER_HOUR).quantize(
                    Decimal("0.001")
                )
            ),
            "",
            _money(totals.cost) + ("" if totals.cost_known else " (known costs)"),
            "",
            _money(totals.margin),
            _money(totals.margin_percent),
        ],
    )


def days_table(period: reports.Period, usage: reports.UsageGroups | None = None) -> Table:
    rows = reports.revenue_by_day(period, usage)
    return Table(
        name="days",
        headers=("Day (UTC)", "Requests", "Input tokens", "Output tokens", "Usage revenue (USD)"),
        numeric=(False, True, True, True, True),
        rows=[
            (
                [
                    f"{row['day']:%Y-%m-%d}",
                    row["requests"],
                    row["prompt_tokens"],
                    row["completion_tokens"],
                    _money(row["revenue"]),
                ],
                None,
            )
            for row in rows
        ],
        footer=[
            f"{len(rows)} days",
            sum(row["requests"] for row in rows),
            sum(row["prompt_tokens"] for row in rows),
            sum(row["completion_tokens"] for row in rows),
            _money(sum((row["revenue"] for row in rows), Decimal(0))),
        ],
    )


def invoices_table(rows: list[reports.OutstandingInvoice], name: str) -> Table:
    return Table(
        name=name,
        empty="No invoices.",
        headers=(
            "Invoice",
            "Organisation",
            "Period",
            "Status",
            "Issued (UTC)",
            "Due (UTC)",
            "Age (days)",
            "Days overdue",
            "Past due",
            "Total (USD)",
        ),
        numeric=(False, False, False, False, False, False, True, True, False, True),
        rows=[
            (
                [
                    row.invoice.display_number,
                    row.invoice.organization.name,
                    row.invoice.period,
                    row.invoice.status,
                    _when(row.invoice.issued_at),
                    _when(row.invoice.due_at),
                    row.age_days,
                    "" if row.days_overdue is None else row.days_overdue,
                    "yes" if row.past_due else "no",
                    _money(row.invoice.total),
                ],
                _admin("billing_invoice", row.invoice.pk),
            )
            for row in rows
        ],
    )


REVENUE_TABLES: dict[str, Callable[[reports.Period, reports.UsageGroups | None], Table]] = {
    "organizations": organizations_table,
    "models": models_table,
    "days": days_table,
}


def _csv(table: Table, filename: str) -> HttpResponse:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(table.headers)
    for cells, _link in table.rows:
        writer.writerow([value if isinstance(value, Figure) else cell(value) for value in cells])
    response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _period(request: HttpRequest) -> reports.Period | str:
    """The month asked for, or the message of why it cannot be shown."""
    try:
        return reports.month_period(request.GET.get("month") or None)
    except ValueError as error:
        return str(error)


def _previous_month(period: reports.Period) -> str:
    return month_of(period.start.replace(day=1) - timedelta(days=1))


# --- the views -------------------------------------------------------------------------------
@staff_page
def revenue_page(request: HttpRequest) -> HttpResponse:
    period = _period(request)
    if isinstance(period, str):
        return render(
            request,
            "console/staff/revenue.html",
            {"error": period, "section": "revenue"},
            status=400,
        )
    usage = reports.usage_groups(period)  # one scan of the month's rollups for all three
    tables = [builder(period, usage) for builder in REVENUE_TABLES.values()]
    current = reports.month_period()
    context = {
        "section": "revenue",
        "period": period,
        "tables": {table.name: table for table in tables},
        "previous_month": _previous_month(period),
        "next_month": month_of(period.end) if period.end <= current.start else None,
        "this_month": current.month,
        "csv_query": f"?month={period.month}",
    }
    return render(request, "console/staff/revenue.html", context)


@staff_page
def revenue_csv(request: HttpRequest, table: str) -> HttpResponse:
    builder = REVENUE_TABLES.get(table)
    if builder is None:
        raise Http404("No such table.")
    period = _period(request)
    if isinstance(period, str):
        return HttpResponse(period, status=400, content_type="text/plain; charset=utf-8")
    return _csv(builder(period, None), f"revenue-{period.month}-{table}.csv")


@staff_page
def invoices_page(request: HttpRequest) -> HttpResponse:
    rows = reports.outstanding_invoices()
    context = {
        "section": "invoices",
        "totals": reports.outstanding_totals(rows),
        "past_due": invoices_table([r for r in rows if r.past_due], "past-due"),
        "open": invoices_table([r for r in rows if not r.past_due], "open"),
    }
    return render(request, "console/staff/invoices.html", context)


@staff_page
def invoices_csv(request: HttpRequest) -> HttpResponse:
    table = invoices_table(reports.outstanding_invoices(), "outstanding")
    return _csv(table, f"outstanding-invoices-{timezone.now():%Y-%m-%d}.csv")


urlpatterns = [
    path("revenue/", revenue_page, name="staff-revenue"),
    path("revenue/<slug:table>.csv", revenue_csv, name="staff-revenue-csv"),
    path("invoices/", invoices_page, name="staff-invoices"),
    path("invoices.csv", invoices_csv, name="staff-invoices-csv"),
]
