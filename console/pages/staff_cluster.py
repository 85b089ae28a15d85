"""Operator console: Cluster (``/staff/cluster/``). Being built; see docs/console.md."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

from console.staff import staff_page


@staff_page
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "console/placeholder.html", {"section": "Cluster"})


urlpatterns = [path("cluster/", index, name="staff-cluster")]
