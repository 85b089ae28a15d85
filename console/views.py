"""Console pages. For now: sign-in and a landing page that points at the API and the admin."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from tenants.selectors import organizations_for_user


@login_required
def home(request: HttpRequest) -> HttpResponse:
    organizations = organizations_for_user(request.user).order_by("slug")
    return render(request, "console/home.html", {"organizations": organizations})
