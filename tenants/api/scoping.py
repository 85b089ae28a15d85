"""The one mechanism that scopes the management API to an organisation.

Every organisation-scoped view inherits ``OrganizationScopedViewSet``. Before the handler runs,
``OrganizationAccess`` resolves the organisation named in the URL (``org_slug``) and the actor's
role in it, and refuses fail-closed:

- no role in it (not a member, or an API key of another organisation): 404, as if it did not exist;
- a role too weak for the action: 403.

An API key acts with the role its scopes give, capped at its creator's current role in the
organisation (see ``_key_role``).

Views then build every query from ``self.organization`` through ``scoped_queryset``; there is no
per-view filtering to forget.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from rest_framework import exceptions, permissions, viewsets
from rest_framework.request import Request

from tenants import selectors
from tenants.api.authentication import ApiKeyPrincipal
from tenants.models import Organization, Role
from tenants.roles import MANAGE, READ, role_at_least, role_of_key_scopes, weaker_role


def actor_role(request: Request, organization: Organization) -> Role:
    """The role the request acts with in ``organization``.

    Raises 404 when it has none (not a member; a key of another organisation) and 403 for an API
    key of this organisation that has no management scope.
    """
    user = request.user
    if isinstance(user, ApiKeyPrincipal):
        if user.api_key.organization_id != organization.pk:
            raise exceptions.NotFound()
        return _key_role(user)
    role = selectors.membership_role(user=user, organization=organization)
    if role is None:
        raise exceptions.NotFound()
    return role


def _key_role(principal: ApiKeyPrincipal) -> Role:
    """The key's management role: from its scopes, capped at its creator's current role.

    A key never outranks the person behind it: an admin demoted to viewer leaves their
    ``management:write`` keys acting as viewers, and the keys of someone who left the
    organisation have no management access at all. Platform staff are not capped; a key with no
    recorded creator acts with its scopes alone.
    """
    api_key = principal.api_key
    role = role_of_key_scopes(api_key.scopes)
    if role is None:
        raise exceptions.PermissionDenied("This API key has no management scope.")
    creator = api_key.created_by
    if creator is None:
        return role
    creator_role = selectors.membership_role(user=creator, organization=api_key.organization)
    if creator_role is None:
        raise exceptions.PermissionDenied(
            "The person who created this API key is no longer a member of its organisation, "
            "so the key has no management access."
        )
    return weaker_role(role, creator_role)


class OrganizationAccess(permissions.BasePermission):
    """Resolves ``view.organization`` and ``view.role``; 404 for outsiders, 403 for weak roles."""

    def has_permission(self, request: Request, view: Any) -> bool:
        slug = view.kwargs.get(view.organization_url_kwarg)
        if slug is None:  # list/create of organisations themselves
            if isinstance(request.user, ApiKeyPrincipal):
                _key_role(request.user)
            return True
        organization = get_object_or_404(Organization, slug=slug)
        role = actor_role(request, organization)
        view.organization, view.role = organization, role
        if not role_at_least(role, view.required_role(request)):
            raise exceptions.PermissionDenied("Your role in this organisation does not allow this.")
        return True


class OrganizationScopedViewSet(viewsets.GenericViewSet[Any]):
    """Base of every view on an organisation's data (see the module docstring).

    Subclasses implement ``scoped_queryset(organization)`` and may set ``action_roles`` to ask for
    a role per action; reads need ``READ`` and writes ``MANAGE`` unless they say otherwise.
    """

    permission_classes = [permissions.IsAuthenticated, OrganizationAccess]
    organization_url_kwarg = "org_slug"
    action_roles: dict[str, str] = {}
    organization: Organization
    role: Role

    def required_role(self, request: Request) -> str:
        if self.action in self.action_roles:
            return self.action_roles[self.action]
        return READ if request.method in permissions.SAFE_METHODS else MANAGE

    def scoped_queryset(self, organization: Organization) -> QuerySet[Any]:
        raise NotImplementedError

    def get_queryset(self) -> QuerySet[Any]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no organisation
            return self.queryset.none() if self.queryset is not None else QuerySet().none()
        return self.scoped_queryset(self.organization)

    def get_serializer_context(self) -> dict[str, Any]:
        context = super().get_serializer_context()
        if hasattr(self, "organization"):
            context["organization"] = self.organization
            context["role"] = self.role
        return context
