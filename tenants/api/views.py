"""Views of the tenants API. Thin: validate the shape, call one service, serialise the result.

Every view on an organisation's data is an ``OrganizationScopedViewSet`` (see ``scoping``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, permissions, status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from tenants import selectors, services
from tenants.api import serializers as s
from tenants.api.authentication import ApiKeyPrincipal
from tenants.api.scoping import OrganizationAccess, OrganizationScopedViewSet
from tenants.catalog import available_models_for_organization
from tenants.models import ApiKey, AuditEvent, Invitation, Membership, Organization
from tenants.roles import MANAGE, READ, USE
from vlinders import csv_export

STAFF_ONLY = [permissions.IsAuthenticated, OrganizationAccess, permissions.IsAdminUser]


def _acting_user(request: Request) -> Any:
    """The person behind a request: the session user, or the creator of the API key used."""
    if isinstance(request.user, ApiKeyPrincipal):
        return request.user.api_key.created_by
    return request.user


def _via_key(request: Request) -> ApiKey | None:
    """The API key that authenticated the request, if one did (for the audit log)."""
    if isinstance(request.user, ApiKeyPrincipal):
        return request.user.api_key
    return None


def _who(request: Request) -> dict[str, Any]:
    """What the services record as the actor of a write: the person and the key, if any."""
    return {"actor": _acting_user(request), "via_key": _via_key(request)}


class OrganizationViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    OrganizationScopedViewSet,
):
    """Organisations the caller belongs to (platform staff: all of them)."""

    serializer_class = s.OrganizationSerializer
    queryset = Organization.objects.none()
    lookup_field = "slug"
    lookup_url_kwarg = "org_slug"
    http_method_names = ["get", "post", "patch", "put", "head", "options"]

    def get_queryset(self) -> QuerySet[Organization]:
        if isinstance(self.request.user, ApiKeyPrincipal):
            return Organization.objects.filter(pk=self.request.user.api_key.organization_id)
        return selectors.organizations_for_user(self.request.user)

    def get_object(self) -> Organization:
        return self.organization

    def get_serializer_context(self) -> dict[str, Any]:
        context = super().get_serializer_context()
        if hasattr(self, "organization"):
            context["roles"] = {self.organization.pk: self.role}
        elif (
            not isinstance(self.request.user, ApiKeyPrincipal)
            and self.request.user.is_authenticated
        ):
            context["roles"] = dict(
                Membership.objects.filter(user=self.request.user).values_list(
                    "organization_id", "role"
                )
            )
        return context

    @extend_schema(
        request=s.OrganizationCreateSerializer, responses={201: s.OrganizationSerializer}
    )
    def create(self, request: Request) -> Response:
        """Create an organisation; you become its owner. People only, not API keys."""
        if isinstance(request.user, ApiKeyPrincipal):
            raise PermissionDenied("API keys cannot create organisations.")
        data = s.OrganizationCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        assert isinstance(request.user, User)  # authenticated by a session, not a key
        org = services.organization_create(owner=request.user, **data.validated_data)
        context = self.get_serializer_context() | {"roles": {org.pk: "owner"}}
        return Response(s.OrganizationSerializer(org, context=context).data, status=201)

    def perform_update(self, serializer: Any) -> None:
        services.organization_update(
            organization=self.organization,
            name=serializer.validated_data.get("name", self.organization.name),
            response_cache_enabled=serializer.validated_data.get("response_cache_enabled"),
            **_who(self.request),
        )

    @extend_schema(request=s.OrganizationStatusSerializer, responses=s.OrganizationSerializer)
    @action(detail=True, methods=["post"], permission_classes=STAFF_ONLY)
    def status(self, request: Request, org_slug: str) -> Response:
        """Suspend or reactivate (platform staff). A suspended organisation's keys stop working."""
        data = s.OrganizationStatusSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        org = services.organization_set_status(
            organization=self.organization,
            status=data.validated_data["status"],
            **_who(request),
        )
        return Response(self.get_serializer(org).data)

    @extend_schema(request=s.OrganizationPlanSerializer, responses=s.OrganizationSerializer)
    @action(detail=True, methods=["post"], permission_classes=STAFF_ONLY)
    def plan(self, request: Request, org_slug: str) -> Response:
        """Change the plan (platform staff); it sets the organisation's scheduling priority."""
        data = s.OrganizationPlanSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        org = services.organization_set_plan(
            organization=self.organization, plan=data.validated_data["plan"], **_who(request)
        )
        return Response(self.get_serializer(org).data)

    @extend_schema(methods=["GET"], responses=s.LimitsSerializer)
    @extend_schema(
        methods=["PUT", "PATCH"], request=s.LimitsSerializer, responses=s.LimitsSerializer
    )
    @action(detail=True, methods=["get", "put", "patch"])
    def limits(self, request: Request, org_slug: str) -> Response:
        """The organisation's limits: members read them, platform staff set them."""
        if request.method in permissions.SAFE_METHODS:
            return Response(s.LimitsSerializer(self.organization).data)
        if not request.user.is_staff:
            raise PermissionDenied("Only platform staff set an organisation's limits.")
        data = s.LimitsSerializer(
            self.organization, data=request.data, partial=request.method == "PATCH"
        )
        data.is_valid(raise_exception=True)
        org = services.organization_set_limits(
            organization=self.organization, **_who(request), **data.validated_data
        )
        return Response(s.LimitsSerializer(org).data)


class MembershipViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    OrganizationScopedViewSet,
):
    """Members of an organisation and their roles. Owners and admins manage them; people join
    by invitation (``InvitationViewSet``). Adding an existing user directly is for platform
    staff only: its answer says whether an address has an account."""

    serializer_class = s.MembershipSerializer
    queryset = Membership.objects.none()
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def scoped_queryset(self, organization: Organization) -> QuerySet[Membership]:
        return organization.memberships.select_related("user").order_by("created_at", "pk")

    def get_permissions(self) -> Any:
        if self.action == "create":
            return [permission() for permission in STAFF_ONLY]
        return super().get_permissions()

    @extend_schema(request=s.MembershipCreateSerializer, responses={201: s.MembershipSerializer})
    def create(self, request: Request, org_slug: str) -> Response:
        """Add an existing user by username or e-mail (platform staff). Others invite."""
        data = s.MembershipCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.membership_add(
            organization=self.organization,
            user=data.validated_data["user"],
            role=data.validated_data["role"],
            actor_role=self.role,
            **_who(request),
        )
        return Response(s.MembershipSerializer(membership).data, status=201)

    def perform_update(self, serializer: Any) -> None:
        role = serializer.validated_data.get("role", serializer.instance.role)
        serializer.instance = services.membership_change_role(
            membership=serializer.instance, role=role, actor_role=self.role, **_who(self.request)
        )

    def perform_destroy(self, instance: Membership) -> None:
        services.membership_remove(membership=instance, actor_role=self.role, **_who(self.request))


class ApiKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    OrganizationScopedViewSet,
):
    """API keys. The secret is returned once, by create and rotate, and never again."""

    serializer_class = s.ApiKeySerializer
    queryset = ApiKey.objects.none()
    http_method_names = ["get", "post", "patch", "head", "options"]
    # Members create keys and manage their own (the service checks whose key it is).
    action_roles = {"create": USE, "partial_update": USE, "revoke": USE, "rotate": USE}

    def scoped_queryset(self, organization: Organization) -> QuerySet[ApiKey]:
        return organization.api_keys.select_related("created_by").order_by("-created_at", "pk")

    def get_serializer_class(self) -> type[s.ApiKeySerializer]:
        if self.action == "partial_update":
            return s.ApiKeyUpdateSerializer
        return s.ApiKeySerializer

    def _with_secret(self, api_key: ApiKey, secret: str, code: int) -> Response:
        return Response(
            s.ApiKeyWithSecretSerializer(api_key, context={"secret": secret}).data, status=code
        )

    @extend_schema(request=s.ApiKeyCreateSerializer, responses={201: s.ApiKeyWithSecretSerializer})
    def create(self, request: Request, org_slug: str) -> Response:
        data = s.ApiKeyCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        api_key, secret = services.api_key_create(
            organization=self.organization,
            created_by=_acting_user(request),
            actor_role=self.role,
            via_key=_via_key(request),
            **data.validated_data,
        )
        return self._with_secret(api_key, secret, status.HTTP_201_CREATED)

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = services.api_key_update(
            api_key=serializer.instance,
            actor_role=self.role,
            **_who(self.request),
            **serializer.validated_data,
        )

    @extend_schema(request=None, responses=s.ApiKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, org_slug: str, pk: str) -> Response:
        """Revoke the key at once, on every gateway replica."""
        api_key = services.api_key_revoke(
            api_key=self.get_object(), actor_role=self.role, **_who(request)
        )
        return Response(s.ApiKeySerializer(api_key).data)

    @extend_schema(request=s.ApiKeyRotateSerializer, responses={201: s.ApiKeyWithSecretSerializer})
    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, org_slug: str, pk: str) -> Response:
        """Issue a new secret with the same settings; the old key is revoked, or expires after
        ``grace_seconds``."""
        data = s.ApiKeyRotateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        api_key, secret = services.api_key_rotate(
            api_key=self.get_object(),
            actor_role=self.role,
            **_who(request),
            grace=timedelta(seconds=data.validated_data["grace_seconds"]),
        )
        return self._with_secret(api_key, secret, status.HTTP_201_CREATED)


class AvailableModelViewSet(OrganizationScopedViewSet):
    """The models and aliases this organisation may use, with prices."""

    serializer_class = s.AvailableModelSerializer
    pagination_class = None
    action_roles = {"list": READ}

    def list(self, request: Request, org_slug: str) -> Response:
        rows = [asdict(row) for row in available_models_for_organization(self.organization)]
        return Response(s.AvailableModelSerializer(rows, many=True).data)


def _base_url(request: Request) -> str:
    """The scheme and host the request came to, for links in e-mails when
    ``VLINDERS_CONSOLE_URL`` is not set (``tenants.invitations.accept_url``)."""
    return request.build_absolute_uri("/")


class InvitationViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    OrganizationScopedViewSet,
):
    """Invitations of an organisation (owners and admins; only owners invite owners).

    Creating one answers the same whether the address is new, has an account or is already a
    member: the API never tells who has an account. The link travels only by e-mail.
    """

    serializer_class = s.InvitationSerializer
    queryset = Invitation.objects.none()
    http_method_names = ["get", "post", "delete", "head", "options"]
    action_roles = {"list": MANAGE, "retrieve": MANAGE}

    def scoped_queryset(self, organization: Organization) -> QuerySet[Invitation]:
        return selectors.invitations_of(organization)

    @extend_schema(
        parameters=[s.InvitationQuerySerializer], responses=s.InvitationSerializer(many=True)
    )
    def list(self, request: Request, org_slug: str) -> Response:
        """Invitations, newest first; ``status`` keeps those pending, accepted, revoked or
        expired now."""
        query = s.InvitationQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        invitations = selectors.invitations_of(
            self.organization, status=query.validated_data.get("status")
        )
        page = self.paginate_queryset(invitations)
        assert page is not None  # the API's pagination is always on
        return self.get_paginated_response(s.InvitationSerializer(page, many=True).data)

    @extend_schema(request=s.InvitationCreateSerializer, responses={201: s.InvitationSerializer})
    def create(self, request: Request, org_slug: str) -> Response:
        """Invite an e-mail address with a role; the link is e-mailed and works once, until it
        expires (7 days by default). An open invitation to the same address is renewed."""
        data = s.InvitationCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        invitation, _token = services.invitation_create(
            organization=self.organization,
            email=data.validated_data["email"],
            role=data.validated_data["role"],
            actor_role=self.role,
            base_url=_base_url(request),
            **_who(request),
        )
        return Response(s.InvitationSerializer(invitation).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=s.InvitationSerializer)
    @action(detail=True, methods=["post"])
    def resend(self, request: Request, org_slug: str, pk: str) -> Response:
        """E-mail a new link with a new expiry; the old link stops working."""
        invitation, _token = services.invitation_resend(
            invitation=self.get_object(),
            actor_role=self.role,
            base_url=_base_url(request),
            **_who(request),
        )
        return Response(s.InvitationSerializer(invitation).data)

    def perform_destroy(self, instance: Invitation) -> None:
        """Revoke: the link stops working; the invitation stays listed, as revoked."""
        services.invitation_revoke(invitation=instance, actor_role=self.role, **_who(self.request))


