"""Members and invitations pages (being built)."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

from console.scoping import OrgContext, org_page


@org_page()
def members(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    return render(request, "console/placeholder.html", {"section": "members"})


urlpatterns = [path("members/", members, name="org-members")]
