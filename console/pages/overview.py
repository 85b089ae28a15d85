"""Overview, models and limits pages (being built)."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

from console.scoping import OrgContext, org_page


@org_page()
def overview(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    return render(request, "console/placeholder.html", {"section": "overview"})


@org_page()
def models(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    return render(request, "console/placeholder.html", {"section": "models"})


@org_page()
def limits(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    return render(request, "console/placeholder.html", {"section": "limits"})


urlpatterns = [
    path("", overview, name="org-overview"),
    path("models/", models, name="org-models"),
    path("limits/", limits, name="org-limits"),
]