# The CSV has the API's columns, less the record's own id.
AUDIT_CSV_COLUMNS = [name for name in s.AuditEventSerializer.Meta.fields if name != "id"]


class AuditEventViewSet(OrganizationScopedViewSet):
    """The organisation's audit log, newest first: owners and admins read it (an API key with
    ``management:write`` too); members and viewers get 403, outsiders 404."""

    serializer_class = s.AuditEventSerializer
    queryset = AuditEvent.objects.none()
    renderer_classes = [JSONRenderer]
    content_negotiation_class = csv_export.JSONAlways
    action_roles = {"list": MANAGE, "export": MANAGE}

    def scoped_queryset(self, organization: Organization) -> QuerySet[AuditEvent]:
        return selectors.audit_events(organization)

    def _filtered(self) -> QuerySet[AuditEvent]:
        """The records the query asks for, through the console's selector (one rule)."""
        query = s.AuditQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        filters = query.validated_data
        return selectors.audit_events(
            self.organization,
            action=filters.get("action", ""),
            actor=filters.get("actor", ""),
            start=filters.get("from"),
            end=filters.get("to"),
        )

    @extend_schema(parameters=[s.AuditQuerySerializer], responses=s.AuditEventSerializer(many=True))
    def list(self, request: Request, org_slug: str) -> Response:
        """Changes to the organisation (who, what, before and after), newest first, paginated."""
        events = self._filtered()
        page = self.paginate_queryset(events)
        assert page is not None  # the API's pagination is always on
        return self.get_paginated_response(s.AuditEventSerializer(page, many=True).data)

    @extend_schema(
        operation_id="orgs_audit_csv",
        parameters=[s.AuditQuerySerializer],
        responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="CSV rows")},
    )
    def export(self, request: Request, org_slug: str) -> StreamingHttpResponse:
        """The same records as CSV, streamed, unpaginated; ``before`` and ``after`` as JSON."""
        events = self._filtered().iterator(chunk_size=1000)

        def lines(rows: Iterator[AuditEvent]) -> Iterator[str]:
            writer = csv.writer(csv_export.Echo())
            yield writer.writerow(AUDIT_CSV_COLUMNS)
            for event in rows:
                cells = [
                    event.created_at.isoformat().replace("+00:00", "Z"),
                    event.actor_username,
                    str(event.api_key_id or ""),
                    event.action,
                    event.target_type,
                    event.target_id,
                    "" if event.before is None else json.dumps(event.before, sort_keys=True),
                    "" if event.after is None else json.dumps(event.after, sort_keys=True),
                ]
                yield writer.writerow([csv_export.cell(value) for value in cells])

        response = StreamingHttpResponse(lines(events), content_type="text/csv; charset=utf-8")
        filename = f"audit-{self.organization.slug}.csv"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response
