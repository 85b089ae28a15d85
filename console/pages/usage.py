"""The Usage page (any member): what an organisation used over a bounded range of UTC days, per
day or hour, optionally split by model or key, as a chart, a table of the chart's figures and a
table per model or key.

Contract:

* The figures come from the hourly rollups only, through ``billing.selectors`` (the functions the
  usage API calls): one query for the range, two when split, however long the range and however
  many keys (``usage_view``). Money stays Decimal; only the chart's figures are floats.
* The range rule is the API's (``MAX_RANGE``: 366 days by day, 31 by hour); a range it refuses is
  the form's error and a 400, never a query. Empty fields take the defaults: this UTC month, by
  day, nothing split, requests charted.
* The CSV export is the API's ``usage.csv`` for the same range, granularity and grouping: one code
  path for the rows.
* ``GET usage/`` (``org-usage``) is the module's only route.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from django import forms
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.urls import path, reverse

from billing import selectors as usage
from billing.api.serializers import MAX_RANGE
from console.pages.filters import (
    PAGE_SIZE,
    check_dates,
    date_field,
    query_string,
    utc_midnight,
    utc_today,
)
from console.scoping import OrgContext, org_page
from tenants.models import ApiKey, Organization

# Keys or models drawn as their own series; the rest are summed as "Other".
TOP_SERIES = 7

GRANULARITIES = [("day", "Day"), ("hour", "Hour")]
GROUPS = [("", "Nothing"), ("model", "Model"), ("key", "API key")]
GROUP_NOUNS = {"": "", "model": "model", "key": "API key"}
METRICS = [("requests", "Requests"), ("tokens", "Tokens"), ("cost", "Cost (USD)")]
UNITS = {"requests": "requests", "tokens": "tokens", "cost": "USD"}
METRIC_NOUNS = {"requests": "requests", "tokens": "tokens", "cost": "cost"}
# The columns of the usage table when nothing is split.
TABLE_METRICS = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "cost")


@dataclass(frozen=True)
class UsageQuery:
    """What the usage page shows: the UTC days ``first``..``last`` (both included)."""

    first: date
    last: date
    granularity: Literal["day", "hour"]
    group: Literal["", "model", "key"]
    metric: Literal["requests", "tokens", "cost"]

    @property
    def start(self) -> datetime:
        return utc_midnight(self.first)

    @property
    def end(self) -> datetime:
        """Exclusive: the midnight after ``last``."""
        return utc_midnight(self.last + timedelta(days=1))

    def params(self) -> dict[str, str]:
        """The page's own query string (for links that keep the view)."""
        return {
            "from": self.first.isoformat(),
            "to": self.last.isoformat(),
            "granularity": self.granularity,
            "group_by": self.group,
            "metric": self.metric,
        }

    def api_params(self) -> dict[str, str]:
        """The same view as the usage API's query (``to`` exclusive there)."""
        return {
            "from": self.first.isoformat(),
            "to": (self.last + timedelta(days=1)).isoformat(),
            "granularity": self.granularity,
            "group_by": self.group,
        }


