"""An organisation's overview, the models it may use and its limits; every member reads them.

- Overview: month-to-date spend and tokens against the monthly budgets (``billing.spend``, the
  figures the budget alerts and the gateway's counters are reconciled from), requests and tokens
  per day for the last 30 UTC days (rollups), the month's top models and keys, live tiles over
  the organisation's usage websocket (``console.consumers``, ``docs/usage-api.md``) and the budget
  alerts that fired (``billing.alerts`` records each in ``BudgetAlert``).
- Models: ``tenants.catalog.available_models_for_organization``, the rule the management API's
  model list and the access snapshot use, with each name's endpoints from the catalog.
- Limits: the organisation's limits, budgets and plan, read-only; platform staff get links to the
  Django admin and the management API, where limits are set.
- The response cache's opt-in (``docs/response-cache.md``), shown on the models page and switched
  there by owners and admins (``organization_update``: audited, published to the gateway); and per
  model whether it caches (its catalog ``cache_ttl_s`` above 0), for how long and at what hit
  price (``price_cache_hit_per_mtok``; an alias as the model it is described by), read in one
  query for all the page's models.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, timedelta
from decimal import Decimal
from typing import Any, Literal

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.utils import timezone
from django.views.decorators.http import require_POST, require_safe

from billing import selectors as usage
from billing import spend
from console.scoping import OrgContext, org_page
from inference.models import CatalogModel
from inference.selectors import endpoints_for_organization
from tenants import services
from tenants.catalog import AvailableModel, available_models_for_organization
from tenants.roles import MANAGE

# How many days the overview's chart shows, and how many rows its top lists and alerts hold.
CHART_DAYS = 30
TOP_ROWS = 5
ALERT_ROWS = 10

# What the models page calls each endpoint, and the path a client sends it to.
ENDPOINT_LABELS = {
    "chat.completions": ("chat", "/v1/chat/completions"),
    "completions": ("completions", "/v1/completions"),
    "embeddings": ("embeddings", "/v1/embeddings"),
}


def _series(days: list[dict[str, Any]], unit: str, series: dict[str, str]) -> dict[str, Any]:
    """The JSON ``console.js`` draws as a uPlot chart: unix seconds of each day and one list of
    values per series (``label -> metric``). Without any usage the chart says so instead."""
    if not any(row["requests"] for row in days):
        return {
            "x": [],
            "series": [{"label": label, "values": []} for label in series],
            "unit": unit,
        }
    return {
        "x": [int(row["start"].timestamp()) for row in days],
        "series": [
            {"label": label, "values": [row[metric] for row in days]}
            for label, metric in series.items()
        ],
        "unit": unit,
    }


def _plain(amount: Decimal) -> str:
    """A number as an HTML attribute wants it: no exponent, no grouping."""
    return f"{amount.normalize():f}"


def _meter(use: usage.BudgetUse) -> dict[str, str] | None:
    """The attributes of a budget's ``<meter>``: at 80 % it turns "suboptimal", past the
    budget "bad" (``optimum`` is 0: less is better)."""
    if use.budget is None:
        return None
    budget = Decimal(use.budget)
    return {
        "max": _plain(budget),
        "value": _plain(Decimal(use.used)),
        "low": _plain(budget * Decimal("0.8")),
        "high": _plain(budget),
    }


@org_page()
@require_safe
def overview(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    organization = ctx.organization
    now = timezone.now().astimezone(UTC)
    month = spend.current_month(now)
    month_start, month_end = spend.month_range(month)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    chart_start, chart_end = today - timedelta(days=CHART_DAYS - 1), today + timedelta(days=1)
    days = usage.daily_usage(organization=organization, start=chart_start, end=chart_end)
    budgets = usage.month_budgets(organization, month=month)

    def top(by: Literal["model", "key"]) -> list[dict[str, Any]]:
        return usage.top_usage(
            organization=organization, start=month_start, end=month_end, by=by, limit=TOP_ROWS
        )

    context = {
        "section": "overview",
        "organization": organization,
        "month": month,
        "budgets": budgets,
        "spend_meter": _meter(budgets.spend),
        "tokens_meter": _meter(budgets.tokens),
        "totals": usage.usage_totals(organization=organization, start=month_start, end=month_end),
        "days": days,
        "chart_days": CHART_DAYS,
        "requests_chart": _series(days, "requests", {"Requests": "requests", "Errors": "errors"}),
        "tokens_chart": _series(
            days,
            "tokens",
            {"Prompt tokens": "prompt_tokens", "Completion tokens": "completion_tokens"},
        ),
        "top_models": top("model"),
        "top_keys": top("key"),
        "top_rows": TOP_ROWS,
        "alerts": usage.recent_budget_alerts(organization, limit=ALERT_ROWS),
        "alert_rows": ALERT_ROWS,
    }
    return render(request, "console/overview/overview.html", context)


@dataclass(frozen=True)
class ModelRow:
    """One line of the models page."""

    model: AvailableModel
    endpoints: list[tuple[str, str]] | None  # (label, path); None: the catalog cannot tell
    price_input: str
    price_output: str
    # The response cache: how long an answer is kept (``2 hours``) and a hit's price per million
    # tokens, input and output alike; both None when the model does not cache.
    cache_ttl: str | None = None
    price_cache_hit: str | None = None


_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def _duration(seconds: int) -> str:
    """A TTL in the largest unit that holds it exactly (``7200`` → ``2 hours``, ``90`` →
    ``90 seconds``): never rounded, like the prices."""
    for unit, size in _UNITS:
        if seconds % size == 0:
            count = seconds // size
            return f"{count:,} {unit}{'' if count == 1 else 's'}"
    raise AssertionError("unreachable: every count of seconds is whole seconds")


def _price(amount: Decimal) -> str:
    """A price per million tokens with at least two decimals and no trailing zeros beyond
    (``0.500000`` → ``0.50``, ``0.000150`` → ``0.00015``): exact, never rounded."""
    exponent = amount.normalize().as_tuple().exponent
    places = max(2, -exponent if isinstance(exponent, int) else 2)
    return f"{amount.quantize(Decimal(1).scaleb(-places)):,f}"


@org_page()
@require_safe
def models(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    organization = ctx.organization
    endpoints = endpoints_for_organization(organization)
    available = available_models_for_organization(organization)
    # The response cache settings of the models the rows are described by (an alias: its shown
    # target), in one query: the catalog's, as the gateway's routes carry them.
    caching = {
        name: (ttl, hit_price)
        for name, ttl, hit_price in CatalogModel.objects.filter(
            name__in={model.target or model.name for model in available}, cache_ttl_s__gt=0
        ).values_list("name", "cache_ttl_s", "price_cache_hit_per_mtok")
    }
    rows = []
    for model in available:
        served = endpoints.get(model.name)
        cache = caching.get(model.target or model.name)
        rows.append(
            ModelRow(
                model=model,
                endpoints=None if served is None else [ENDPOINT_LABELS[e] for e in served],
                price_input=_price(model.price_input_per_mtok),
                price_output=_price(model.price_output_per_mtok),
                cache_ttl=None if cache is None else _duration(cache[0]),
                price_cache_hit=None if cache is None else _price(cache[1]),
            )
        )
    context = {
        "section": "models",
        "organization": organization,
        "rows": rows,
        "any_caches": any(row.cache_ttl for row in rows),
        "can_manage": ctx.can(MANAGE),
    }
    return render(request, "console/overview/models.html", context)


@org_page()
@require_safe
def limits(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    organization = ctx.organization
    rate_limits = [
        ("Requests per minute", organization.requests_per_minute, "requests"),
        ("Tokens per minute", organization.tokens_per_minute, "tokens"),
        ("Concurrent requests", organization.max_concurrent_requests, "requests at once"),
    ]
    budgets = usage.month_budgets(organization)
    context = {
        "section": "limits",
        "organization": organization,
        "rate_limits": rate_limits,
        "budgets": budgets,
        "spend_meter": _meter(budgets.spend),
        "tokens_meter": _meter(budgets.tokens),
        "is_staff": bool(getattr(ctx.user, "is_staff", False)),
    }
    return render(request, "console/overview/limits.html", context)


@org_page()
@require_POST
def response_cache(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """Opt in to or out of the response cache (owners and admins: the page's write role)."""
    enabled = request.POST.get("enabled") == "on"
    services.organization_update(
        organization=ctx.organization,
        name=ctx.organization.name,
        response_cache_enabled=enabled,
        actor=ctx.user,
    )
    messages.success(request, f"The response cache is {'on' if enabled else 'off'}.")
    return redirect("console:org-models", ctx.organization.slug)


urlpatterns = [
    path("", overview, name="org-overview"),
    path("models/", models, name="org-models"),
    path("models/response-cache/", response_cache, name="org-response-cache"),
    path("limits/", limits, name="org-limits"),
]
