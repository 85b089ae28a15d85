"""API keys: the list, create (the secret revealed once), edit, rotate and revoke.

Every write goes through the same service as the management API (``tenants.services.api_key_*``),
which checks the rules again (members manage only the keys they created, scopes limited by role,
limits that only tighten the organisation's), writes the audit record and publishes the change to
the gateway's access snapshot. The pages only hide what the service would refuse
(``tenants.selectors.api_key_manageable``).

A secret is shown once, as the response to the POST that made it (create or rotate): never in a
redirect, the URL, the session or a message, and the response is marked ``no-store``. A reload of
the create form's response is recognised by the form's one-time token and creates nothing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers

from console.scoping import OrgContext, org_page
from tenants import selectors, services
from tenants.catalog import available_models_for_organization
from tenants.models import ApiKey, Limits, Organization, Scope
from tenants.roles import USE, scopes_allowed_for

PAGE_SIZE = 50
# How many create-form tokens a session remembers (to recognise a resubmitted form).
_USED_TOKENS_KEPT = 50
_USED_TOKENS_SESSION_KEY = "console.keys.used_form_tokens"

# The key limits as the forms label them, and as the list shows a value (short).
LIMIT_LABELS = {
    "requests_per_minute": "Requests per minute",
    "tokens_per_minute": "Tokens per minute",
    "max_concurrent_requests": "Concurrent requests",
    "monthly_token_budget": "Monthly token budget",
    "monthly_spend_budget": "Monthly spend budget (USD)",
}
_LIMIT_SHORT = {
    "requests_per_minute": "{:,} req/min",
    "tokens_per_minute": "{:,} tok/min",
    "max_concurrent_requests": "{:,} concurrent",
    "monthly_token_budget": "{:,} tok/month",
    "monthly_spend_budget": "${:,.2f}/month",
}
# The model fields' largest values (PositiveIntegerField, PositiveBigIntegerField).
_INT_MAX = {
    "requests_per_minute": 2**31 - 1,
    "tokens_per_minute": 2**63 - 1,
    "max_concurrent_requests": 2**31 - 1,
    "monthly_token_budget": 2**63 - 1,
}

GRACE_CHOICES = [
    (0, "None: the old key stops working now"),
    (300, "5 minutes"),
    (3600, "1 hour"),
    (24 * 3600, "1 day"),
    (7 * 24 * 3600, "7 days"),
]

STATUS_FILTERS = [("", "Any status")] + [
    (value, value.capitalize()) for value in selectors.API_KEY_STATUS_FILTERS
]


# --- forms -------------------------------------------------------------------------------------


def _limit_field(name: str, organization: Organization) -> forms.Field:
    ceiling = getattr(organization, name)
    help_text = (
        f"At most {ceiling}, the organisation's limit."
        if ceiling is not None
        else "The organisation has no limit here."
    )
    attrs = {"min": "0"}
    if name == "monthly_spend_budget":
        return forms.DecimalField(
            label=LIMIT_LABELS[name],
            required=False,
            min_value=Decimal(0),
            max_digits=14,
            decimal_places=4,
            help_text=help_text,
            widget=forms.NumberInput(attrs=attrs | {"step": "0.01"}),
        )
    return forms.IntegerField(
        label=LIMIT_LABELS[name],
        required=False,
        min_value=0,
        max_value=_INT_MAX[name],
        help_text=help_text,
        widget=forms.NumberInput(attrs=attrs),
    )


class _Form(forms.Form):
    """Labels without Django's trailing colon."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


