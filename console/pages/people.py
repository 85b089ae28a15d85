"""The members page of an organisation: its members, and for owners and admins the controls to
change roles, remove members, invite people and manage the invitations.

Every change goes through the same services as the management API (``membership_change_role``,
``membership_remove``, ``invitation_create``/``_resend``/``_revoke``) with the role
``org_page`` resolved; their rules (owners protected, one owner kept, only owners grant owner)
and their refusals are shown on the page, never re-checked here. The controls a role cannot use
are hidden; posting anyway gets the service's 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Page, Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_POST

from console.pages.account import add_service_error
from console.scoping import OrgContext, org_page
from tenants import services
from tenants.invitations import ttl
from tenants.models import Invitation, Membership, Role
from tenants.roles import MANAGE, READ
from tenants.selectors import invitations_of, memberships_of

MEMBERS_PER_PAGE = 50
INVITATIONS_PER_PAGE = 25


def grantable_roles(ctx: OrgContext) -> list[tuple[str, str]]:
    """The roles the controls offer: the owner role only to owners. (The services decide; this
    only hides what they would refuse.)"""
    return [(value, label) for value, label in Role.choices if value != Role.OWNER or ctx.is_owner]


class RoleForm(forms.Form):
    role = forms.ChoiceField(label="Role", choices=Role.choices)


class InviteForm(forms.Form):
    email = forms.EmailField(
        label="E-mail address",
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "off"}),
    )
    role = forms.ChoiceField(label="Role", choices=Role.choices, initial=Role.MEMBER)

    def __init__(self, *args: Any, ctx: OrgContext, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every role is accepted, only those this person may grant are offered: an admin who
        # posts "owner" anyway gets the service's refusal, as in the API.
        self.fields["role"].widget.choices = grantable_roles(ctx)


class InvitationFilterForm(forms.Form):
    status = forms.ChoiceField(
        label="Status",
        choices=[("", "All"), *Invitation.Status.choices],
        required=False,
    )


@dataclass(frozen=True)
class MemberRow:
    membership: Membership
    editable: bool


@dataclass(frozen=True)
class InvitationRow:
    invitation: Invitation
    status: Invitation.Status
    open: bool  # pending or expired: can be resent or revoked
    manageable: bool  # this person may resend or revoke it (only owners for owner invitations)


def _members_page(
    request: HttpRequest,
    ctx: OrgContext,
    *,
    invite_form: InviteForm | None = None,
    error: str | None = None,
    status: int = 200,
) -> HttpResponse:
    """The page, for a GET or to show what a POST was refused with (``error``)."""
    members: Page[Membership] = Paginator(
        memberships_of(ctx.organization), MEMBERS_PER_PAGE
    ).get_page(request.GET.get("page"))
    rows = [
        MemberRow(m, ctx.can_manage and (ctx.is_owner or m.role != Role.OWNER))
        for m in members.object_list
    ]
    context: dict[str, Any] = {
        "section": "members",
        "members": members,
        "rows": rows,
        "roles": grantable_roles(ctx),
        "error": error,
    }
    if ctx.can_manage:
        filter_form = InvitationFilterForm(request.GET or None)
        chosen = filter_form.cleaned_data["status"] if filter_form.is_valid() else ""
        if filter_form.is_bound and not filter_form.is_valid():
            status = 400
        invitations: Page[Invitation] = Paginator(
            invitations_of(ctx.organization, status=chosen or None), INVITATIONS_PER_PAGE
        ).get_page(request.GET.get("invitations_page"))
        context |= {
            "invite_form": invite_form or InviteForm(ctx=ctx),
            "filter_form": filter_form,
            "status_filter": chosen,
            "invitations": invitations,
            "invitation_rows": [_invitation_row(ctx, i) for i in invitations.object_list],
            "ttl_days": ttl().total_seconds() / 86400,
        }
        if getattr(request, "htmx", False) and request.htmx.target == "invitations":  # type: ignore[attr-defined]
            return render(request, "console/people/_invitations.html", context, status=status)
    return render(request, "console/people/members.html", context, status=status)


def _invitation_row(ctx: OrgContext, invitation: Invitation) -> InvitationRow:
    state = invitation.status
    return InvitationRow(
        invitation=invitation,
        status=state,
        open=state in (Invitation.Status.PENDING, Invitation.Status.EXPIRED),
        manageable=ctx.is_owner or invitation.role != Role.OWNER,
    )


def _refused(
    request: HttpRequest,
    ctx: OrgContext,
    error: ValidationError | PermissionDenied,
    **kwargs: Any,
) -> HttpResponse:
    """The page again with the service's refusal: 403 for a rule about who may, 400 else."""
    if isinstance(error, PermissionDenied):
        return _members_page(request, ctx, error=str(error), status=403, **kwargs)
    return _members_page(request, ctx, error=" ".join(error.messages), status=400, **kwargs)


def _back(ctx: OrgContext, anchor: str = "") -> HttpResponse:
    return redirect(reverse("console:org-members", args=[ctx.organization.slug]) + anchor)