class UsageForm(forms.Form):
    """The usage page's view. Empty fields take the defaults: this UTC month, by day, nothing
    split, requests charted."""

    granularity = forms.ChoiceField(label="Per", choices=GRANULARITIES)
    group_by = forms.ChoiceField(label="Split by", choices=GROUPS, required=False)
    metric = forms.ChoiceField(label="Chart", choices=METRICS)

    def __init__(self, data: QueryDict) -> None:
        today = utc_today()
        month_end = (today.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
        defaults = {
            "from": today.replace(day=1).isoformat(),
            "to": month_end.isoformat(),
            "granularity": "day",
            "group_by": "",
            "metric": "requests",
        }
        given = {name: data.get(name, "").strip() for name in defaults}
        super().__init__({name: given[name] or defaults[name] for name in defaults})
        self.fields["from"] = date_field("From (UTC)")
        self.fields["to"] = date_field("To (UTC, included)")
        self.order_fields(["from", "to", "granularity", "group_by", "metric"])

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        first, last = data.get("from"), data.get("to")
        check_dates(self, first, last)
        granularity = data.get("granularity")
        if first and last and granularity and not self.errors:
            days = (last - first).days + 1
            most = MAX_RANGE[granularity].days
            if days > most:
                hint = " or show it per day" if granularity == "hour" else ""
                self.add_error(
                    "to",
                    f"Per {granularity} the range may span at most {most} days; this one spans "
                    f"{days}. Choose a shorter range{hint}.",
                )
        return data

    def query(self) -> UsageQuery:
        data = self.cleaned_data
        return UsageQuery(
            first=data["from"],
            last=data["to"],
            granularity=data["granularity"],
            group=data["group_by"],
            metric=data["metric"],
        )


def _buckets(query: UsageQuery) -> list[datetime]:
    """Every bucket of the range (the chart's x axis; those to come are zeros)."""
    step = timedelta(hours=1) if query.granularity == "hour" else timedelta(days=1)
    out, moment = [], query.start
    while moment < query.end:
        out.append(moment)
        moment += step
    return out


def _value(row: dict[str, Any], metric: str) -> Any:
    return row["total_tokens"] if metric == "tokens" else row[metric]


def _zero(metric: str) -> Any:
    return Decimal(0) if metric == "cost" else 0


def _chart_number(value: Any) -> float | int:
    """A figure for the chart (display only: money stays Decimal everywhere else)."""
    return float(value) if isinstance(value, Decimal) else int(value)


def _figure(value: Any) -> str:
    """A table cell: whole numbers with thousands separators, money to 4 decimal places.
    Formatted here rather than with template filters: a year by day is thousands of cells."""
    return f"{value:,.4f}" if isinstance(value, Decimal) else f"{value:,}"


def _sum_rows(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The metrics of ``rows`` added up (exactly: integers and Decimals), with ``total_tokens``."""
    totals: dict[str, Any] = {m: _zero(m) for m in usage.METRICS}
    for row in rows:
        for metric in usage.METRICS:
            totals[metric] += row[metric]
    totals["total_tokens"] = totals["prompt_tokens"] + totals["completion_tokens"]
    return totals


def _key_label(key: ApiKey | None, key_id: Any) -> str:
    if key is None:
        return f"deleted key {str(key_id)[:8]}"
    return f"{key.name} …{key.last_four}"


def _ranked_groups(
    organization: Organization, query: UsageQuery, group: Literal["model", "key"]
) -> list[dict[str, Any]]:
    """Every model or key with usage in the range, ranked by the charted metric, labelled."""
    groups = usage.usage_by_group(
        organization=organization,
        start=query.start,
        end=query.end,
        group=group,
        rank_by=query.metric,
    )
    if group == "key":
        keys = (
            ApiKey.objects.filter(
                organization=organization, pk__in=[row["api_key_id"] for row in groups]
            )
            .only("pk", "name", "prefix", "last_four", "organization_id")
            .order_by()
        )
        by_id = {key.pk: key for key in keys}
        for row in groups:
            row["api_key"] = by_id.get(row["api_key_id"])
            row["label"] = _key_label(row["api_key"], row["api_key_id"])
    else:
        for row in groups:
            row["label"] = row["model"]
    return groups


def usage_view(organization: Organization, query: UsageQuery) -> dict[str, Any]:
    """The figures of the usage page: totals, the chart, its table and, when split, one row per
    model or key. One query over the range's rollups, two when split (the models or keys
    ranked, then each bucket with the figures of the first ``TOP_SERIES``), however long the
    range and however many keys; "Other" is the bucket's total less those."""
    metric = query.metric
    groups: list[dict[str, Any]] = []
    labels: list[str] = []
    columns: list[dict[datetime, Any]] = []  # per series: bucket start -> value
    if query.group:
        group = query.group
        groups = _ranked_groups(organization, query, group)
        top = groups[:TOP_SERIES]
        by_bucket = usage.usage_split_by_bucket(
            organization=organization,
            start=query.start,
            end=query.end,
            granularity=query.granularity,
            group=group,
            values=[row[usage.DIMENSIONS[group]] for row in top],
            rank_by=metric,
        )
        labels = [row["label"] for row in top]
        columns = [{row["start"]: row["split"][i] for row in by_bucket} for i in range(len(top))]
        if len(groups) > TOP_SERIES:
            columns.append(
                {row["start"]: _value(row, metric) - sum(row["split"]) for row in by_bucket}
            )
            labels.append("Other")
    else:
        by_bucket = list(
            usage.usage_rows(
                organization=organization,
                start=query.start,
                end=query.end,
                granularity=query.granularity,
                group_by=(),
                stream=False,  # at most 744 rows
            )
        )
        columns = [{row["start"]: _value(row, metric) for row in by_bucket}]
        labels = [dict(METRICS)[metric]]
    buckets = _buckets(query)
    chart = {
        "x": [int(moment.timestamp()) for moment in buckets],
        "series": [
            {
                "label": label,
                "values": [_chart_number(column.get(moment, _zero(metric))) for moment in buckets],
            }
            for label, column in zip(labels, columns, strict=True)
        ],
        "unit": UNITS[metric],
    }
    # The chart's figures as a table, newest first, buckets with usage only.
    if query.group:
        cells = [
            [_figure(column.get(row["start"], _zero(metric))) for column in columns]
            + [_figure(_value(row, metric))]
            for row in by_bucket
        ]
    else:
        cells = [[_figure(row[name]) for name in TABLE_METRICS] for row in by_bucket]
    shown = "%Y-%m-%d %H:%M" if query.granularity == "hour" else "%Y-%m-%d"
    table = [
        {"iso": row["start"].isoformat(), "label": row["start"].strftime(shown), "cells": line}
        for row, line in zip(reversed(by_bucket), reversed(cells), strict=True)
    ]
    return {
        "totals": _sum_rows(by_bucket),
        "chart": chart,
        "series_labels": labels,
        "table": table,
        "groups": groups,
    }


@org_page()
def usage_page(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """An organisation's usage over a range (see the module docstring)."""
    form = UsageForm(request.GET)
    context: dict[str, Any] = {"section": "usage", "form": form, "organization": ctx.organization}
    if not form.is_valid():
        return render(request, "console/usage/usage.html", context, status=400)
    query = form.query()
    view = usage_view(ctx.organization, query)
    today = utc_today()
    live = query.first <= today <= query.last
    month_spend = None
    if live:
        month_start = utc_midnight(today.replace(day=1))
        month_spend = (
            view["totals"]["cost"]
            if query.first == month_start.date()
            else usage.usage_totals(
                organization=ctx.organization, start=month_start, end=query.end
            )["cost"]
        )
    page = Paginator(view["groups"], PAGE_SIZE).get_page(request.GET.get("page"))
    csv_url = reverse("usage-csv", kwargs={"org_slug": ctx.organization.slug})
    context |= view | {
        "query": query,
        "metric_label": dict(METRICS)[query.metric],
        "metric_noun": METRIC_NOUNS[query.metric],
        "group_label": dict(GROUPS)[query.group],
        "group_noun": GROUP_NOUNS[query.group],
        "group_page": page,
        "page_query": query_string(query.params()),
        "csv_url": f"{csv_url}?{query_string(query.api_params())}",
        "live": live,
        "month_spend": month_spend,
        "top_series": TOP_SERIES,
        "other_count": max(0, len(view["groups"]) - TOP_SERIES),
        # Bars for one series of a few buckets; lines otherwise (grouped bars would not read).
        "chart_kind": "bars"
        if len(view["chart"]["series"]) == 1 and len(view["chart"]["x"]) <= 62
        else "lines",
    }
    return render(request, "console/usage/usage.html", context)


urlpatterns = [
    path("usage/", usage_page, name="org-usage"),
]
