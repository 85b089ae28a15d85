"""The one mechanism that scopes a console page to an organisation.

Every page under ``/orgs/<slug>/`` is wrapped in ``org_page``. Before the view runs it resolves
the organisation named in the URL and the signed-in person's role in it with the same selector
the management API uses (``tenants.selectors.membership_role``: platform staff act as owners),
and refuses fail-closed, as the API does:

- signed out: the sign-in page;
- no role in it: 404, as if it did not exist;
- a role too weak to see the page (``read``) or to send it a form (``write``): 403.

The view receives an ``OrgContext`` and builds every query from ``ctx.organization``; templates
use ``ctx.can_manage`` and friends to hide what the role cannot do. The rules themselves stay in
the services, which check the actor's role again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404

from tenants.models import Organization, Role
from tenants.roles import MANAGE, OWN, READ, USE, role_at_least
from tenants.selectors import membership_role, organizations_for_user

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class OrgContext:
    """The organisation a page is about and what the signed-in person may do in it."""

    organization: Organization
    role: Role
    user: Any

    def can(self, minimum: str) -> bool:
        return role_at_least(self.role, minimum)

    @property
    def can_use(self) -> bool:
        """Create and manage keys of one's own, use the playground (member and up)."""
        return self.can(USE)

    @property
    def can_manage(self) -> bool:
        """Manage every key, the members, invitations; see the audit log (admin and up)."""
        return self.can(MANAGE)

    @property
    def is_owner(self) -> bool:
        return self.can(OWN)

    def switchable(self) -> QuerySet[Organization]:
        """The organisations the switcher offers (staff: the first 50 by slug)."""
        return organizations_for_user(self.user).order_by("slug")[:50]


def resolve(request: HttpRequest, slug: str) -> OrgContext:
    """The organisation named ``slug`` and the request's role in it; 404 for non-members."""
    organization = get_object_or_404(Organization, slug=slug)
    role = membership_role(user=request.user, organization=organization)
    if role is None:
        raise Http404
    return OrgContext(organization=organization, role=role, user=request.user)


View = Callable[..., HttpResponse]


def org_page(read: str = READ, write: str = MANAGE) -> Callable[[View], View]:
    """Wrap a view ``view(request, ctx, **kwargs)`` of an organisation's page.

    ``read`` is the role a GET needs, ``write`` the role any other method needs (see the module
    docstring). The URL must name the organisation as ``slug``.
    """

    def decorate(view: View) -> View:
        @login_required
        @functools.wraps(view)
        def wrapped(request: HttpRequest, slug: str, **kwargs: Any) -> HttpResponse:
            ctx = resolve(request, slug)
            needed = read if request.method in _SAFE_METHODS else write
            if not ctx.can(needed):
                raise PermissionDenied("Your role in this organisation does not allow this.")
            request.org_context = ctx  # type: ignore[attr-defined]
            return view(request, ctx, **kwargs)

        return wrapped

    return decorate
