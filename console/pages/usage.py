"""Usage, Requests and Audit log: what an organisation used, request by request, and who changed
what.

* **Usage** (any member): a bounded range of UTC days, per day or hour, optionally split by model
  or key, as a chart, a table of the chart's figures and a table per model or key, from the
  hourly rollups only (``billing.selectors``, the functions the usage API calls). The range rule
  is the API's (``MAX_RANGE``: 366 days by day, 31 by hour) and the CSV export is the API's
  ``usage.csv`` for the same range, granularity and grouping: one code path for the rows.
* **Requests** (any member): the raw usage events within their retention period, newest first,
  filtered by key, model, outcome and dates, turned page by page on a keyset (never an
  ``OFFSET``). An event holds no prompt and no output; the page shows ``REQUEST_FIELDS`` only.
* **Audit log** (admins and owners): the records the services wrote, filtered by action, actor
  and dates; the export is the API's ``audit.csv`` with the same filters (it takes the
  console's session).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, cast
from urllib.parse import urlencode

from django import forms
from django.core.paginator import Paginator
from django.forms.utils import flatatt
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from billing import selectors as usage
from billing.api.serializers import MAX_RANGE
from console.scoping import OrgContext, org_page
from tenants import selectors as tenants
from tenants.audit import ACTIONS
from tenants.catalog import available_models_for_organization
from tenants.models import ApiKey, Organization
from tenants.roles import MANAGE

PAGE_SIZE = 50
# Keys or models drawn as their own series; the rest are summed as "Other".
TOP_SERIES = 7
# The dates the forms accept (a date input's min/max, and no arithmetic past the calendar).
EARLIEST, LATEST = date(2000, 1, 1), date(2100, 12, 31)

GRANULARITIES = [("day", "Day"), ("hour", "Hour")]
GROUPS = [("", "Nothing"), ("model", "Model"), ("key", "API key")]
GROUP_NOUNS = {"": "", "model": "model", "key": "API key"}
METRICS = [("requests", "Requests"), ("tokens", "Tokens"), ("cost", "Cost (USD)")]
UNITS = {"requests": "requests", "tokens": "tokens", "cost": "USD"}
METRIC_NOUNS = {"requests": "requests", "tokens": "tokens", "cost": "cost"}
OUTCOMES = [("", "Any"), ("ok", "Succeeded"), ("error", "Failed")]
# The columns of the usage table when nothing is split.
TABLE_METRICS = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "cost")


def _date_field(label: str, *, required: bool = True, help_text: str = "") -> forms.DateField:
    return forms.DateField(
        label=label,
        required=required,
        help_text=help_text,
        widget=forms.DateInput(
            attrs={"type": "date", "min": EARLIEST.isoformat(), "max": LATEST.isoformat()},
            format="%Y-%m-%d",
        ),
    )


class LongSelect(forms.Select):
    """A ``<select>`` drawn in one pass: Django's widget renders each option through a template,
    which for an organisation's hundreds of keys costs more than the rest of the page."""

    def render(
        self, name: str, value: Any, attrs: dict[str, Any] | None = None, renderer: Any = None
    ) -> SafeString:
        chosen = "" if value is None else str(value)
        options = format_html_join(
            "",
            '<option value="{}"{}>{}</option>',
            (
                (option, mark_safe(" selected") if str(option) == chosen else "", label)
                for option, label in self.choices
            ),
        )
        final = self.build_attrs(self.attrs, (attrs or {}) | {"name": name})
        return format_html("<select{}>{}</select>", flatatt(final), options)


def _check_dates(form: forms.Form, first: date | None, last: date | None) -> None:
    for name, value in (("from", first), ("to", last)):
        if value is not None and not EARLIEST <= value <= LATEST:
            form.add_error(name, f"Choose a date from {EARLIEST} to {LATEST}.")
    if first is not None and last is not None and last < first:
        form.add_error("to", "Must be on or after the start date.")


def _today() -> date:
    return timezone.now().astimezone(UTC).date()


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _invalid_status(request: HttpRequest) -> int:
    """400 for a page with bad filters; 200 for htmx, which swaps no 4xx answer in (the
    partial then shows the errors where the results were)."""
    return 200 if getattr(request, "htmx", False) else 400


