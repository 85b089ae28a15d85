"""Django admin for platform staff. Writes that the gateway must see go through the services, so
they publish the access snapshot like any other change."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from tenants import services, snapshot
from tenants.models import ApiKey, Membership, Organization, Role


class MembershipInline(admin.TabularInline[Membership, Organization]):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin[Organization]):
    list_display = ["slug", "name", "status", "created_at"]
    list_filter = ["status"]
    search_fields = ["slug", "name"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]
    actions = ["suspend", "reactivate"]

    def save_model(self, request: HttpRequest, obj: Organization, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
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
            services.organization_set_status(organization=org, status=Organization.Status.SUSPENDED)
        self.message_user(request, f"Suspended {queryset.count()} organisations.", messages.SUCCESS)

    @admin.action(description="Reactivate selected organisations")
    def reactivate(self, request: HttpRequest, queryset: QuerySet[Organization]) -> None:
        for org in queryset:
            services.organization_set_status(organization=org, status=Organization.Status.ACTIVE)
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
        super().save_model(request, obj, form, change)
        snapshot.publish_key_on_commit(obj.id)

    @admin.action(description="Revoke selected keys now")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in queryset:
            services.api_key_revoke(api_key=api_key, actor_role=Role.OWNER, actor=request.user)
        self.message_user(request, f"Revoked {queryset.count()} keys.", messages.SUCCESS)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin[Membership]):
    list_display = ["organization", "user", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["organization__slug", "user__username", "user__email"]
    autocomplete_fields = ["organization", "user"]
