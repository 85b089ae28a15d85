"""Operator console: Cluster (``/staff/cluster/``) — what Ray runs, and scaling a model.

- ``/staff/cluster/``: the Ray nodes (CPUs, GPUs and memory, used and total), each Serve
  deployment's replicas by state with its target and autoscaling bounds, and the requests
  ongoing and queued (``inference.cluster.cluster_overview``); below, the scale form.
- ``/staff/cluster/live/``: the same figures as a fragment, which the page polls with htmx
  every few seconds (``hx-trigger="every 5s"``). Ray unreachable: the fragment says so, never a
  500.
- ``POST /staff/cluster/scale/``: scale one catalog model — a fixed count (``replicas``) or
  autoscaling bounds (``min_replicas``, ``max_replicas``, and ``scale_to_zero`` to allow 0) —
  through ``inference.scaling.catalog_model_scale``, the service the management API calls too
  (store, audit, apply to Ray). A request the rules refuse answers 400 with the page and the
  errors next to the fields; a scale whose apply failed is stored, and the page says the apply
  failed and why.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_POST

from console.staff import staff_page
from inference.cluster import ClusterOverview, cluster_overview
from inference.models import CatalogModel
from inference.scaling import MAX_REPLICAS_LIMIT, catalog_model_scale

POLL_SECONDS = 5


class ScaleForm(forms.Form):
    """Which model, and either a fixed count or autoscaling bounds (not both)."""

    model = forms.ModelChoiceField(
        queryset=CatalogModel.objects.order_by("name"),
        to_field_name="name",
        empty_label="Choose a model",
        help_text="Disabled models are stored too; they are not deployed until enabled.",
    )
    replicas = forms.IntegerField(
        label="Fixed replicas",
        required=False,
        min_value=1,
        max_value=MAX_REPLICAS_LIMIT,
        help_text="A fixed count (no autoscaling). Leave empty to autoscale between min and max.",
    )
    min_replicas = forms.IntegerField(
        label="Min replicas", required=False, min_value=0, max_value=MAX_REPLICAS_LIMIT
    )
    max_replicas = forms.IntegerField(
        label="Max replicas", required=False, min_value=1, max_value=MAX_REPLICAS_LIMIT
    )
    scale_to_zero = forms.BooleanField(
        label="Scale to zero when idle",
        required=False,
        help_text="Needed for min replicas 0: the first request after an idle period waits for "
        "a replica to start.",
    )


def _service_errors(form: ScaleForm, error: ValidationError) -> None:
    """The service's errors next to the form's fields (``fixed`` is the form's ``replicas``)."""
    if not hasattr(error, "error_dict"):
        form.add_error(None, error)
        return
    for field, field_errors in error.error_dict.items():
        name = "replicas" if field == "fixed" else field
        form.add_error(name if name in form.fields else None, field_errors)


def _bounds(model: CatalogModel) -> str:
    """``2 replicas`` (fixed) or ``1 to 4 replicas`` (autoscaling)."""
    low, high = model.min_replicas, model.max_replicas
    if low == high:
        return f"{low} replica{'s' if low != 1 else ''}"
    return f"{low} to {high} replicas"


def _context(overview: ClusterOverview, form: ScaleForm) -> dict[str, Any]:
    return {
        "section": "cluster",
        "overview": overview,
        "totals": overview.totals() if overview.reachable else {},
        "form": form,
        "poll_seconds": POLL_SECONDS,
    }


@staff_page
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    initial = {"model": request.GET.get("model", "")}
    return render(
        request,
        "console/staff/cluster.html",
        _context(cluster_overview(), ScaleForm(initial=initial)),
    )


@staff_page
@require_GET
def live(request: HttpRequest) -> HttpResponse:
    overview = cluster_overview()
    return render(
        request,
        "console/staff/cluster_live.html",
        {"overview": overview, "totals": overview.totals() if overview.reachable else {}},
    )


@staff_page
@require_POST
def scale(request: HttpRequest) -> HttpResponse:
    form = ScaleForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        model: CatalogModel = data["model"]
        fixed = data["replicas"]
        try:
            outcome = catalog_model_scale(
                model=model,
                fixed=fixed,
                min_replicas=data["min_replicas"],
                max_replicas=data["max_replicas"],
                scale_to_zero=data["scale_to_zero"],
                actor=request.user,
            )
        except ValidationError as exc:
            _service_errors(form, exc)
        else:
            bounds = _bounds(outcome.model)
            if outcome.applied:
                messages.success(
                    request,
                    f"{model.name} scaled to {bounds}; Ray accepted the catalog "
                    f"(revision {outcome.revision.revision[:12]}). {outcome.capacity_note}",
                )
            else:
                messages.error(
                    request,
                    f"{model.name} is stored with {bounds}, but the apply to Ray failed: "
                    f"{outcome.revision.error} The next apply sends it.",
                )
            return redirect(
                f"{reverse('console:staff-cluster')}?{urlencode({'model': model.name})}"
            )
    return render(
        request, "console/staff/cluster.html", _context(cluster_overview(), form), status=400
    )


urlpatterns = [
    path("cluster/", index, name="staff-cluster"),
    path("cluster/live/", live, name="staff-cluster-live"),
    path("cluster/scale/", scale, name="staff-cluster-scale"),
]
