"""The Django admin for the model catalog (platform staff).

Every save and delete goes through ``inference.services``, so the admin obeys the same rules as
the API and republishes the access snapshot; the forms run the services' validation so a broken
rule shows on the form instead of failing the request.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.widgets import AdminURLFieldWidget
from django.core.exceptions import ValidationError
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from inference import services, upstream_secrets
from inference.models import (
    CatalogModel,
    DeploymentRevision,
    ModelAlias,
    ModelAliasSplit,
    ModelDeploymentStatus,
    PlanModelPrice,
    ReplicaHours,
    ScalingWindow,
)
from inference.scaling_schedule import scaling_window_validate
from vlinders.admin_base import ReadOnlyAdmin


def _add_service_errors(form: forms.ModelForm[Any], error: ValidationError) -> None:
    for field, messages in error.message_dict.items():
        form.add_error(field if field in form.fields else None, messages)


def _adopt(obj: Model, created: Model) -> None:
    """Make the admin's unsaved ``obj`` stand for the row the service created."""
    for field in obj._meta.concrete_fields:
        setattr(obj, field.attname, getattr(created, field.attname))
    obj._state.adding = False
    obj._state.db = created._state.db


class CatalogModelAdminForm(forms.ModelForm):  # type: ignore[type-arg]
    upstream_base_url = forms.URLField(
        required=False,
        max_length=1024,
        assume_scheme="https",
        widget=AdminURLFieldWidget,
        help_text="OpenAI-compatible upstream, e.g. https://api.example.com/v1 (openai engine).",
    )
    # Not a model field of the form: the row holds a token, the form takes the plain key and
    # hands it to the service, which encrypts it. Never rendered back.
    upstream_api_key = forms.CharField(
        required=False,
        max_length=upstream_secrets.MAX_KEY_CHARS,
        strip=True,
        widget=forms.PasswordInput(render_value=False),
        help_text="Never shown. Leave blank to keep the current key.",
    )
    clear_upstream_api_key = forms.BooleanField(
        required=False, help_text="Remove the stored upstream API key."
    )

    class Meta:
        model = CatalogModel
        fields = (
            *(name for name in services.CATALOG_MODEL_FIELDS if name != "upstream_api_key"),
            "organizations",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        state = "A key is set" if self.instance.upstream_api_key else "No key is set"
        self.fields[
            "upstream_api_key"
        ].help_text = f"{state}. Never shown; leave blank to keep the current key."

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        # What the service is given for the key: {} keeps it, "" clears it, else the new plain
        # key. Taken out of cleaned_data so the form never copies it onto the row (the admin
        # lists the field, which would make the ModelForm treat it as the model's).
        key = data.pop("upstream_api_key", "")
        if data.get("clear_upstream_api_key"):
            self.upstream_api_key_change: dict[str, str] = {"upstream_api_key": ""}
        elif key:
            self.upstream_api_key_change = {"upstream_api_key": key}
        else:
            self.upstream_api_key_change = {}
        return data

    def _post_clean(self) -> None:
        super()._post_clean()  # type: ignore[misc]
        if self.errors:
            return
        # Validate the row as it will be stored: with the new key's token, or none.
        change = self.upstream_api_key_change
        if change:
            self.instance.upstream_api_key = upstream_secrets.encrypt(change["upstream_api_key"])
        try:
            services.catalog_model_validate(
                model=self.instance, organizations=self.cleaned_data.get("organizations", [])
            )
        except ValidationError as error:
            _add_service_errors(self, error)


class PlanModelPriceInline(admin.TabularInline):  # type: ignore[type-arg]
    """The price book's overrides of this model's prices, one row per plan (docs/billing.md,
    "Price book"). Like the catalog's own prices they reach the gateway with the next apply of
    the deployment spec (its ``plan_prices``, applied in place: nothing restarts); requests
    served before keep the prices their usage events carry."""

    model = PlanModelPrice
    extra = 0
    fields = ("plan", "price_input_per_mtok", "price_output_per_mtok", "updated_at")
    readonly_fields = ("updated_at",)
    verbose_name = "plan price (USD per million tokens)"
    verbose_name_plural = "plan prices: a plan listed here pays these instead of the catalog's"


class ScalingWindowFormSet(forms.BaseInlineFormSet):  # type: ignore[type-arg]
    """Checks each window against the model as it is being saved (its new ``max_replicas`` and
    ``scale_to_zero``): ``inference.scaling_schedule.scaling_window_validate``."""

    def clean(self) -> None:
        super().clean()
        for form in self.forms:
            data = getattr(form, "cleaned_data", None)
            if not data or data.get("DELETE") or data.get("min_replicas") is None:
                continue
            window = ScalingWindow(catalog_model=self.instance, min_replicas=data["min_replicas"])
            try:
                scaling_window_validate(window=window)
            except ValidationError as error:
                for message in error.messages:
                    form.add_error("min_replicas", message)


class ScalingWindowInline(admin.TabularInline):  # type: ignore[type-arg]
    """Scheduled scaling (docs/deployment-spec.md, "Scheduled scaling"): between the two times
    (platform time zone; a window ending earlier than it starts wraps past midnight), at least
    this many replicas instead of the model's own minimum. The scheduler applies it within a
    minute, in place (nothing restarts); where windows overlap, the largest minimum wins."""

    model = ScalingWindow
    formset = ScalingWindowFormSet
    extra = 0
    fields = ("starts_at", "ends_at", "min_replicas")
    verbose_name = "scaling window (platform time zone)"
    verbose_name_plural = "scheduled scaling: minimum replicas by time of day"


@admin.register(CatalogModel)
class CatalogModelAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    form = CatalogModelAdminForm
    inlines = (PlanModelPriceInline, ScalingWindowInline)
    list_display = (
        "name",
        "engine_kind",
        "status",
        "visibility",
        "min_replicas",
        "max_replicas",
        "context_length",
        "updated_at",
    )
    list_filter = ("engine_kind", "status", "visibility")
    search_fields = ("name", "description", "source_path", "upstream_model")
    readonly_fields = ("id", "created_at", "updated_at")
    filter_horizontal = ("organizations",)
    fieldsets = (
        (None, {"fields": ("id", "name", "description", "status")}),
        (
            "Engine",
            {
                "fields": (
                    "engine_kind",
                    "source_path",
                    "upstream_base_url",
                    "upstream_model",
                    "upstream_api_key",
                    "clear_upstream_api_key",
                    "engine_args",
                    "context_length",
                )
            },
        ),
        ("Price per million tokens", {"fields": ("price_input_per_mtok", "price_output_per_mtok")}),
        # The operator's own cost, for the margin report (docs/billing.md, "Operator reports").
        ("Cost", {"fields": ("cost_per_replica_hour",)}),
        ("Response cache", {"fields": ("cache_ttl_s", "price_cache_hit_per_mtok")}),
        (
            "Scaling",
            {
                "fields": (
                    "min_replicas",
                    "max_replicas",
                    "scale_to_zero",
                    "target_ongoing_requests",
                    "replica_cpus",
                    "replica_gpus",
                    "accelerator_type",
                    "request_router",
                )
            },
        ),
        ("Access", {"fields": ("visibility", "organizations")}),
        ("History", {"fields": ("created_at", "updated_at")}),
    )

    def save_model(self, request: HttpRequest, obj: CatalogModel, form: Any, change: bool) -> None:
        fields = {
            name: getattr(obj, name)
            for name in services.CATALOG_MODEL_FIELDS
            if name != "upstream_api_key"
        }
        fields |= form.upstream_api_key_change
        organizations = list(form.cleaned_data.get("organizations", []))
        if change:
            services.catalog_model_update(model=obj, organizations=organizations, **fields)
        else:
            _adopt(obj, services.catalog_model_create(organizations=organizations, **fields))

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        # The service already set the organisations; only the plan prices' formset remains.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)
            if formset.has_changed() and formset.model is ScalingWindow:
                self.message_user(
                    request,
                    "Scaling windows saved: the scheduler applies them within a minute.",
                )
            elif formset.has_changed():
                self.message_user(
                    request,
                    "Plan prices saved: they apply to requests once the catalog is applied to "
                    "the data plane (manage.py serve apply).",
                )

    def delete_model(self, request: HttpRequest, obj: CatalogModel) -> None:
        services.catalog_model_delete(model=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[CatalogModel]) -> None:
        services.catalog_models_delete(models=list(queryset))


class ModelAliasAdminForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = ModelAlias
        fields = ("name", "target", "weight", "description")

    def _post_clean(self) -> None:
        super()._post_clean()  # type: ignore[misc]
        if self.errors:
            return
        try:
            services.model_alias_validate(alias=self.instance)
        except ValidationError as error:
            _add_service_errors(self, error)


class ModelAliasSplitFormSet(forms.BaseInlineFormSet):  # type: ignore[type-arg]
    """The splits as a whole, with the alias's primary target and weight as the form above
    left them, checked by the services' rule (``model_alias_splits_validate``)."""

    def splits(self) -> list[tuple[CatalogModel, int]]:
        rows = [getattr(form, "cleaned_data", None) for form in self.forms]
        return [
            (row["catalog_model"], row["weight"])
            for row in rows
            if row and not row.get("DELETE") and row.get("catalog_model") is not None
        ]

    def clean(self) -> None:
        super().clean()
        if any(self.errors):
            return
        try:
            services.model_alias_splits_validate(alias=self.instance, splits=self.splits())
        except ValidationError as error:
            raise ValidationError(error.messages) from None


class ModelAliasSplitInline(admin.TabularInline):  # type: ignore[type-arg]
    """A weighted alias's further targets (docs/model-catalog.md, "Weighted aliases"): each
    takes ``weight / total`` of the requests (the primary target's weight included); 0 drains
    it. Saved through the services, applied to the gateway in place with the next apply."""

    model = ModelAliasSplit
    formset = ModelAliasSplitFormSet
    fk_name = "alias"
    extra = 0
    fields = ("catalog_model", "weight")
    autocomplete_fields = ("catalog_model",)
    verbose_name = "weighted target"
    verbose_name_plural = "weighted targets (canary, A/B): besides the primary target"


@admin.register(ModelAlias)
class ModelAliasAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    form = ModelAliasAdminForm
    inlines = (ModelAliasSplitInline,)
    list_display = ("name", "target", "weight", "created_at")
    list_select_related = ("target",)
    search_fields = ("name", "target__name", "description")
    autocomplete_fields = ("target",)
    readonly_fields = ("id", "created_at")

    def save_model(self, request: HttpRequest, obj: ModelAlias, form: Any, change: bool) -> None:
        if change:
            services.model_alias_update(
                alias=obj,
                name=obj.name,
                target=obj.target,
                description=obj.description,
                weight=obj.weight,
            )
        else:
            _adopt(
                obj,
                services.model_alias_create(
                    name=obj.name, target=obj.target, description=obj.description, weight=obj.weight
                ),
            )

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        # The splits go through the service (validated whole, the snapshot republished), not
        # the formset's own save.
        for formset in formsets:
            if isinstance(formset, ModelAliasSplitFormSet) and formset.has_changed():
                services.model_alias_splits_set(alias=form.instance, splits=formset.splits())
            # What the admin's change message reads of a saved formset (the service saved it).
            formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []

    def delete_model(self, request: HttpRequest, obj: ModelAlias) -> None:
        services.model_alias_delete(alias=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ModelAlias]) -> None:
        services.model_aliases_delete(aliases=list(queryset))