@org_page(read=READ)
def members(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """Everyone in the organisation sees who is in it; owners and admins get the controls."""
    return _members_page(request, ctx)


@org_page(read=MANAGE, write=MANAGE)
@require_POST
def member_role(request: HttpRequest, ctx: OrgContext, pk: int) -> HttpResponse:
    membership = get_object_or_404(
        Membership.objects.select_related("user", "organization"),
        pk=pk,
        organization=ctx.organization,
    )
    form = RoleForm(request.POST)
    if not form.is_valid():
        return _members_page(request, ctx, error="Choose one of the roles.", status=400)
    try:
        services.membership_change_role(
            membership=membership,
            role=form.cleaned_data["role"],
            actor_role=ctx.role,
            actor=request.user,  # type: ignore[arg-type]
        )
    except (ValidationError, PermissionDenied) as error:
        return _refused(request, ctx, error)
    messages.success(
        request, f"{membership.user.get_username()} is now {membership.get_role_display()}."
    )
    return _back(ctx)


@org_page(read=MANAGE, write=MANAGE)
@require_POST
def member_remove(request: HttpRequest, ctx: OrgContext, pk: int) -> HttpResponse:
    membership = get_object_or_404(
        Membership.objects.select_related("user", "organization"),
        pk=pk,
        organization=ctx.organization,
    )
    try:
        services.membership_remove(
            membership=membership,
            actor_role=ctx.role,
            actor=request.user,  # type: ignore[arg-type]
        )
    except (ValidationError, PermissionDenied) as error:
        return _refused(request, ctx, error)
    username = membership.user.get_username()
    messages.success(request, f"{username} was removed from {ctx.organization.name}.")
    if membership.user_id == request.user.pk:
        return redirect("console:home")
    return _back(ctx)


@org_page(read=MANAGE, write=MANAGE)
@require_POST
def invite(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """Invite an address with a role. The answer is the same whether or not the address has an
    account or is a member already: the service treats them alike."""
    form = InviteForm(request.POST, ctx=ctx)
    if not form.is_valid():
        return _members_page(request, ctx, invite_form=form, status=400)
    try:
        invitation, _token = services.invitation_create(
            organization=ctx.organization,
            email=form.cleaned_data["email"],
            role=form.cleaned_data["role"],
            actor_role=ctx.role,
            actor=request.user,  # type: ignore[arg-type]
            base_url=request.build_absolute_uri("/"),
        )
    except PermissionDenied as error:
        return _refused(request, ctx, error, invite_form=form)
    except ValidationError as error:
        add_service_error(form, error)
        return _members_page(request, ctx, invite_form=form, status=400)
    except OSError:  # the mail server refused or is down: nothing was saved (see the service)
        form.add_error(
            None, "The invitation e-mail could not be sent; nothing was saved. Try again."
        )
        return _members_page(request, ctx, invite_form=form, status=503)
    messages.success(
        request,
        f"Invitation sent to {invitation.email} as {invitation.get_role_display()}.",
    )
    return _back(ctx, "#invitations")


def _invitation(ctx: OrgContext, pk: UUID) -> Invitation:
    return get_object_or_404(
        Invitation.objects.select_related("organization"), pk=pk, organization=ctx.organization
    )


@org_page(read=MANAGE, write=MANAGE)
@require_POST
def invitation_resend(request: HttpRequest, ctx: OrgContext, pk: UUID) -> HttpResponse:
    """A new link with a new expiry; the old link stops working."""
    try:
        invitation, _token = services.invitation_resend(
            invitation=_invitation(ctx, pk),
            actor_role=ctx.role,
            actor=request.user,  # type: ignore[arg-type]
            base_url=request.build_absolute_uri("/"),
        )
    except (ValidationError, PermissionDenied) as error:
        return _refused(request, ctx, error)
    except OSError:
        return _members_page(
            request, ctx, error="The e-mail could not be sent; try again.", status=503
        )
    messages.success(request, f"A new link was sent to {invitation.email}.")
    return _back(ctx, "#invitations")


@org_page(read=MANAGE, write=MANAGE)
@require_POST
def invitation_revoke(request: HttpRequest, ctx: OrgContext, pk: UUID) -> HttpResponse:
    """Kill the link; the invitation stays listed, as revoked."""
    try:
        invitation = services.invitation_revoke(
            invitation=_invitation(ctx, pk),
            actor_role=ctx.role,
            actor=request.user,  # type: ignore[arg-type]
        )
    except (ValidationError, PermissionDenied) as error:
        return _refused(request, ctx, error)
    messages.success(request, f"The invitation to {invitation.email} was revoked.")
    return _back(ctx, "#invitations")


urlpatterns = [
    path("members/", members, name="org-members"),
    path("members/invite/", invite, name="org-invite"),
    path("members/<int:pk>/role/", member_role, name="org-member-role"),
    path("members/<int:pk>/remove/", member_remove, name="org-member-remove"),
    path("invitations/<uuid:pk>/resend/", invitation_resend, name="org-invitation-resend"),
    path("invitations/<uuid:pk>/revoke/", invitation_revoke, name="org-invitation-revoke"),
]
