"""Console pages: sign-in, a landing page and the page an invitation links to. An
organisation's pages, and platform staff's (``/staff/…``), are in ``console/pages/``."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from tenants import services
from tenants.invitations import InvitationUnusable
from tenants.models import Membership, Role
from tenants.selectors import organizations_for_user

HOME_PAGE_SIZE = 50


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Where signing in leads: the organisation's overview for someone in exactly one, else the
    list of their organisations (platform staff: all of them) and a link to create one."""
    user = request.user
    assert isinstance(user, User)  # signed in (login_required)
    organizations = organizations_for_user(user).order_by("slug")
    if not user.is_staff:
        first = list(organizations[:2])
        if len(first) == 1:
            return redirect("console:org-overview", first[0].slug)
    page = Paginator(organizations, HOME_PAGE_SIZE).get_page(request.GET.get("page"))
    roles = dict(
        Membership.objects.filter(
            user=user, organization__in=[org.pk for org in page.object_list]
        ).values_list("organization_id", "role")
    )
    rows = [(org, Role(roles[org.pk]).label if org.pk in roles else None) for org in page]
    return render(request, "console/home.html", {"page": page, "rows": rows})


def _invitation_error(request: HttpRequest, error: InvitationUnusable) -> HttpResponse:
    return render(
        request, "console/invitation_error.html", {"message": str(error)}, status=error.status
    )


def invitation(request: HttpRequest, token: str) -> HttpResponse:
    """The link in an invitation e-mail.

    A signed-in person sees "Join <organisation> as <role>" and joins with a POST. Someone
    signed out can set a username and password (a new account, joined at once) or sign in
    first and come back. A link that is unknown answers 404, one used, revoked or expired 410,
    each with a page that says so.
    """
    try:
        pending = services.invitation_for_token(token)
    except InvitationUnusable as error:
        return _invitation_error(request, error)
    form: UserCreationForm[User] | None = None
    if request.user.is_authenticated:
        if request.method == "POST":
            assert isinstance(request.user, User)
            try:
                membership = services.invitation_accept(token=token, user=request.user)
            except InvitationUnusable as error:
                return _invitation_error(request, error)
            return _joined(request, membership)
    else:
        form = UserCreationForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            try:
                membership = services.invitation_accept_as_new_user(
                    token=token,
                    username=form.cleaned_data["username"],
                    password=form.cleaned_data["password1"],
                )
            except InvitationUnusable as error:
                return _invitation_error(request, error)
            login(request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
            return _joined(request, membership)
    context = {"invitation": pending, "form": form, "token": token}
    return render(request, "console/invitation.html", context)


def _joined(request: HttpRequest, membership: Membership) -> HttpResponse:
    """After accepting: the organisation's overview, saying with which role (a member who
    already was one keeps their role: the message says which)."""
    messages.success(
        request,
        f"You are a member of {membership.organization.name} as {membership.get_role_display()}.",
    )
    return redirect("console:org-overview", membership.organization.slug)