class KeySettingsForm(_Form):
    """What can change on a key: its name, allowed models, limits and expiry (as the API's
    ``PATCH``; scopes are fixed when the key is made)."""

    name = forms.CharField(label="Name", max_length=200)
    allowed_models = forms.MultipleChoiceField(
        label="Allowed models",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every model the organisation may use, now and later.",
    )
    expires_at = forms.DateTimeField(
        label="Expires (UTC)",
        required=False,
        help_text="Empty: never.",
        widget=forms.DateTimeInput(
            attrs={"type": "datetime-local", "step": "1"}, format="%Y-%m-%dT%H:%M:%S"
        ),
    )

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        current: list[str] = kwargs.pop("current_models", [])
        super().__init__(*args, **kwargs)
        offered = available_models_for_organization(organization)
        choices = [
            (row.name, row.name if row.target is None else f"{row.name} (→ {row.target})")
            for row in offered
        ]
        names = {row.name for row in offered}
        # A model the key names that the organisation may no longer use is shown, so it can be
        # unticked (the service refuses to save a key that names one).
        choices += [
            (name, f"{name} (no longer available)") for name in current if name not in names
        ]
        allowed = self.fields["allowed_models"]
        assert isinstance(allowed, forms.MultipleChoiceField)
        allowed.choices = choices
        for name in Limits.LIMIT_FIELDS:
            self.fields[name] = _limit_field(name, organization)
        self.order_fields(["name", "scopes", "allowed_models", *Limits.LIMIT_FIELDS, "expires_at"])

    def limit_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in Limits.LIMIT_FIELDS]


class KeyCreateForm(KeySettingsForm):
    scopes = forms.MultipleChoiceField(
        label="Scopes", widget=forms.CheckboxSelectMultiple, initial=[Scope.INFERENCE.value]
    )
    # One per form shown: a second POST with the same token (a reload) creates nothing.
    form_token = forms.CharField(widget=forms.HiddenInput)

    def __init__(self, *args: Any, role: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        allowed = scopes_allowed_for(role)
        scopes = self.fields["scopes"]
        assert isinstance(scopes, forms.MultipleChoiceField)
        scopes.choices = [(value, label) for value, label in Scope.choices if value in allowed]
        if not self.is_bound:
            self.initial.setdefault("form_token", secrets.token_urlsafe(16))


class RotateForm(_Form):
    grace_seconds = forms.TypedChoiceField(
        label="Grace period",
        choices=GRACE_CHOICES,
        coerce=int,
        initial=0,
        help_text="How long the old key keeps working beside the new one, so clients can switch.",
    )


class KeyFilterForm(_Form):
    q = forms.CharField(
        label="Search",
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "Name or vlk_ prefix"}),
    )
    status = forms.ChoiceField(label="Status", required=False, choices=STATUS_FILTERS)
    mine = forms.ChoiceField(
        label="Created by",
        required=False,
        choices=[("", "Anyone"), ("1", "Me")],
    )


def _show_service_errors(form: forms.Form, error: ValidationError) -> None:
    """Put a service's ``ValidationError`` next to the fields it names (the rest on top)."""
    if not hasattr(error, "error_dict"):
        form.add_error(None, error)
        return
    for field, field_errors in error.error_dict.items():
        form.add_error(field if field in form.fields else None, field_errors)


# --- the list ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyRow:
    """One key as the list shows it."""

    key: ApiKey
    status: str  # active, rotating, expired, revoked
    limits: list[str]
    can_manage: bool  # the signed-in person may change, rotate or revoke it (the service's rule)
    # The playground's own credential of a member (``tenants.console_credentials``): the console
    # renews it; the services refuse to change or rotate it, revoking it is allowed.
    playground: bool = False

    # Which controls to offer; the service refuses the rest anyway: a revoked or rotated-out key
    # cannot change, only an active key that was not rotated can be rotated. An expired key can
    # be edited (a new expiry brings it back).
    @property
    def editable(self) -> bool:
        return self.can_manage and not self.playground and self.status in ("active", "expired")

    @property
    def rotatable(self) -> bool:
        return self.can_manage and not self.playground and self.status == "active"

    @property
    def revocable(self) -> bool:
        return self.can_manage and self.status != "revoked"


def key_status(key: ApiKey, now: datetime) -> str:
    status = key.status_at(now)
    if status == ApiKey.Status.ACTIVE and key.replaced_by_id is not None:
        return "rotating"
    return str(status)


def _limits_shown(key: ApiKey) -> list[str]:
    return [
        _LIMIT_SHORT[name].format(getattr(key, name))
        for name in Limits.LIMIT_FIELDS
        if getattr(key, name) is not None
    ]


def _row(key: ApiKey, ctx: OrgContext, now: datetime) -> KeyRow:
    return KeyRow(
        key=key,
        status=key_status(key, now),
        limits=_limits_shown(key),
        can_manage=ctx.can_use
        and selectors.api_key_manageable(key, actor_role=ctx.role, actor=ctx.user),
        playground=getattr(key, "source", "api") == "console",
    )