# --- Deployments (read-only: written by deployment_apply and the reconciler) ------------------


@admin.register(DeploymentRevision)
class DeploymentRevisionAdmin(ReadOnlyAdmin):
    list_display = ("short_revision", "outcome", "applied_by", "created_at", "finished_at")
    list_filter = ("outcome",)
    search_fields = ("revision", "error")
    list_select_related = ("applied_by",)
    # ``config`` itself is not shown: it holds upstream API keys, which the admin never shows.
    fields = (
        "revision",
        "config_hash",
        "outcome",
        "error",
        "applied_by",
        "created_at",
        "finished_at",
        "shown_config",
    )
    readonly_fields = fields

    @admin.display(description="revision")
    def short_revision(self, obj: DeploymentRevision) -> str:
        return obj.revision[:12]

    @admin.display(description="config")
    def shown_config(self, obj: DeploymentRevision) -> str:
        """Configs hold no secret (upstream keys travel through Redis; migration 0005 removed
        them from revisions recorded before)."""
        return format_html("<pre>{}</pre>", json.dumps(obj.config, indent=2))


@admin.register(ModelDeploymentStatus)
class ModelDeploymentStatusAdmin(ReadOnlyAdmin):
    list_display = (
        "catalog_model",
        "deployment",
        "state",
        "replicas_running",
        "replicas_target",
        "short_revision",
        "updated_at",
    )
    list_filter = ("state",)
    list_select_related = ("catalog_model",)
    search_fields = ("catalog_model__name", "deployment", "message")
    readonly_fields = (
        "catalog_model",
        "deployment",
        "state",
        "replicas_running",
        "replicas_target",
        "message",
        "revision",
        "updated_at",
    )

    @admin.display(description="revision")
    def short_revision(self, obj: ModelDeploymentStatus) -> str:
        return obj.revision[:12]


@admin.register(ReplicaHours)
class ReplicaHoursAdmin(ReadOnlyAdmin):
    """What the reconciler accumulated (``inference.replica_hours``): read-only, as it is
    measured, not entered."""

    list_display = ("catalog_model", "hour", "replica_seconds", "replica_hours")
    list_select_related = ("catalog_model",)
    list_filter = ("catalog_model",)
    date_hierarchy = "hour"
    readonly_fields = ("catalog_model", "hour", "replica_seconds")

    @admin.display(description="replica-hours")
    def replica_hours(self, obj: ReplicaHours) -> str:
        return f"{obj.replica_seconds / 3600:.3f}"
