"""The playground page (being built)."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

from console.scoping import OrgContext, org_page
from tenants.roles import USE


@org_page(read=USE, write=USE)
def playground(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    return render(request, "console/placeholder.html", {"section": "playground"})


urlpatterns = [path("playground/", playground, name="org-playground")]