def _query_string(values: dict[str, Any]) -> str:
    """``a=1&b=2`` of the values that are set (the page's links keep its filters)."""
    return urlencode({name: value for name, value in values.items() if value not in ("", None)})


# --- Usage ---------------------------------------------------------------------------------------


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
        return _midnight(self.first)

    @property
    def end(self) -> datetime:
        """Exclusive: the midnight after ``last``."""
        return _midnight(self.last + timedelta(days=1))

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
        today = _today()
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
        self.fields["from"] = _date_field("From (UTC)")
        self.fields["to"] = _date_field("To (UTC, included)")
        self.order_fields(["from", "to", "granularity", "group_by", "metric"])

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        first, last = data.get("from"), data.get("to")
        _check_dates(self, first, last)
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
    today = _today()
    live = query.first <= today <= query.last
    month_spend = None
    if live:
        month_start = _midnight(today.replace(day=1))
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
        "page_query": _query_string(query.params()),
        "csv_url": f"{csv_url}?{_query_string(query.api_params())}",
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


# --- Requests ------------------------------------------------------------------------------------


def _parse_cursor(value: str) -> usage.Cursor | None:
    """``<started_at ISO 8601>,<request id>`` (what ``_cursor_param`` writes), else ``None``."""
    moment, comma, request_id = value.partition(",")
    if not comma or not request_id:
        return None
    try:
        at = datetime.fromisoformat(moment)
    except ValueError:
        return None
    if at.tzinfo is None:
        return None
    return at, request_id


def _cursor_param(cursor: usage.Cursor) -> str:
    return f"{cursor[0].isoformat()},{cursor[1]}"


class RequestFilterForm(forms.Form):
    key = forms.ChoiceField(label="API key", required=False, widget=LongSelect)
    model = forms.CharField(
        label="Model",
        required=False,
        max_length=128,
        widget=forms.TextInput(attrs={"list": "request-models", "placeholder": "Any model"}),
    )
    outcome = forms.ChoiceField(label="Status", required=False, choices=OUTCOMES)
    before = forms.CharField(required=False, max_length=200, widget=forms.HiddenInput)
    after = forms.CharField(required=False, max_length=200, widget=forms.HiddenInput)

    def __init__(
        self, data: QueryDict, *, keys: Sequence[Mapping[str, Any]], retention: date
    ) -> None:
        super().__init__(data)
        key = cast(forms.ChoiceField, self.fields["key"])
        key.choices = [("", "Any key")] + [
            (str(row["pk"]), f"{row['name']} (…{row['last_four']})") for row in keys
        ]
        help_text = f"Requests are kept from {retention} (UTC)."
        self.fields["from"] = _date_field("From (UTC)", required=False, help_text=help_text)
        self.fields["to"] = _date_field("To (UTC, included)", required=False)
        self.order_fields(["key", "model", "outcome", "from", "to"])

    def clean_before(self) -> usage.Cursor | None:
        return self._cursor("before")

    def clean_after(self) -> usage.Cursor | None:
        return self._cursor("after")

    def _cursor(self, name: str) -> usage.Cursor | None:
        value = self.cleaned_data.get(name) or ""
        if not value:
            return None
        cursor = _parse_cursor(value)
        if cursor is None:
            raise forms.ValidationError("This page link is not valid: start from the newest.")
        return cursor

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        _check_dates(self, data.get("from"), data.get("to"))
        return data

    def filters(self) -> dict[str, Any]:
        """The filters as the page's links repeat them (no cursor)."""
        data = self.cleaned_data
        return {
            "key": data["key"],
            "model": data["model"],
            "outcome": data["outcome"],
            "from": data["from"].isoformat() if data["from"] else "",
            "to": data["to"].isoformat() if data["to"] else "",
        }


