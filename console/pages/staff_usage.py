"""Operator console: Live platform usage (``/staff/usage/``, ``staff-usage``).

Two kinds of live figures, each refreshed the way that suits it:

* **Per model, over the last five minutes** (``billing.platform_usage``): requests/s, tokens/s,
  errors by type, TTFT p50/p95, and the platform's revenue month to date. These are computed in
  the database from the usage events (one grouped query on Postgres) and the page polls them:
  htmx fetches the partial ``/staff/usage/live/`` (``staff-usage-live``) every
  ``REFRESH_SECONDS``. Polling rather than a push after each ingest, because a window's figures
  change with time as well as with ingests (events age out of it; with no traffic the figures
  must fall to zero, and no batch arrives to say so), and because the database cost then grows
  with the few open operator pages, not with the ingest rate (a push would run the window query
  after every batch of every worker, whether anyone watches or not).
* **Per organisation, per ingested batch**: the existing websocket stream ``ws/staff/usage/``
  (``billing.live`` → ``console.consumers``), read by ``console/static/console/staff_usage.js``;
  it costs no query at all.

Both views are wrapped in ``console.staff.staff_page`` (anonymous → sign-in, non-staff → 404).
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

from billing.platform_usage import ErrorFigures, PlatformUsage, WindowFigures, platform_usage
from console.pages.staff_billing import Table
from console.staff import staff_page

REFRESH_SECONDS = 5
NONE = "\u2013"  # an en dash: no value


def _rate(value: float) -> str:
    return f"{value:.2f}"


def _percent(share: float) -> str:
    return f"{share * 100:.1f}%"


def _ms(value: float | None) -> str:
    return NONE if value is None else f"{value:.1f}"


def _errors(items: list[ErrorFigures]) -> str:
    return ", ".join(f"{item.error_type} {item.count}" for item in items) or NONE


def _model_cells(group: WindowFigures) -> list[object]:
    return [
        group.model if group.model is not None else "All models",
        group.requests,
        _rate(group.requests_per_second),
        group.tokens,
        _rate(group.tokens_per_second),
        group.errors,
        _percent(group.error_rate),
        _errors(group.by_error),
        _ms(group.ttft_p50_ms),
        _ms(group.ttft_p95_ms),
    ]


def models_table(usage: PlatformUsage) -> Table:
    """One row per model in the window, busiest first; the platform's figures as the footer."""
    return Table(
        name="models",
        empty="No requests in the window.",
        headers=(
            "Model",
            "Requests",
            "Requests/s",
            "Tokens",
            "Tokens/s",
            "Errors",
            "Error rate",
            "Errors by type",
            "TTFT p50 (ms)",
            "TTFT p95 (ms)",
        ),
        numeric=(False, True, True, True, True, True, True, False, True, True),
        rows=[(_model_cells(group), None) for group in usage.models],
        footer=_model_cells(usage.total),
    )


def errors_table(usage: PlatformUsage) -> Table:
    """The platform's errors in the window by type, most frequent first."""
    return Table(
        name="errors",
        empty="No errors in the window.",
        headers=("Error type", "Count", "Errors/s", "Share of requests"),
        numeric=(False, True, True, True),
        rows=[
            ([item.error_type, item.count, _rate(item.per_second), _percent(item.share)], None)
            for item in usage.errors
        ],
    )


def _context(usage: PlatformUsage) -> dict[str, object]:
    total = usage.total
    return {
        "section": "usage",
        "usage": usage,
        "window_minutes": round(usage.window_seconds / 60),
        "refresh_seconds": REFRESH_SECONDS,
        "requests_per_second": _rate(total.requests_per_second),
        "tokens_per_second": _rate(total.tokens_per_second),
        "error_rate": _percent(total.error_rate),
        "ttft_p50": _ms(total.ttft_p50_ms),
        "ttft_p95": _ms(total.ttft_p95_ms),
        "revenue_mtd": f"{usage.revenue_mtd:f}",  # exact, as on the revenue page
        "models": models_table(usage),
        "errors": errors_table(usage),
    }


@staff_page
def usage_page(request: HttpRequest) -> HttpResponse:
    """The whole page, with the figures as of now (the partial then refreshes them)."""
    return render(request, "console/staff/usage.html", _context(platform_usage()))


@staff_page
def usage_live(request: HttpRequest) -> HttpResponse:
    """The figures alone (what htmx swaps in every ``REFRESH_SECONDS``)."""
    return render(request, "console/staff/_usage_figures.html", _context(platform_usage()))


urlpatterns = [
    path("usage/", usage_page, name="staff-usage"),
    path("usage/live/", usage_live, name="staff-usage-live"),
]
