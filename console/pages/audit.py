"""The Audit log page (admins and owners): the records the services wrote, who changed what and
when, filtered by action, actor and dates.

Contract:

* Records come from ``tenants.selectors.audit_events``, ``PAGE_SIZE`` a page, newest first;
  members below admin get 403 (``read=MANAGE``).
* Each record is shown with its target's type and name and what changed field by field
  (``change_summary``): values cut to ``_SUMMARY_CHARS``, date-times in UTC, user ids as
  usernames (one query for the page). The page writes nothing.
* The export is the API's ``audit.csv`` with the same filters (it takes the console's session).
* Bad filters: the form's errors with 400 (200 for htmx, which swaps in the results' partial).
* ``GET audit/`` (``org-audit``) is the module's only route.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path, reverse

from console.pages.filters import PAGE_SIZE, DatedFilterForm, invalid_status, query_string
from console.scoping import OrgContext, org_page
from tenants import selectors as tenants
from tenants.audit import ACTIONS
from tenants.roles import MANAGE


class AuditFilterForm(DatedFilterForm):
    action = forms.ChoiceField(
        label="Action", required=False, choices=[("", "Any action")] + [(a, a) for a in ACTIONS]
    )
    actor = forms.CharField(
        label="Actor",
        required=False,
        max_length=150,
        widget=forms.TextInput(attrs={"list": "audit-actors", "placeholder": "Any username"}),
    )

    def params(self) -> dict[str, str]:
        """The filters as the page's links repeat them."""
        data = self.cleaned_data
        return {"action": data["action"], "actor": data["actor"], **self.date_params()}

    def api_params(self) -> dict[str, str]:
        """The same filters as the audit API's query (``to`` exclusive there)."""
        last = self.cleaned_data["to"]
        return self.params() | {"to": (last + timedelta(days=1)).isoformat() if last else ""}


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


def target_name(event: Any, users: Mapping[str, str]) -> str:
    """What a person calls the target: its name, e-mail or member, from the record itself."""
    for state in (event.after, event.before):
        if isinstance(state, dict):
            for field in ("name", "email"):
                if state.get(field):
                    return str(state[field])
            if state.get("user") is not None:
                return users.get(str(state["user"]), "")
    return ""


def usernames_of(events: Iterable[Any]) -> dict[str, str]:
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
        return render(request, template, context, status=invalid_status(request))
    data = form.cleaned_data
    start, end = form.span()
    events = tenants.audit_events(
        organization,
        action=data["action"],
        actor=data["actor"],
        start=start,
        end=end,
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
    users = usernames_of(events_on_page)
    rows = [
        {
            "event": event,
            "type": TARGET_TYPES.get(event.target_type, event.target_type),
            "name": target_name(event, users),
            "changes": change_summary(event.before, event.after, users),
        }
        for event in events_on_page
    ]
    api_query = query_string(form.api_params())
    context |= {
        "page": page,
        "rows": rows,
        "filtered": any(form.params().values()),
        "query": query_string(form.params()),
        "export_url": f"{export}?{api_query}" if api_query else export,
    }
    return render(request, template, context)


urlpatterns = [
    path("audit/", audit_page, name="org-audit"),
]
