"""Usage, requests and audit-log pages (being built)."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

from console.scoping import OrgContext, org_page
from tenants.roles import MANAGE


@org_page()
def usage(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    from console import views  # the month page, until this module's usage page replaces it

    return views.org_usage(request, ctx.organization.slug)


@org_page()
def requests(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    return render(request, "console/placeholder.html", {"section": "requests"})


@org_page(read=MANAGE)
def audit(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    return render(request, "console/placeholder.html", {"section": "audit"})


urlpatterns = [
    path("usage/", usage, name="org-usage"),
    path("requests/", requests, name="org-requests"),
    path("audit/", audit, name="org-audit"),
]
