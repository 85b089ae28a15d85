"""Account pages: creating an organisation, and resetting a forgotten password by e-mail.

Creating an organisation calls ``tenants.services.organization_create`` exactly as the API does;
its validation (the model's, a taken slug included) is shown on the form. Password reset is
Django's own views and token: the "sent" page reads the same whether or not an account has the
address, and the link works once.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import forms as auth_forms
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse_lazy

from tenants import services
from tenants.models import Organization


def add_service_error(form: forms.Form, error: ValidationError) -> None:
    """Show a service's ``ValidationError`` on ``form``: next to the field it names when the form
    has that field, else above the form."""
    if hasattr(error, "error_dict"):
        for field, errors in error.error_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, error)


class OrganizationCreateForm(forms.Form):
    """The shape of the request; the rules (valid, unused slug) are the service's."""

    name = Organization._meta.get_field("name").formfield(label="Name")
    slug = Organization._meta.get_field("slug").formfield(
        label="Slug",
        help_text="Lower-case letters, digits and hyphens: the organisation's address in the "
        "console and the API. It cannot be changed later.",
    )


@login_required
def org_create(request: HttpRequest) -> HttpResponse:
    """Create an organisation; the person creating it becomes its owner (as ``POST
    /api/v1/orgs/``)."""
    form = OrganizationCreateForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        assert isinstance(request.user, User)
        try:
            org = services.organization_create(owner=request.user, **form.cleaned_data)
        except ValidationError as error:
            add_service_error(form, error)
        else:
            messages.success(request, f"{org.name} is created; you are its owner.")
            return redirect("console:org-overview", org.slug)
    status = 400 if form.is_bound else 200
    return render(request, "console/account/org_create.html", {"form": form}, status=status)


class PasswordResetForm(auth_forms.PasswordResetForm):
    email = forms.EmailField(
        label="E-mail address",
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )


class PasswordResetView(auth_views.PasswordResetView):
    """Ask for a reset link by e-mail. Django's behaviour is kept: the same answer whether or not
    an account has the address; the mail goes only to active accounts with a password."""

    form_class = PasswordResetForm
    template_name = "console/account/password_reset_form.html"
    email_template_name = "console/account/password_reset_email.txt"
    subject_template_name = "console/account/password_reset_subject.txt"
    success_url = reverse_lazy("console:password-reset-done")

    def form_valid(self, form: Any) -> HttpResponse:
        # The link's host: VLINDERS_CONSOLE_URL when set, as for invitation links (a link built
        # from the request's Host header is only as trustworthy as ALLOWED_HOSTS).
        self.extra_email_context = {"console_url": settings.VLINDERS_CONSOLE_URL.rstrip("/")}
        return super().form_valid(form)


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "console/account/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "console/account/password_reset_confirm.html"
    success_url = reverse_lazy("console:password-reset-complete")


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "console/account/password_reset_complete.html"


urlpatterns = [
    path("orgs/new/", org_create, name="org-create"),
    path("password-reset/", PasswordResetView.as_view(), name="password-reset"),
    path("password-reset/sent/", PasswordResetDoneView.as_view(), name="password-reset-done"),
    path(
        "password-reset/<uidb64>/<token>/",
        PasswordResetConfirmView.as_view(),
        name="password-reset-confirm",
    ),
    path(
        "password-reset/done/",
        PasswordResetCompleteView.as_view(),
        name="password-reset-complete",
    ),
]