@org_page()
def key_list(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """Every key of the organisation (the API lists them all to every member too), newest
    first, searchable and paginated; controls only on the keys the person may manage."""
    filters = KeyFilterForm(request.GET)
    filters.is_valid()  # a bad value drops that filter alone: cleaned_data keeps the good ones
    wanted = filters.cleaned_data
    keys = selectors.api_keys_for_organization(
        ctx.organization,
        search=wanted.get("q", ""),
        status=wanted.get("status", ""),
        created_by=ctx.user if wanted.get("mine") else None,
    )
    page = Paginator(keys, PAGE_SIZE).get_page(request.GET.get("page"))
    now = timezone.now()
    query = {name: value for name, value in wanted.items() if value}
    context = {
        "section": "keys",
        "filters": filters,
        "page": page,
        "rows": [_row(key, ctx, now) for key in page.object_list],
        "query": urlencode(query),
        "filtered": bool(query),
    }
    htmx = getattr(request, "htmx", None)
    if htmx and htmx.target == "keys-results" and not htmx.history_restore_request:
        return render(request, "console/keys/_results.html", context)
    return render(request, "console/keys/list.html", context)


# --- create, and the secret revealed once ------------------------------------------------------


def _snippet_model(key: ApiKey, organization: Organization) -> str:
    if key.allowed_models:
        return str(key.allowed_models[0])
    names = [row.name for row in available_models_for_organization(organization)]
    return names[0] if names else "MODEL"


def _reveal(
    request: HttpRequest,
    ctx: OrgContext,
    key: ApiKey,
    secret: str,
    *,
    rotated: ApiKey | None = None,
) -> HttpResponse:
    """The one page that ever shows ``secret``: the POST's own response, never stored."""
    context = {
        "section": "keys",
        "key": key,
        "secret": secret,
        "rotated": rotated,
        "base_url": settings.VLINDERS_GATEWAY_PUBLIC_URL,
        "model": _snippet_model(key, ctx.organization),
    }
    response = render(request, "console/keys/reveal.html", context, status=201)
    add_never_cache_headers(response)
    return response


def _token_used(request: HttpRequest, token: str) -> bool:
    return token in request.session.get(_USED_TOKENS_SESSION_KEY, [])


def _remember_token(request: HttpRequest, token: str) -> None:
    used = [*request.session.get(_USED_TOKENS_SESSION_KEY, []), token]
    request.session[_USED_TOKENS_SESSION_KEY] = used[-_USED_TOKENS_KEPT:]


@org_page(read=USE, write=USE)
def key_create(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """The form (members and up; scopes as the role may grant), then the secret, once."""
    form = KeyCreateForm(
        request.POST if request.method == "POST" else None,
        organization=ctx.organization,
        role=ctx.role,
    )
    status = 200
    if request.method == "POST":
        if _token_used(request, request.POST.get("form_token", "")):
            return render(request, "console/keys/resubmitted.html", {"section": "keys"}, status=409)
        if form.is_valid():
            data = form.cleaned_data
            try:
                key, secret = services.api_key_create(
                    organization=ctx.organization,
                    name=data["name"],
                    created_by=ctx.user,
                    actor_role=ctx.role,
                    scopes=data["scopes"],
                    allowed_models=data["allowed_models"],
                    expires_at=data["expires_at"],
                    **{name: data[name] for name in Limits.LIMIT_FIELDS},
                )
            except ValidationError as error:
                _show_service_errors(form, error)
            except PermissionDenied as error:
                form.add_error(None, str(error))
                status = 403
            else:
                _remember_token(request, data["form_token"])
                return _reveal(request, ctx, key, secret)
        status = status if status != 200 else 400
    return render(
        request,
        "console/keys/form.html",
        {"section": "keys", "form": form, "creating": True},
        status=status,
    )


# --- one key: edit, rotate, revoke -------------------------------------------------------------


def _manageable_key(ctx: OrgContext, key_id: UUID) -> ApiKey:
    """The organisation's key ``key_id`` (404 for anyone else's), if the person may manage it
    (403 otherwise: the service's own rule, as the API answers)."""
    key = get_object_or_404(
        ApiKey.objects.select_related("created_by"), organization=ctx.organization, pk=key_id
    )
    if not selectors.api_key_manageable(key, actor_role=ctx.role, actor=ctx.user):
        raise PermissionDenied("Members manage only the keys they created.")
    return key


def _settings_initial(key: ApiKey) -> dict[str, Any]:
    initial: dict[str, Any] = {
        "name": key.name,
        "allowed_models": list(key.allowed_models),
        "expires_at": key.expires_at,
    }
    return initial | {name: getattr(key, name) for name in Limits.LIMIT_FIELDS}


@org_page(read=USE, write=USE)
def key_edit(request: HttpRequest, ctx: OrgContext, key_id: UUID) -> HttpResponse:
    """Change the name, allowed models, limits or expiry; only what the form changed is sent to
    the service (so its audit record and a concurrent change are both respected)."""
    key = _manageable_key(ctx, key_id)
    form = KeySettingsForm(
        request.POST if request.method == "POST" else None,
        organization=ctx.organization,
        current_models=list(key.allowed_models),
        initial=_settings_initial(key),
    )
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            changes = {name: form.cleaned_data[name] for name in form.changed_data}
            if not changes:
                messages.info(request, f"Nothing changed on “{key.name}”.")
                return redirect("console:org-keys", ctx.organization.slug)
            try:
                key = services.api_key_update(
                    api_key=key, actor_role=ctx.role, actor=ctx.user, **changes
                )
            except ValidationError as error:
                _show_service_errors(form, error)
            else:
                messages.success(request, f"Saved “{key.name}”.")
                return redirect("console:org-keys", ctx.organization.slug)
    return render(
        request,
        "console/keys/form.html",
        {"section": "keys", "form": form, "creating": False, "key": key},
        status=status,
    )


@org_page(read=USE, write=USE)
def key_rotate(request: HttpRequest, ctx: OrgContext, key_id: UUID) -> HttpResponse:
    """Issue a new secret with the same settings (revealed once); the old key stops now or at
    the end of the grace period."""
    key = _manageable_key(ctx, key_id)
    form = RotateForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                new_key, secret = services.api_key_rotate(
                    api_key=key,
                    actor_role=ctx.role,
                    actor=ctx.user,
                    grace=timedelta(seconds=form.cleaned_data["grace_seconds"]),
                )
            except ValidationError as error:
                _show_service_errors(form, error)
            else:
                key.refresh_from_db()
                return _reveal(request, ctx, new_key, secret, rotated=key)
    return render(
        request,
        "console/keys/rotate.html",
        {"section": "keys", "form": form, "key": key},
        status=status,
    )


@org_page(read=USE, write=USE)
def key_revoke(request: HttpRequest, ctx: OrgContext, key_id: UUID) -> HttpResponse:
    """Ask, then revoke: a POST without ``confirm=yes`` (a browser without JavaScript, whose
    list button could not ask) shows the question instead of revoking."""
    key = _manageable_key(ctx, key_id)
    if request.method == "POST" and request.POST.get("confirm") == "yes":
        services.api_key_revoke(api_key=key, actor_role=ctx.role, actor=ctx.user)
        messages.success(
            request, f"Revoked “{key.name}” ({key.display}): the gateway refuses it from now on."
        )
        return redirect(_list_url(request, ctx))
    return render(request, "console/keys/revoke.html", {"section": "keys", "key": key})


def _list_url(request: HttpRequest, ctx: OrgContext) -> str:
    """Back to the list, keeping its filters and page when the form came from one."""
    url = reverse("console:org-keys", args=[ctx.organization.slug])
    back = request.POST.get("next", "")
    return back if back.startswith(url) else url


urlpatterns = [
    path("keys/", key_list, name="org-keys"),
    path("keys/new/", key_create, name="org-key-create"),
    path("keys/<uuid:key_id>/edit/", key_edit, name="org-key-edit"),
    path("keys/<uuid:key_id>/rotate/", key_rotate, name="org-key-rotate"),
    path("keys/<uuid:key_id>/revoke/", key_revoke, name="org-key-revoke"),
]
