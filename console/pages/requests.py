"""The Requests page (any member): the organisation's usage events within their retention
period, newest first, filtered by key, model, outcome and dates.

Contract:

* Rows come from ``billing.selectors.recent_requests``, turned page by page on a keyset of
  ``(started_at, request id)`` (never an ``OFFSET``), ``PAGE_SIZE`` rows a page, older and newer
  links both ways; a cursor that cannot be read is the form's error, not a 500.
* An event holds no prompt and no output; the page shows ``REQUEST_FIELDS`` only, each with its
  key (one query for the page's keys; a deleted key shows as such) and whether it came from the
  playground's console credential.
* Bad filters: the form's errors with 400 (200 for htmx, which swaps in the results' partial).
* ``GET requests/`` (``org-requests``) is the module's only route.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any, cast

from django import forms
from django.forms.utils import flatatt
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.urls import path
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from billing import selectors as usage
from console.pages.filters import (
    PAGE_SIZE,
    DatedFilterForm,
    invalid_status,
    query_string,
    utc_today,
)
from console.scoping import OrgContext, org_page
from tenants.catalog import model_names_for_organization
from tenants.models import ApiKey, Organization

OUTCOMES = [("", "Any"), ("ok", "Succeeded"), ("error", "Failed")]


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


class RequestFilterForm(DatedFilterForm):
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
        super().__init__(data, from_help=f"Requests are kept from {retention} (UTC).")
        key = cast(forms.ChoiceField, self.fields["key"])
        key.choices = [("", "Any key")] + [
            (str(row["pk"]), f"{row['name']} (…{row['last_four']})") for row in keys
        ]
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

    def filters(self) -> dict[str, Any]:
        """The filters as the page's links repeat them (no cursor)."""
        data = self.cleaned_data
        return {
            "key": data["key"],
            "model": data["model"],
            "outcome": data["outcome"],
            **self.date_params(),
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
        "retention_days": (utc_today() - retention).days,
    }
    if not partial:  # the model filter's suggestions
        context["models"] = model_names_for_organization(organization)
    template = "console/usage/_requests_results.html" if partial else "console/usage/requests.html"
    if not form.is_valid():
        return render(request, template, context, status=invalid_status(request))
    data = form.cleaned_data
    start, end = form.span()
    page = usage.recent_requests(
        organization=organization,
        start=start,
        end=end,
        api_key_id=data["key"] or None,
        model=data["model"],
        outcome=data["outcome"],
        before=data["before"],
        after=data["after"],
        limit=PAGE_SIZE,
    )
    filters = form.filters()
    query = query_string(filters)
    context |= {
        "rows": _requests_rows(organization, page.rows),
        "filtered": any(filters.values()),
        "query": query,
        "paged": bool(data["before"] or data["after"]),
        "older_query": query_string(filters | {"before": _cursor_param(page.older)})
        if page.older
        else None,
        "newer_query": query_string(filters | {"after": _cursor_param(page.newer)})
        if page.newer
        else None,
    }
    return render(request, template, context)


urlpatterns = [
    path("requests/", requests_page, name="org-requests"),
]
