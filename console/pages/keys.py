"""API keys pages (being built)."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

from console.scoping import OrgContext, org_page


@org_page()
def key_list(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    return render(request, "console/placeholder.html", {"section": "keys"})


urlpatterns = [path("keys/", key_list, name="org-keys")]
