"""Django admin for platform staff. Writes that the gateway must see go through the services, so
they publish the access snapshot like any other change; every write is in the audit log with the
staff member as its actor, like a write through the API."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from tenants import services, snapshot
from tenants.audit import audit_record, fields_of
from tenants.models import ApiKey, AuditEvent, Invitation, Membership, Organization, Role


def _staff(request: HttpRequest) -> User:
    """The signed-in staff member (the admin site lets no one else in)."""
    assert isinstance(request.user, User)
    return request.user


class MembershipInline(admin.TabularInline[Membership, Organization]):
    """The organisation's members, read-only here: each links to its own page, where changes go
    through the services (rules, audit log)."""

    model = Membership
    extra = 0
    fields = ["user", "role", "created_at"]
    readonly_fields = ["user", "role", "created_at"]
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin[Organization]):
    list_display = ["slug", "name", "status", "created_at"]
    list_filter = ["status"]
    search_fields = ["slug", "name"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]
    actions = ["suspend", "reactivate"]
    # Switched by the billing app's actions, through its audited service (billing/admin.py).
    readonly_fields = ["billing_mode"]

    def save_model(self, request: HttpRequest, obj: Organization, form: Any, change: bool) -> None:
        """The admin's form writes the row itself; it is audited like the services' writes (the
        admin's change view runs in one transaction, so the record commits with the change)."""
        fields = services.ORGANIZATION_FIELDS
        stored = Organization.objects.filter(pk=obj.pk).first() if change else None
        before = fields_of(stored, fields) if stored is not None else None
        super().save_model(request, obj, form, change)
        after = fields_of(obj, fields)
        if before is None or before != after:
            changed = [f for f in fields if before is None or before[f] != after[f]]
            audit_record(
                organization=obj,
                actor=request.user,
                action="organization.updated" if before is not None else "organization.created",
                target=obj,
                before={f: before[f] for f in changed} if before is not None else None,
                after={f: after[f] for f in changed},
            )
        snapshot.publish_organization_on_commit(obj.id)

    def delete_model(self, request: HttpRequest, obj: Organization) -> None:
        super().delete_model(request, obj)
        snapshot.publish_full_on_commit()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Organization]) -> None:
        super().delete_queryset(request, queryset)
        snapshot.publish_full_on_commit()

    @admin.action(description="Suspend selected organisations (their keys stop working)")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Organization]) -> None:
        for org in queryset:
            services.organization_set_status(
                organization=org, status=Organization.Status.SUSPENDED, actor=_staff(request)
            )
        self.message_user(request, f"Suspended {queryset.count()} organisations.", messages.SUCCESS)

    @admin.action(description="Reactivate selected organisations")
    def reactivate(self, request: HttpRequest, queryset: QuerySet[Organization]) -> None:
        for org in queryset:
            services.organization_set_status(
                organization=org, status=Organization.Status.ACTIVE, actor=_staff(request)
            )
        self.message_user(
            request, f"Reactivated {queryset.count()} organisations.", messages.SUCCESS
        )


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin[ApiKey]):
    """Keys are created by tenants (the secret is shown only to them); staff can see and revoke.

    Only the name is editable here: limits, models and expiry change through the API, whose
    service enforces that a key's limits only tighten its organisation's.
    """

    list_display = ["name", "display", "organization", "status", "created_at", "last_used_at"]
    list_filter = ["organization"]
    search_fields = ["name", "prefix", "organization__slug"]
    readonly_fields = [
        "organization",
        "prefix",
        "last_four",
        "secret_hash",
        "scopes",
        "created_by",
        "created_at",
        "revoked_at",
        "last_used_at",
        "replaced_by",
        "allowed_models",
        "expires_at",
        *ApiKey.LIMIT_FIELDS,
    ]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False  # revoke instead: a revoked key keeps its history

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        """Only the name is editable here (also on revoked keys, for the record); the rename is
        audited like one made through the API."""
        stored = ApiKey.objects.get(pk=obj.pk)
        super().save_model(request, obj, form, change)
        if stored.name != obj.name:
            audit_record(
                organization=obj.organization,
                actor=request.user,
                action="api_key.updated",
                target=obj,
                before={"name": stored.name},
                after={"name": obj.name},
            )
        snapshot.publish_key_on_commit(obj.id)

    @admin.action(description="Revoke selected keys now")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in queryset:
            services.api_key_revoke(api_key=api_key, actor_role=Role.OWNER, actor=request.user)
        self.message_user(request, f"Revoked {queryset.count()} keys.", messages.SUCCESS)


class MembershipForm(forms.ModelForm[Membership]):
    def clean(self) -> dict[str, Any]:
        """The services' owner rule as a form error (not a failed save)."""
        data = super().clean() or {}
        stored = self.instance
        if stored.pk is not None and data.get("role") not in (None, Role.OWNER):
            try:
                services.ensure_an_owner_remains(Membership.objects.get(pk=stored.pk))
            except ValidationError as error:
                raise forms.ValidationError(error.messages) from None
        return data


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin[Membership]):
    """Staff add members directly, change roles and remove members; every write goes through
    the services, so it keeps the rules (an owner remains) and is audited with the staff member
    as its actor, like a write through the API or the console."""

    form = MembershipForm
    list_display = ["organization", "user", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["organization__slug", "user__username", "user__email"]
    autocomplete_fields = ["organization", "user"]

    def get_readonly_fields(self, request: HttpRequest, obj: Membership | None = None) -> Any:
        return ["organization", "user", "created_at"] if obj is not None else ["created_at"]

    def get_actions(self, request: HttpRequest) -> Any:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # one by one, through the service
        return actions

    def has_delete_permission(self, request: HttpRequest, obj: Membership | None = None) -> bool:
        if obj is not None:
            try:
                services.ensure_an_owner_remains(obj)
            except ValidationError:
                return False  # the last owner stays
        return super().has_delete_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        if change:
            stored = Membership.objects.get(pk=obj.pk)
            services.membership_change_role(
                membership=stored, role=obj.role, actor_role=Role.OWNER, actor=_staff(request)
            )
        else:
            added = services.membership_add(
                organization=obj.organization,
                user=obj.user,
                role=obj.role,
                actor_role=Role.OWNER,
                actor=_staff(request),
            )
            obj.pk = added.pk

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        services.membership_remove(membership=obj, actor_role=Role.OWNER, actor=_staff(request))


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin[Invitation]):
    """Read-only: invitations are made, resent and revoked through the API or the console, whose
    services send the e-mail and write the audit log. Never shows the token's hash."""

    list_display = ["email", "organization", "role", "status", "created_at", "expires_at"]
    list_filter = ["role", "organization"]
    search_fields = ["email", "organization__slug"]
    exclude = ["token_hash"]
    readonly_fields = [
        "organization",
        "email",
        "role",
        "invited_by",
        "created_at",
        "sent_at",
        "expires_at",
        "accepted_at",
        "accepted_by",
        "revoked_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Invitation | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Invitation | None = None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin[AuditEvent]):
    """The audit log, read-only: records are written by the services and never edited."""

    list_display = [
        "created_at",
        "organization",
        "action",
        "actor_username",
        "target_type",
        "target_id",
    ]
    list_filter = ["action"]
    search_fields = ["organization__slug", "actor_username", "target_id"]
    date_hierarchy = "created_at"
    list_select_related = ["organization"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False
