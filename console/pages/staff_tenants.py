"""Operator console: Tenants (docs/operator-console.md, "Tenants").

* ``/staff/tenants/`` (``staff-tenants``): every organisation with its status, plan, billing
  mode and month-to-date requests, tokens and spend; searched by name or slug, sorted by name,
  creation date or a usage column (either direction), ``PAGE_SIZE`` a page. The figures come
  from the hourly rollups in the same statement as the page (``billing.tenant_usage``): the
  number of queries does not grow with the number of organisations, and sorting by usage is the
  database's ``ORDER BY``.
* ``/staff/tenants/<slug>/`` (``staff-tenant``): one organisation: limits and monthly budgets
  (edit), plan (change), status (suspend or activate, after a confirmation), members, API keys
  (revoke, after a confirmation), month-to-date usage by model and the latest audit records.

Every write calls the service the management API calls (``tenants.services``), with the signed-in
staff member as the actor and the owner's role (staff act as owners everywhere,
``tenants.selectors.membership_role``), so each is audited and reaches the gateway through the
access snapshot after it commits. A form that fails validation, or that the service refuses, is
shown again with the errors next to its fields and status 400; destructive actions are POSTs
with CSRF that ask first (a POST without ``confirm=yes`` shows the question instead of acting).
Every view is wrapped in ``console.staff.staff_page``: anonymous visitors are sent to sign in,
signed-in users who are not staff get 404.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from uuid import UUID

from django import forms
from django.contrib import messages
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import models
from django.db.backends.base.operations import BaseDatabaseOperations
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from billing import selectors as usage
from billing import spend, tenant_usage
from console.pages.audit import TARGET_TYPES, change_summary, target_name, usernames_of
from console.pages.filters import PAGE_SIZE, invalid_status, query_string
from console.pages.keys import LIMIT_LABELS, key_status
from console.staff import staff_page
from tenants import selectors, services
from tenants.models import ApiKey, AuditEvent, Limits, Organization, Role
from tenants.plans import Plan

# How many audit records and keys the tenant's page shows (the rest: the audit page, more pages).
AUDIT_ROWS = 20
KEYS_PAGE_SIZE = 50
# Staff act as owners in every organisation (``tenants.selectors.membership_role``).
STAFF_ROLE = Role.OWNER

_COLUMNS = (
    ("name", "Organisation", False),
    ("created", "Created (UTC)", False),
    ("requests", "Requests", True),
    ("tokens", "Tokens", True),
    ("spend", "Spend (USD)", True),
)
# ``?sort=`` values: a column, ascending, or ``-`` and the column, descending (empty: by name).
SORT_CHOICES = [
    (f"{sign}{name}", f"{label} ({'descending' if sign else 'ascending'})")
    for name, label, _ in _COLUMNS
    for sign in ("", "-")
]


def money(value: Decimal) -> str:
    """Spend as the tables show it: to 4 decimal places (a budget's precision), half up. The
    exact sum is in the cell's ``data-value``."""
    return f"{value.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP):,f}"


def exact(value: Decimal) -> str:
    return f"{value:f}"


# --- forms -------------------------------------------------------------------------------------
class _Form(forms.Form):
    """Labels without Django's trailing colon."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


class TenantFilterForm(_Form):
    q = forms.CharField(
        label="Search",
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "Name or slug"}),
    )
    sort = forms.ChoiceField(label="Sort by", required=False, choices=SORT_CHOICES)

    def order(self) -> tuple[str, bool]:
        """The sort as ``billing.tenant_usage`` takes it: a column and whether descending."""
        sort = self.cleaned_data.get("sort") or "name"
        return sort.removeprefix("-"), sort.startswith("-")


class LimitsForm(_Form):
    """The organisation's rate limits and monthly budgets, as the model's fields validate them
    (empty: no limit), with the integer ranges Postgres stores whatever the database (SQLite
    would take larger ones). Only the changed fields are sent to the service."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in Limits.LIMIT_FIELDS:
            model_field = Organization._meta.get_field(name)
            assert isinstance(model_field, models.Field)
            kind = model_field.get_internal_type()
            if kind in BaseDatabaseOperations.integer_field_ranges:
                low, high = BaseDatabaseOperations.integer_field_ranges[kind]
                field: forms.Field = forms.IntegerField(min_value=low, max_value=high)
            else:
                formfield = model_field.formfield()
                assert formfield is not None
                field = formfield
            field.label = LIMIT_LABELS[name]
            field.required = False
            field.help_text = "Empty: no limit."
            field.widget.attrs.setdefault("min", "0")
            self.fields[name] = field


class PlanForm(_Form):
    plan = forms.ChoiceField(label="Plan", choices=Plan.choices)


class StatusForm(_Form):
    status = forms.ChoiceField(choices=Organization.Status.choices)


def _show_service_errors(form: forms.Form, error: ValidationError) -> None:
    """Put a service's ``ValidationError`` next to the fields it names (the rest on top)."""
    if not hasattr(error, "error_dict"):
        form.add_error(None, error)
        return
    for field, field_errors in error.error_dict.items():
        form.add_error(field if field in form.fields else None, field_errors)


def _staff(request: HttpRequest) -> User:
    """The signed-in staff member (``staff_page`` let only them in): the writes' actor."""
    user = request.user
    assert isinstance(user, User)
    return user


# --- the list ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Header:
    """A column header of the list: its link sorts by it (the other way if it already does)."""

    label: str
    numeric: bool
    url: str
    sorted: str  # "ascending", "descending" or ""


def _headers(query: Mapping[str, str], sort: str, descending: bool) -> list[Header]:
    headers = []
    for name, label, numeric in _COLUMNS:
        if name == sort:
            key = name if descending else f"-{name}"
            state = "descending" if descending else "ascending"
        else:
            key = f"-{name}" if name in tenant_usage.USAGE_SORTS else name
            state = ""
        params = dict(query) | {"sort": key}
        headers.append(Header(label, numeric, f"?{query_string(params)}", state))
    return headers


@staff_page
def tenants_page(request: HttpRequest) -> HttpResponse:
    """Every organisation with its month-to-date figures (see the module docstring)."""
    form = TenantFilterForm(request.GET)
    htmx = getattr(request, "htmx", None)
    partial = bool(htmx and htmx.target == "tenants-results" and not htmx.history_restore_request)
    template = "console/staff/tenants_results.html" if partial else "console/staff/tenants.html"
    month = spend.current_month()
    context: dict[str, Any] = {"section": "tenants", "filters": form, "month": month}
    if not form.is_valid():
        return render(request, template, context, status=invalid_status(request))
    sort, descending = form.order()
    search = form.cleaned_data["q"]
    rows = tenant_usage.TenantList(search=search, sort=sort, descending=descending, month=month)
    page = Paginator(rows, PAGE_SIZE).get_page(request.GET.get("page"))
    query = {"q": search, "sort": form.cleaned_data["sort"]}
    context |= {
        "page": page,
        "rows": [
            {
                "row": row,
                "org": row.organization,
                "spend": money(row.spend),
                "spend_exact": exact(row.spend),
            }
            for row in page.object_list
        ],
        "headers": _headers(query, sort, descending),
        "query": query_string(query),
        "filtered": bool(search),
    }
    return render(request, template, context)


# --- one tenant --------------------------------------------------------------------------------
def _organization(slug: str) -> Organization:
    return get_object_or_404(Organization, slug=slug)


def _audit_rows(organization: Organization) -> list[dict[str, Any]]:
    """The latest records, shown as the audit page shows them (user ids as usernames)."""
    events: list[AuditEvent] = list(selectors.audit_events(organization)[:AUDIT_ROWS])
    users = usernames_of(events)
    return [
        {
            "event": event,
            "type": TARGET_TYPES.get(event.target_type, event.target_type),
            "name": target_name(event, users),
            "changes": change_summary(event.before, event.after, users),
        }
        for event in events
    ]


def _limits_initial(organization: Organization) -> dict[str, Any]:
    return {name: getattr(organization, name) for name in Limits.LIMIT_FIELDS}


def _tenant(
    request: HttpRequest,
    organization: Organization,
    *,
    limits_form: LimitsForm | None = None,
    plan_form: PlanForm | None = None,
    status: int = 200,
) -> HttpResponse:
    """The tenant's page; a form given is shown as it was posted (with its errors)."""
    month = spend.current_month()
    start, end = spend.month_range(month)
    now = timezone.now()
    keys = Paginator(selectors.api_keys_for_organization(organization, now=now), KEYS_PAGE_SIZE)
    keys_page = keys.get_page(request.GET.get("keys_page"))
    by_model = usage.usage_by_group(
        organization=organization, start=start, end=end, group="model", rank_by="cost"
    )
    totals = usage.usage_totals(organization=organization, start=start, end=end)
    context = {
        "section": "tenants",
        "organization": organization,
        "month": month,
        "limits_form": limits_form or LimitsForm(initial=_limits_initial(organization)),
        "plan_form": plan_form or PlanForm(initial={"plan": organization.plan}),
        "budgets": usage.month_budgets(organization, month=month),
        "limits": [
            (LIMIT_LABELS[name], getattr(organization, name)) for name in Limits.LIMIT_FIELDS
        ],
        "members": list(selectors.memberships_of(organization)),
        "keys_page": keys_page,
        "keys": [(key, key_status(key, now)) for key in keys_page.object_list],
        "by_model": [
            row | {"spend": money(row["cost"]), "spend_exact": exact(row["cost"])}
            for row in by_model
        ],
        "totals": totals | {"spend": money(totals["cost"]), "spend_exact": exact(totals["cost"])},
        "audit": _audit_rows(organization),
        "audit_url": reverse("console:org-audit", args=[organization.slug]),
    }
    return render(request, "console/staff/tenant.html", context, status=status)


@staff_page
def tenant_page(request: HttpRequest, slug: str) -> HttpResponse:
    return _tenant(request, _organization(slug))


@staff_page
@require_POST
def tenant_limits(request: HttpRequest, slug: str) -> HttpResponse:
    """Set the limits and budgets: the changed fields go to ``organization_set_limits`` (which
    audits what changed and republishes the organisation's snapshot record)."""
    organization = _organization(slug)
    form = LimitsForm(request.POST, initial=_limits_initial(organization))
    if form.is_valid():
        changes = {name: form.cleaned_data[name] for name in form.changed_data}
        if not changes:
            messages.info(request, "Nothing changed.")
            return redirect("console:staff-tenant", organization.slug)
        try:
            services.organization_set_limits(
                organization=organization, actor=_staff(request), **changes
            )
        except ValidationError as error:
            organization.refresh_from_db()
            _show_service_errors(form, error)
        else:
            messages.success(request, f"Saved the limits of {organization.name}.")
            return redirect("console:staff-tenant", organization.slug)
    return _tenant(request, organization, limits_form=form, status=400)


@staff_page
@require_POST
def tenant_plan(request: HttpRequest, slug: str) -> HttpResponse:
    """Change the plan (``organization_set_plan``: audited, its priority reaches the gateway)."""
    organization = _organization(slug)
    form = PlanForm(request.POST)
    if form.is_valid():
        try:
            services.organization_set_plan(
                organization=organization, plan=form.cleaned_data["plan"], actor=_staff(request)
            )
        except ValidationError as error:
            organization.refresh_from_db()
            _show_service_errors(form, error)
        else:
            messages.success(
                request, f"{organization.name} is on the {organization.get_plan_display()} plan."
            )
            return redirect("console:staff-tenant", organization.slug)
    return _tenant(request, organization, plan_form=form, status=400)


@staff_page
def tenant_status(request: HttpRequest, slug: str) -> HttpResponse:
    """Suspend or activate, after a confirmation: a GET, or a POST without ``confirm=yes``,
    shows the question; the confirmed POST calls ``organization_set_status``."""
    organization = _organization(slug)
    form = StatusForm(request.POST if request.method == "POST" else request.GET)
    if not form.is_valid():
        context = {"section": "tenants", "organization": organization, "form": form}
        return render(request, "console/staff/tenant_status.html", context, status=400)
    wanted = form.cleaned_data["status"]
    if request.method == "POST" and request.POST.get("confirm") == "yes":
        services.organization_set_status(
            organization=organization, status=wanted, actor=_staff(request)
        )
        if wanted == Organization.Status.SUSPENDED:
            messages.success(request, f"Suspended {organization.name}: its keys are refused.")
        else:
            messages.success(request, f"Activated {organization.name}: its keys work again.")
        return redirect("console:staff-tenant", organization.slug)
    context = {"section": "tenants", "organization": organization, "form": form, "wanted": wanted}
    return render(request, "console/staff/tenant_status.html", context)


@staff_page
def tenant_key_revoke(request: HttpRequest, slug: str, key_id: UUID) -> HttpResponse:
    """Revoke one of the organisation's keys after a confirmation (``api_key_revoke``: audited,
    and the key's snapshot record says revoked once the transaction commits, so every gateway
    replica refuses it at once)."""
    organization = _organization(slug)
    key = get_object_or_404(
        ApiKey.objects.select_related("created_by", "organization"),
        organization=organization,
        pk=key_id,
    )
    if request.method == "POST" and request.POST.get("confirm") == "yes":
        services.api_key_revoke(api_key=key, actor_role=STAFF_ROLE, actor=_staff(request))
        messages.success(
            request, f"Revoked “{key.name}” ({key.display}): the gateway refuses it from now on."
        )
        return redirect("console:staff-tenant", organization.slug)
    context = {"section": "tenants", "organization": organization, "key": key}
    return render(request, "console/staff/tenant_key_revoke.html", context)


urlpatterns = [
    path("tenants/", tenants_page, name="staff-tenants"),
    path("tenants/<slug:slug>/", tenant_page, name="staff-tenant"),
    path("tenants/<slug:slug>/limits/", tenant_limits, name="staff-tenant-limits"),
    path("tenants/<slug:slug>/plan/", tenant_plan, name="staff-tenant-plan"),
    path("tenants/<slug:slug>/status/", tenant_status, name="staff-tenant-status"),
    path(
        "tenants/<slug:slug>/keys/<uuid:key_id>/revoke/",
        tenant_key_revoke,
        name="staff-tenant-key-revoke",
    ),
]
