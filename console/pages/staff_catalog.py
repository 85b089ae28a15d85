"""Operator console: the model catalog (``/staff/models/``; docs/operator-console.md, "Model
catalog").

* ``staff-models``: every catalog model (engine, status, visibility, what Ray last reported of its
  deployment, replicas running/target, scaling, prices) and every alias;
* ``staff-model-create`` (``/staff/models/new/``) and ``staff-model-edit``
  (``/staff/models/<uuid>/``; by primary key, as public names may contain ``/``): all catalog
  fields, the engine arguments as a form generated from the engine kind's JSON Schema
  (``console.pages.engine_args_form``), the catalog's and each plan's prices, scaling, visibility;
* ``staff-model-engine-fields``: the engine section of that form for another engine kind (htmx
  swaps it in when the kind changes; without JavaScript a button asks for it);
* ``staff-model-status`` (disable/enable) and ``staff-model-delete``: a confirmation page, then a
  POST with ``confirm=yes``;
* ``staff-alias-create``, ``staff-alias-edit``, ``staff-alias-delete``: aliases.

Contract: views are thin. Models and aliases are written only by ``inference.services``
(``catalog_model_*``, ``model_alias_*``; the management API and the admin call the same ones),
plan prices by ``inference.plan_prices.plan_prices_set`` in the same transaction as the model, as
the API does; ``inference.catalog_changes`` calls them and writes the audit record of each change
(platform-level: no organisation). A POST that fails validation answers 400 with every error
next to its field and writes nothing. Catalog edits reach the data plane with the next apply of
the deployment spec (``staff-deploy``): each page says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django import forms as django_forms
from django.contrib import messages
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_http_methods

from console.pages.catalog_forms import (
    CatalogModelForm,
    ConfirmForm,
    ModelAliasForm,
    show_service_errors,
    uses_upstream_key,
)
from console.pages.engine_args_form import EngineArgsForm
from console.pages.staff_billing import Table
from console.staff import staff_page
from inference import catalog_changes
from inference.models import CatalogModel, ModelAlias, ModelDeploymentStatus

SWITCH_ENGINE = "_switch_engine"
_MULTIPLE = (django_forms.MultipleChoiceField, django_forms.ModelMultipleChoiceField)


# --- the list ----------------------------------------------------------------------------------


def _price(value: Any) -> str:
    return f"{value:f}"


def _deployment(model: CatalogModel) -> tuple[str, str]:
    """The deployment state and ``running/target`` replicas Ray last reported (the
    reconciler's ``ModelDeploymentStatus``), or that it has reported nothing yet."""
    try:
        status: ModelDeploymentStatus = model.deployment_status
    except ObjectDoesNotExist:
        return "not reported yet", "—"
    return status.get_state_display(), f"{status.replicas_running}/{status.replicas_target}"


def _schedule(model: CatalogModel) -> str:
    """The model's scaling windows (platform time zone) and the minimum the scheduler set now
    (``scheduled_min_replicas``; docs/deployment-spec.md, "Scheduled scaling"), or "—"."""
    windows = [
        f"{w.starts_at:%H:%M} to {w.ends_at:%H:%M} min {w.min_replicas}"
        for w in model.scaling_windows.all()
    ]
    if not windows and model.scheduled_min_replicas is None:
        return "—"
    now = (
        f"now min {model.scheduled_min_replicas}"
        if model.scheduled_min_replicas is not None
        else "now the catalog's minimum"
    )
    return "; ".join(windows) + f" ({now})"


def models_table(models: list[CatalogModel]) -> Table:
    rows: list[tuple[list[Any], str | None]] = []
    for model in models:
        state, replicas = _deployment(model)
        overrides = sorted(row.plan for row in model.plan_prices.all())
        rows.append(
            (
                [
                    model.name,
                    model.engine_kind,
                    "enabled" if model.status == CatalogModel.Status.ACTIVE else "disabled",
                    "public"
                    if model.visibility == "public"
                    else f"restricted ({len(model.organizations.all())} organisations)",
                    state,
                    replicas,
                    f"{model.min_replicas} to {model.max_replicas}"
                    + (" (scales to zero)" if model.scale_to_zero else ""),
                    _schedule(model),
                    _price(model.price_input_per_mtok),
                    _price(model.price_output_per_mtok),
                    ", ".join(overrides) or "—",
                    ", ".join(sorted(alias.name for alias in model.aliases.all())) or "—",
                ],
                reverse("console:staff-model-edit", args=[model.pk]),
            )
        )
    return Table(
        name="models",
        headers=(
            "Model",
            "Engine",
            "Status",
            "Visibility",
            "Deployment",
            "Replicas (running/target)",
            "Scaling (min to max)",
            "Schedule (minimum by time of day)",
            "Input (USD/1M tok)",
            "Output (USD/1M tok)",
            "Plan prices",
            "Aliases",
        ),
        numeric=(False, False, False, False, False, True, True, False, True, True, False, False),
        rows=rows,
        empty="No models in the catalog yet.",
    )


def _alias_targets(alias: ModelAlias) -> str:
    """The alias's model, or for a weighted alias each target with its share of requests."""
    splits = list(alias.splits.all())
    if not splits:
        return alias.target.name
    targets = [(alias.target.name, alias.weight)]
    targets += sorted((split.catalog_model.name, split.weight) for split in splits)
    total = sum(weight for _, weight in targets) or 1
    return ", ".join(f"{name} {weight * 100 / total:.4g}%" for name, weight in targets)


def aliases_table(aliases: list[ModelAlias]) -> Table:
    return Table(
        name="aliases",
        headers=("Alias", "Model", "Description"),
        numeric=(False, False, False),
        rows=[
            (
                [alias.name, _alias_targets(alias), alias.description],
                reverse("console:staff-alias-edit", args=[alias.pk]),
            )
            for alias in aliases
        ],
        empty="No aliases.",
    )


@staff_page
def index(request: HttpRequest) -> HttpResponse:
    models = list(
        CatalogModel.objects.select_related("deployment_status")
        .prefetch_related("plan_prices", "aliases", "organizations", "scaling_windows")
        .order_by("name")
    )
    aliases = list(
        ModelAlias.objects.select_related("target")
        .prefetch_related("splits__catalog_model")
        .order_by("name")
    )
    return render(
        request,
        "console/staff/models.html",
        {
            "section": "models",
            "models": models_table(models),
            "aliases": aliases_table(aliases),
        },
    )


# --- create and edit ---------------------------------------------------------------------------


@dataclass
class ModelForms:
    """The two forms of the model page: the settings and the engine arguments."""

    form: CatalogModelForm
    engine: EngineArgsForm

    def is_valid(self) -> bool:
        return all([self.form.is_valid(), self.engine.is_valid()])


def _initial_from(form: Any, data: QueryDict) -> dict[str, Any]:
    """What was typed into ``form``'s fields, as initial values of an unbound form (a form
    redrawn for another engine kind shows what was typed, without error messages)."""
    initial: dict[str, Any] = {}
    for name, field in form.fields.items():
        key = form.add_prefix(name)
        if key not in data:
            continue
        if isinstance(field, _MULTIPLE):
            initial[name] = data.getlist(key)
        else:
            initial[name] = data.get(key)
    return initial


def _forms(request: HttpRequest, model: CatalogModel | None) -> tuple[ModelForms, bool]:
    """The page's forms: bound to a POST, unbound (with what was typed) when the POST only
    asks to redraw for another engine kind (then the second value is ``True``)."""
    if request.method != "POST":
        form = CatalogModelForm(model=model)
        kind = form.engine_kind_value()
        args = model.engine_args if model is not None and model.engine_kind == kind else None
        return ModelForms(form, EngineArgsForm(engine_kind=kind, engine_args=args)), False
    if SWITCH_ENGINE in request.POST:
        return _redrawn(request.POST, model), True
    form = CatalogModelForm(request.POST, model=model)
    engine = EngineArgsForm(request.POST, engine_kind=form.engine_kind_value())
    return ModelForms(form, engine), False


def _redrawn(data: QueryDict, model: CatalogModel | None) -> ModelForms:
    probe = CatalogModelForm(model=model)
    form = CatalogModelForm(model=model, initial=_initial_from(probe, data))
    kind = form.engine_kind_value()
    engine = EngineArgsForm(engine_kind=kind)
    engine.initial.update(_initial_from(engine, data))
    return ModelForms(form, engine)


def _save(request: HttpRequest, forms: ModelForms, model: CatalogModel | None) -> CatalogModel:
    """Write through the catalog's services, audited (``inference.catalog_changes``), in one
    transaction: the model, its load fields and its plan prices. Raises the services'
    ``ValidationError``; nothing is written then."""
    form = forms.form
    return catalog_changes.catalog_model_save(
        actor=request.user,
        model=model,
        name=form.cleaned_data["name"],
        fields=form.service_fields() | {"engine_args": forms.engine.cleaned_data["engine_args"]},
        organizations=list(form.cleaned_data["organizations"]),
        load=form.load_fields(),
        prices=form.plan_prices(),
    )


def _show_errors(forms: ModelForms, error: ValidationError) -> None:
    """A service's errors next to their fields: the engine arguments' on the engine form."""
    if not hasattr(error, "error_dict"):
        forms.form.add_error(None, error)
        return
    engine_args = error.error_dict.pop("engine_args", None)
    if engine_args:
        forms.engine.add_schema_errors(ValidationError({"engine_args": engine_args}))
    plan = error.error_dict.pop("plan_prices", None)
    if plan:
        forms.form.add_error(None, plan)
    if error.error_dict:
        show_service_errors(forms.form, error)


def _engine_context(forms: ModelForms) -> dict[str, Any]:
    """What ``model_engine.html`` shows: the engine kind's source fields and arguments."""
    kind = forms.engine.engine_kind
    return {
        "form": forms.form,
        "engine": forms.engine,
        "engine_kind": kind,
        "source_fields": forms.form.source_bound_fields(kind),
        "uses_upstream_key": uses_upstream_key(kind),
    }


def _model_page(
    request: HttpRequest, model: CatalogModel | None, forms: ModelForms, status: int
) -> HttpResponse:
    context: dict[str, Any] = {
        "section": "models",
        "model": model,
        "creating": model is None,
        **_engine_context(forms),
    }
    if model is not None:
        context["aliases"] = list(model.aliases.order_by("name"))
        try:
            context["deployment"] = model.deployment_status
        except ObjectDoesNotExist:
            context["deployment"] = None
    return render(request, "console/staff/model_form.html", context, status=status)


def _model_form_view(request: HttpRequest, model: CatalogModel | None) -> HttpResponse:
    forms, redrawn = _forms(request, model)
    if request.method != "POST" or redrawn:
        return _model_page(request, model, forms, 200)
    if forms.is_valid():
        try:
            saved = _save(request, forms, model)
        except ValidationError as error:
            _show_errors(forms, error)
        else:
            verb = "Added" if model is None else "Saved"
            messages.success(
                request,
                f"{verb} “{saved.name}”. It reaches the gateway with the next apply (Deploy).",
            )
            return redirect("console:staff-model-edit", saved.pk)
    if model is not None:
        model.refresh_from_db()  # the page shows the stored row, not a half-applied one
    return _model_page(request, model, forms, 400)


@staff_page
@require_http_methods(["GET", "POST"])
def model_create(request: HttpRequest) -> HttpResponse:
    return _model_form_view(request, None)


@staff_page
@require_http_methods(["GET", "POST"])
def model_edit(request: HttpRequest, pk: UUID) -> HttpResponse:
    model = get_object_or_404(CatalogModel.objects.prefetch_related("plan_prices"), pk=pk)
    return _model_form_view(request, model)


@staff_page
@require_http_methods(["GET", "POST"])
def model_engine_fields(request: HttpRequest) -> HttpResponse:
    """The engine section (source fields and engine arguments) for the engine kind in the
    request, filled with what was typed (htmx posts the whole form here when the kind
    changes). Writes nothing."""
    data = request.POST if request.method == "POST" else request.GET
    model = None
    model_id = data.get("model_id", "")
    if model_id:
        try:
            model = CatalogModel.objects.filter(pk=UUID(model_id)).first()
        except ValueError:
            model = None
    forms = _redrawn(data, model)
    return render(request, "console/staff/model_engine.html", _engine_context(forms))


# --- disable/enable, delete --------------------------------------------------------------------


def _confirm_page(request: HttpRequest, context: dict[str, Any], status: int = 200) -> HttpResponse:
    return render(
        request, "console/staff/model_confirm.html", {"section": "models", **context}, status=status
    )


@staff_page
@require_http_methods(["GET", "POST"])
def model_status(request: HttpRequest, pk: UUID) -> HttpResponse:
    """Disable (take it out of the deployment, refuse its requests) or enable a model: asks
    first; a POST with ``confirm=yes`` and ``status`` changes it."""
    model = get_object_or_404(CatalogModel, pk=pk)
    source = request.POST if request.method == "POST" else request.GET
    wanted = source.get("status", "")
    if wanted not in CatalogModel.Status.values:
        wanted = (
            CatalogModel.Status.DISABLED
            if model.status == CatalogModel.Status.ACTIVE
            else CatalogModel.Status.ACTIVE
        )
    disabling = wanted == CatalogModel.Status.DISABLED
    context = {
        "model": model,
        "action": reverse("console:staff-model-status", args=[model.pk]),
        "title": f"{'Disable' if disabling else 'Enable'} “{model.name}”?",
        "button": "Disable model" if disabling else "Enable model",
        "danger": disabling,
        "hidden": {"status": wanted},
        "explain": (
            "With the next apply its deployment is removed and its replicas stop; the gateway "
            "then answers its name (and its aliases) with 404. Its settings, prices and aliases "
            "are kept."
            if disabling
            else "With the next apply it is deployed again and its name and aliases served."
        ),
        "back": reverse("console:staff-model-edit", args=[model.pk]),
    }
    if request.method == "POST" and ConfirmForm(request.POST).is_valid():
        if model.status == wanted:
            messages.info(request, f"“{model.name}” is already {model.get_status_display()}.")
            return redirect("console:staff-model-edit", model.pk)
        try:
            catalog_changes.catalog_model_status_set(actor=request.user, model=model, status=wanted)
        except ValidationError as error:
            context["errors"] = error.messages
            return _confirm_page(request, context, status=400)
        messages.success(
            request,
            f"{'Disabled' if disabling else 'Enabled'} “{model.name}”: it takes effect with the "
            "next apply (Deploy).",
        )
        return redirect("console:staff-model-edit", model.pk)
    return _confirm_page(request, context)


@staff_page
@require_http_methods(["GET", "POST"])
def model_delete(request: HttpRequest, pk: UUID) -> HttpResponse:
    """Remove a model and its aliases from the catalog: asks first."""
    model = get_object_or_404(CatalogModel, pk=pk)
    aliases = sorted(model.aliases.values_list("name", flat=True))
    if request.method == "POST" and ConfirmForm(request.POST).is_valid():
        name = model.name
        catalog_changes.catalog_model_remove(actor=request.user, model=model)
        messages.success(
            request,
            f"Deleted “{name}”. Its replicas stop with the next apply (Deploy).",
        )
        return redirect("console:staff-models")
    return _confirm_page(
        request,
        {
            "model": model,
            "action": reverse("console:staff-model-delete", args=[model.pk]),
            "title": f"Delete “{model.name}”?",
            "button": "Delete model",
            "danger": True,
            "hidden": {},
            "explain": (
                "The model, its plan prices"
                + (f" and its aliases ({', '.join(aliases)})" if aliases else "")
                + " leave the catalog now; with the next apply its deployment is removed. "
                "Usage already recorded keeps its prices. This cannot be undone (disabling can)."
            ),
            "back": reverse("console:staff-model-edit", args=[model.pk]),
        },
    )


# --- aliases -----------------------------------------------------------------------------------


def _alias_page(
    request: HttpRequest, form: ModelAliasForm, alias: ModelAlias | None, status: int
) -> HttpResponse:
    return render(
        request,
        "console/staff/model_alias_form.html",
        {"section": "models", "form": form, "alias": alias, "creating": alias is None},
        status=status,
    )


@staff_page
@require_http_methods(["GET", "POST"])
def alias_create(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        target_id = _uuid(request.GET.get("target"))
        target = CatalogModel.objects.filter(pk=target_id).first() if target_id else None
        return _alias_page(request, ModelAliasForm(initial={"target": target}), None, 200)
    form = ModelAliasForm(request.POST)
    if form.is_valid():
        try:
            alias = catalog_changes.model_alias_save(
                actor=request.user, alias=None, **form.cleaned_data
            )
        except ValidationError as error:
            show_service_errors(form, error)
        else:
            messages.success(
                request,
                f"Added the alias “{alias.name}” → {alias.target.name}. It reaches the gateway "
                "with the next apply (Deploy).",
            )
            return redirect("console:staff-models")
    return _alias_page(request, form, None, 400)


@staff_page
@require_http_methods(["GET", "POST"])
def alias_edit(request: HttpRequest, pk: UUID) -> HttpResponse:
    alias = get_object_or_404(ModelAlias.objects.select_related("target"), pk=pk)
    if request.method != "POST":
        return _alias_page(request, ModelAliasForm(alias=alias), alias, 200)
    form = ModelAliasForm(request.POST, alias=alias)
    if form.is_valid():
        try:
            alias = catalog_changes.model_alias_save(
                actor=request.user, alias=alias, **form.cleaned_data
            )
        except ValidationError as error:
            show_service_errors(form, error)
        else:
            messages.success(
                request,
                f"Saved the alias “{alias.name}”. It reaches the gateway with the next apply "
                "(Deploy).",
            )
            return redirect("console:staff-models")
    return _alias_page(request, form, alias, 400)


@staff_page
@require_http_methods(["GET", "POST"])
def alias_delete(request: HttpRequest, pk: UUID) -> HttpResponse:
    alias = get_object_or_404(ModelAlias.objects.select_related("target"), pk=pk)
    if request.method == "POST" and ConfirmForm(request.POST).is_valid():
        name = alias.name
        catalog_changes.model_alias_remove(actor=request.user, alias=alias)
        messages.success(request, f"Deleted the alias “{name}” (with the next apply).")
        return redirect("console:staff-models")
    return _confirm_page(
        request,
        {
            "model": alias.target,
            "action": reverse("console:staff-alias-delete", args=[alias.pk]),
            "title": f"Delete the alias “{alias.name}”?",
            "button": "Delete alias",
            "danger": True,
            "hidden": {},
            "explain": f"Clients can no longer call “{alias.name}” once the catalog is applied; "
            f"the model {alias.target.name} stays.",
            "back": reverse("console:staff-alias-edit", args=[alias.pk]),
        },
    )


def _uuid(value: str | None) -> UUID | None:
    try:
        return UUID(value or "")
    except ValueError:
        return None


urlpatterns = [
    path("models/", index, name="staff-models"),
    path("models/new/", model_create, name="staff-model-create"),
    path("models/engine-fields/", model_engine_fields, name="staff-model-engine-fields"),
    path("models/aliases/new/", alias_create, name="staff-alias-create"),
    path("models/aliases/<uuid:pk>/", alias_edit, name="staff-alias-edit"),
    path("models/aliases/<uuid:pk>/delete/", alias_delete, name="staff-alias-delete"),
    path("models/<uuid:pk>/", model_edit, name="staff-model-edit"),
    path("models/<uuid:pk>/status/", model_status, name="staff-model-status"),
    path("models/<uuid:pk>/delete/", model_delete, name="staff-model-delete"),
]
