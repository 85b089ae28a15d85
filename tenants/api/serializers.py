"""Serializers of the tenants API: shapes and field validation only; rules live in services."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tenants.audit import ACTIONS
from tenants.models import (
    ApiKey,
    AuditEvent,
    Invitation,
    Limits,
    Membership,
    Organization,
    Role,
    Scope,
)
from tenants.plans import Plan
from vlinders.strict_json import StrictJSONTypes

LIMIT_FIELDS = list(Limits.LIMIT_FIELDS)


class LimitsSerializer(StrictJSONTypes, serializers.ModelSerializer[Organization]):
    class Meta:
        model = Organization
        fields = LIMIT_FIELDS


class OrganizationSerializer(StrictJSONTypes, serializers.ModelSerializer[Organization]):
    role = serializers.SerializerMethodField(help_text="Your role in this organisation.")

    class Meta:
        model = Organization
        fields = [
            "id",
            "name",
            "slug",
            "status",
            "plan",
            "response_cache_enabled",
            "created_at",
            "role",
            *LIMIT_FIELDS,
        ]
        read_only_fields = ["id", "slug", "status", "plan", "created_at", *LIMIT_FIELDS]
        extra_kwargs = {
            "response_cache_enabled": {
                "help_text": "Opt in to the response cache (docs/response-cache.md): "
                "deterministic requests that send `x-vlinders-cache: use` may be answered "
                "from it, metered at the model's cache-hit price."
            }
        }

    def get_role(self, org: Organization) -> str | None:
        roles: dict[Any, str] = self.context.get("roles", {})
        return roles.get(org.pk)


class OrganizationCreateSerializer(StrictJSONTypes, serializers.ModelSerializer[Organization]):
    class Meta:
        model = Organization
        fields = ["name", "slug"]


class OrganizationStatusSerializer(StrictJSONTypes, serializers.Serializer[Organization]):
    status = serializers.ChoiceField(choices=Organization.Status.choices)


class OrganizationPlanSerializer(StrictJSONTypes, serializers.Serializer[Organization]):
    plan = serializers.ChoiceField(choices=Plan.choices)


class MemberUserSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField(read_only=True)
    username = serializers.CharField(read_only=True)
    email = serializers.EmailField(read_only=True)


class MembershipSerializer(StrictJSONTypes, serializers.ModelSerializer[Membership]):
    user = MemberUserSerializer(read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "user", "role", "created_at"]
        read_only_fields = ["id", "user", "created_at"]


class MembershipCreateSerializer(StrictJSONTypes, serializers.Serializer[Membership]):
    """Add an existing user by username or e-mail address (platform staff only: for anyone else
    the answer would tell whether an address has an account; tenants invite instead)."""

    user = serializers.CharField(help_text="Username or e-mail address of an existing user.")
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)

    def validate_user(self, value: str) -> Any:
        users = get_user_model().objects.filter(is_active=True)
        user = users.filter(username=value).first() or users.filter(email__iexact=value).first()
        if user is None:
            raise serializers.ValidationError("No active user with that username or e-mail.")
        return user


class ApiKeySerializer(StrictJSONTypes, serializers.ModelSerializer[ApiKey]):
    """A key as listed: never its secret or hash."""

    status = serializers.CharField(read_only=True)
    display = serializers.CharField(read_only=True)
    # Null for a key whose creator was deleted (or made outside the API).
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    # Null unless the key was rotated out (then: the key that replaced it).
    replaced_by: serializers.PrimaryKeyRelatedField[Any] = serializers.PrimaryKeyRelatedField(
        read_only=True, allow_null=True
    )
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.choices))
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=128), required=False
    )

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "display",
            "prefix",
            "last_four",
            "status",
            "scopes",
            "allowed_models",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "created_by",
            "created_at",
            "replaced_by",
            *LIMIT_FIELDS,
        ]
        read_only_fields = [
            "id",
            "prefix",
            "last_four",
            "revoked_at",
            "last_used_at",
            "created_at",
        ]


class ApiKeyCreateSerializer(ApiKeySerializer):
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=Scope.choices),
        default=[Scope.INFERENCE.value],
        allow_empty=False,
    )


class ApiKeyUpdateSerializer(ApiKeySerializer):
    class Meta(ApiKeySerializer.Meta):
        read_only_fields = [*ApiKeySerializer.Meta.read_only_fields, "scopes"]


class ApiKeyWithSecretSerializer(ApiKeySerializer):
    """Returned once, by create and rotate: the only time the secret is ever shown."""

    key = serializers.SerializerMethodField(help_text="The secret. Shown once; store it now.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]

    def get_key(self, api_key: ApiKey) -> str:
        return str(self.context["secret"])


class ApiKeyRotateSerializer(StrictJSONTypes, serializers.Serializer[Any]):
    grace_seconds = serializers.IntegerField(
        min_value=0,
        max_value=7 * 24 * 3600,
        default=0,
        help_text="How long the old key keeps working (0: revoked at once).",
    )


class AvailableModelSerializer(serializers.Serializer[Any]):
    """A model or alias an organisation may use, as tenants see it."""

    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=["model", "alias"])
    target = serializers.CharField(allow_null=True)
    description = serializers.CharField()
    context_length = serializers.IntegerField()
    price_input_per_mtok = serializers.DecimalField(max_digits=12, decimal_places=6)
    price_output_per_mtok = serializers.DecimalField(max_digits=12, decimal_places=6)


class InvitationSerializer(serializers.ModelSerializer[Invitation]):
    """An invitation as its organisation's admins see it: never its token or the token's hash,
    and nothing about whether the address has an account."""

    status = serializers.ChoiceField(choices=Invitation.Status.choices, read_only=True)
    invited_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    accepted_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )

    class Meta:
        model = Invitation
        fields = [
            "id",
            "email",
            "role",
            "status",
            "invited_by",
            "created_at",
            "sent_at",
            "expires_at",
            "accepted_at",
            "accepted_by",
            "revoked_at",
        ]
        read_only_fields = fields


class InvitationCreateSerializer(StrictJSONTypes, serializers.Serializer[Invitation]):
    email = serializers.EmailField(max_length=254, help_text="Who to invite.")
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)


class InvitationQuerySerializer(serializers.Serializer[Any]):
    """Filters of the invitations list."""

    status = serializers.ChoiceField(
        choices=Invitation.Status.choices,
        required=False,
        help_text="Only invitations in this state now.",
    )


# ``from``/``to`` of the audit log: a date, or a date-time with seconds and fractions optional and
# an offset if any. The schema states the pattern and the API checks it before parsing.
AUDIT_TIME_PATTERN = (
    r"^[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)?$"
)


@extend_schema_field({"type": "string", "pattern": AUDIT_TIME_PATTERN})
class _AuditTimeField(serializers.DateTimeField):
    def to_internal_value(self, value: Any) -> datetime:
        if not isinstance(value, str) or not re.fullmatch(AUDIT_TIME_PATTERN, value):
            raise serializers.ValidationError(
                "Wrong format: a date (2026-03-01) or a date-time (2026-03-01T13:05:00Z)."
            )
        return super().to_internal_value(value)


class AuditQuerySerializer(serializers.Serializer[Any]):
    """Filters of the audit log; all optional, combined with AND. ``from_`` is served as
    ``from`` (a Python keyword)."""

    action = serializers.ChoiceField(
        choices=[(a, a) for a in ACTIONS], required=False, help_text="Only this action."
    )
    actor = serializers.CharField(
        required=False,
        max_length=150,
        trim_whitespace=False,
        help_text="Only changes by this username.",
    )
    from_ = _AuditTimeField(
        required=False, help_text="From this time (inclusive); a date is its midnight UTC."
    )
    to = _AuditTimeField(required=False, help_text="Before this time (exclusive).")

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        fields = super().get_fields()
        return {name.removesuffix("_"): field for name, field in fields.items()}

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        start, end = attrs.get("from"), attrs.get("to")
        if start is not None and end is not None and start >= end:
            raise serializers.ValidationError({"to": ["Must be after `from`."]})
        return attrs


class AuditEventSerializer(serializers.ModelSerializer[AuditEvent]):
    """One change: who (``actor``, the username then; ``api_key``, the key the request came
    with), what, and the target's fields before and after (never secrets)."""

    actor = serializers.CharField(source="actor_username", allow_blank=True)
    api_key = serializers.UUIDField(source="api_key_id", allow_null=True)
    action = serializers.CharField()
    before = serializers.JSONField(allow_null=True)
    after = serializers.JSONField(allow_null=True)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor",
            "api_key",
            "action",
            "target_type",
            "target_id",
            "before",
            "after",
        ]
        read_only_fields = fields