def _requests_rows(organization: Organization, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each event with its key (one query for the page's keys; ``None`` for a deleted one)."""
    ids = {row["api_key_id"] for row in rows}
    keys = {
        key.pk: key
        for key in ApiKey.objects.filter(organization=organization, pk__in=ids)
        .only("pk", "name", "prefix", "last_four", "source", "organization_id")
        .order_by()
    }
    for row in rows:
        row["api_key"] = keys.get(row["api_key_id"])
        row["ok"] = row["status"] < 400
        row["playground"] = row["api_key"] is not None and (
            row["api_key"].source == ApiKey.Source.CONSOLE
        )
    return rows


@org_page()
def requests_page(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """Recent requests from the usage events (see the module docstring)."""
    organization = ctx.organization
    keys = list(
        ApiKey.objects.filter(organization=organization)
        .order_by("name", "created_at")
        .values("pk", "name", "last_four")
    )
    retention = usage.retention_start().date()
    form = RequestFilterForm(request.GET, keys=keys, retention=retention)
    partial = bool(getattr(request, "htmx", False))
    context: dict[str, Any] = {
        "section": "requests",
        "form": form,
        "retention_days": (_today() - retention).days,
    }
    if not partial:  # the model filter's suggestions
        context["models"] = [row.name for row in available_models_for_organization(organization)]
    template = "console/usage/_requests_results.html" if partial else "console/usage/requests.html"
    if not form.is_valid():
        return render(request, template, context, status=_invalid_status(request))
    data = form.cleaned_data
    page = usage.recent_requests(
        organization=organization,
        start=_midnight(data["from"]) if data["from"] else None,
        end=_midnight(data["to"] + timedelta(days=1)) if data["to"] else None,
        api_key_id=data["key"] or None,
        model=data["model"],
        outcome=data["outcome"],
        before=data["before"],
        after=data["after"],
        limit=PAGE_SIZE,
    )
    filters = form.filters()
    query = _query_string(filters)
    context |= {
        "rows": _requests_rows(organization, page.rows),
        "filtered": any(filters.values()),
        "query": query,
        "paged": bool(data["before"] or data["after"]),
        "older_query": _query_string(filters | {"before": _cursor_param(page.older)})
        if page.older
        else None,
        "newer_query": _query_string(filters | {"after": _cursor_param(page.newer)})
        if page.newer
        else None,
    }
    return render(request, template, context)


# --- Audit log -----------------------------------------------------------------------------------


class AuditFilterForm(forms.Form):
    action = forms.ChoiceField(
        label="Action", required=False, choices=[("", "Any action")] + [(a, a) for a in ACTIONS]
    )
    actor = forms.CharField(
        label="Actor",
        required=False,
        max_length=150,
        widget=forms.TextInput(attrs={"list": "audit-actors", "placeholder": "Any username"}),
    )

    def __init__(self, data: QueryDict) -> None:
        super().__init__(data)
        self.fields["from"] = _date_field("From (UTC)", required=False)
        self.fields["to"] = _date_field("To (UTC, included)", required=False)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        _check_dates(self, data.get("from"), data.get("to"))
        return data

    def api_params(self) -> dict[str, str]:
        """The same filters as the audit API's query (``to`` exclusive there)."""
        data = self.cleaned_data
        return {
            "action": data["action"],
            "actor": data["actor"],
            "from": data["from"].isoformat() if data["from"] else "",
            "to": (data["to"] + timedelta(days=1)).isoformat() if data["to"] else "",
        }

    def params(self) -> dict[str, str]:
        data = self.cleaned_data
        return {
            "action": data["action"],
            "actor": data["actor"],
            "from": data["from"].isoformat() if data["from"] else "",
            "to": data["to"].isoformat() if data["to"] else "",
        }


# A value longer than this is cut in the change summary (the CSV export has it whole).
_SUMMARY_CHARS = 80
# Fields of a record's before/after that hold a user's id: shown as the username.
_USER_FIELDS = frozenset({"user", "created_by", "invited_by", "accepted_by"})
TARGET_TYPES = {
    "apikey": "API key",
    "organization": "Organisation",
    "membership": "Membership",
    "invitation": "Invitation",
}


def _short(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        text = ", ".join(str(item) for item in value) or "none"
    else:
        text = str(value)
        if isinstance(value, str) and len(value) > 18 and value[10:11] == "T":
            try:  # a date-time, as the audit log stores them (ISO 8601)
                moment = datetime.fromisoformat(value)
            except ValueError:
                pass
            else:
                utc = moment.astimezone(UTC) if moment.tzinfo else moment
                text = utc.strftime("%Y-%m-%d %H:%M:%S")
    return text if len(text) <= _SUMMARY_CHARS else text[: _SUMMARY_CHARS - 1] + "…"


def _shown(name: str, value: Any, users: Mapping[str, str]) -> str:
    if name in _USER_FIELDS and value is not None:
        return users.get(str(value), f"user {value}")
    return _short(value)


def change_summary(
    before: Any, after: Any, users: Mapping[str, str] | None = None
) -> list[dict[str, str]]:
    """What changed, field by field: ``{"field", "before", "after"}`` for each field that differs;
    for a created target its fields that are set (no before), for a removed one its fields (no
    after). ``users``: usernames by id, for the fields that name a user."""
    users = users or {}
    old = before if isinstance(before, dict) else {}
    new = after if isinstance(after, dict) else {}
    changes = []
    for name in list(dict.fromkeys([*old, *new])):
        if before is not None and after is not None and old.get(name) == new.get(name):
            continue
        if before is None and new.get(name) in (None, "", []):
            continue  # created: what is set is what matters
        changes.append(
            {
                "field": name,
                "before": _shown(name, old.get(name), users) if before is not None else "",
                "after": _shown(name, new.get(name), users) if after is not None else "",
            }
        )
    return changes


def _target_name(event: Any, users: Mapping[str, str]) -> str:
    """What a person calls the target: its name, e-mail or member, from the record itself."""
    for state in (event.after, event.before):
        if isinstance(state, dict):
            for field in ("name", "email"):
                if state.get(field):
                    return str(state[field])
            if state.get("user") is not None:
                return users.get(str(state["user"]), "")
    return ""


def _usernames(events: Iterable[Any]) -> dict[str, str]:
    """Usernames of the users the records' before/after name (one query for the page)."""
    from django.contrib.auth import get_user_model

    ids = {
        str(state[field])
        for event in events
        for state in (event.before, event.after)
        if isinstance(state, dict)
        for field in _USER_FIELDS
        if state.get(field) is not None
    }
    found = get_user_model().objects.filter(pk__in=[i for i in ids if i.isdigit()])
    return {str(pk): name for pk, name in found.values_list("pk", "username")} if ids else {}


@org_page(read=MANAGE)
def audit_page(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """The organisation's audit log (see the module docstring)."""
    organization = ctx.organization
    form = AuditFilterForm(request.GET)
    partial = bool(getattr(request, "htmx", False))
    context: dict[str, Any] = {"section": "audit", "form": form}
    if not partial:  # the actor filter's suggestions
        context["actors"] = tenants.audit_actors(organization)
    template = "console/usage/_audit_results.html" if partial else "console/usage/audit.html"
    export = reverse("audit-csv", kwargs={"org_slug": organization.slug})
    if not form.is_valid():
        context["export_url"] = export
        return render(request, template, context, status=_invalid_status(request))
    data = form.cleaned_data
    events = tenants.audit_events(
        organization,
        action=data["action"],
        actor=data["actor"],
        start=_midnight(data["from"]) if data["from"] else None,
        end=_midnight(data["to"] + timedelta(days=1)) if data["to"] else None,
    ).only(
        "id",
        "created_at",
        "actor_username",
        "api_key_id",
        "action",
        "target_type",
        "target_id",
        "before",
        "after",
    )
    page = Paginator(events, PAGE_SIZE).get_page(request.GET.get("page"))
    events_on_page = list(page.object_list)
    users = _usernames(events_on_page)
    rows = [
        {
            "event": event,
            "type": TARGET_TYPES.get(event.target_type, event.target_type),
            "name": _target_name(event, users),
            "changes": change_summary(event.before, event.after, users),
        }
        for event in events_on_page
    ]
    api_query = _query_string(form.api_params())
    context |= {
        "page": page,
        "rows": rows,
        "filtered": any(form.params().values()),
        "query": _query_string(form.params()),
        "export_url": f"{export}?{api_query}" if api_query else export,
    }
    return render(request, template, context)


urlpatterns = [
    path("usage/", usage_page, name="org-usage"),
    path("requests/", requests_page, name="org-requests"),
    path("audit/", audit_page, name="org-audit"),
]
