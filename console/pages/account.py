"""Account pages: creating an organisation, password reset (being built)."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path


@login_required
def org_create(request: HttpRequest) -> HttpResponse:
    return render(request, "console/placeholder.html", {"section": "new organisation"})


urlpatterns = [path("orgs/new/", org_create, name="org-create")]
