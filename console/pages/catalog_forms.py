"""Forms of the operator console's model catalog pages (``console.pages.staff_catalog``).

They parse what the operator typed into typed values; every rule of the catalog stays in
``inference.services`` (``catalog_model_validate``), the price book's in ``inference.plan_prices``
and the engine arguments' in their JSON Schema (``console.pages.engine_args_form``). A service's
``ValidationError`` is put next to the field it names (``show_service_errors``).

Stable field names (the browser tests rely on them): the catalog's own field names
(``name``, ``engine_kind``, ``source_path``, ``context_length``, ``price_input_per_mtok``, …),
``upstream_api_key`` (write-only) and ``clear_upstream_api_key``, ``organizations`` (pks), the
plans' prices ``plan_<plan>_price_input_per_mtok`` / ``plan_<plan>_price_output_per_mtok`` (both
empty: the plan pays the catalog's prices), and the engine arguments ``ea-<argument>`` plus
``ea-extra``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.urls import reverse_lazy

from inference import services, upstream_secrets
from inference.catalog_changes import LOAD_FIELDS
from inference.models import CatalogModel, EngineKind, ModelAlias, RequestRouter
from tenants.models import Organization
from tenants.plans import Plan

# The catalog fields the form edits as typed inputs, grouped as the page shows them. The source
# fields are shown for the engine kinds that use them (``source_fields_for``).
GENERAL_FIELDS = ("name", "description", "status")
SOURCE_FIELDS = ("source_path", "upstream_base_url", "upstream_model")
PRICE_FIELDS = ("price_input_per_mtok", "price_output_per_mtok")
COST_FIELDS = ("cost_per_replica_hour",)
CACHE_FIELDS = ("cache_ttl_s", "price_cache_hit_per_mtok")
SCALING_FIELDS = (
    "min_replicas",
    "max_replicas",
    "scale_to_zero",
    "target_ongoing_requests",
    "replica_cpus",
    "replica_gpus",
    "accelerator_type",
    "request_router",
)

# Labels and help the model's fields lack (the rest come from the model).
_LABELS = {
    "context_length": (
        "Context length (tokens)",
        "What the model advertises; the gateway "
        "reserves against it and vLLM's max_model_len may not exceed it.",
    ),
    "price_input_per_mtok": ("Input price", "USD per million prompt tokens."),
    "price_output_per_mtok": ("Output price", "USD per million completion tokens."),
    "min_replicas": ("Min replicas", "0 only together with “scale to zero”."),
    "max_replicas": ("Max replicas", ""),
    "scale_to_zero": (
        "Scale to zero",
        "No replica while idle: the first request waits for a cold start. Needs min replicas 0.",
    ),
    "target_ongoing_requests": (
        "Target ongoing requests",
        "Autoscaling target: requests in flight per replica.",
    ),
    "replica_cpus": ("CPUs per replica", ""),
    "replica_gpus": ("GPUs per replica", "Fractions allowed for a single worker."),
    "accelerator_type": ("Accelerator type", "Ray's accelerator type (e.g. H100); empty: any."),
    "request_router": (
        "Request routing",
        "How requests are spread over the replicas. Prefix-cache affinity (vLLM models) sends "
        "a prompt to the replica that already holds its prefix; changing it restarts the "
        "model's replicas (docs/model-catalog.md).",
    ),
    "max_queued_requests": (
        "Max queued requests",
        "Per gateway replica; beyond it requests are refused at once with 503 and Retry-After.",
    ),
    "request_timeout_s": (
        "Request timeout (seconds)",
        "A request still running after it is cancelled and metered for what it produced.",
    ),
    "source_path": (
        "Source path",
        "On the Ray nodes: the model's folder (vLLM), or its .gguf file (llama.cpp).",
    ),
    "upstream_model": ("Upstream model", "The model name the upstream server knows."),
    "cache_ttl_s": (
        "Response cache TTL (seconds)",
        "How long an exact-match answer is replayed to an organisation that opted in; 0 turns "
        "the response cache off for this model (docs/response-cache.md).",
    ),
    "price_cache_hit_per_mtok": (
        "Cache-hit price",
        "USD per million tokens, input and output alike, of an answer replayed from the cache.",
    ),
}

_MODEL_FORM_FIELDS = (
    *GENERAL_FIELDS,
    "engine_kind",
    *SOURCE_FIELDS,
    "context_length",
    *PRICE_FIELDS,
    *COST_FIELDS,
    *CACHE_FIELDS,
    *SCALING_FIELDS,
    *LOAD_FIELDS,
    "visibility",
)


def plan_field(plan: str, price: str) -> str:
    """The form field of a plan's price: ``plan_<plan>_<price>``."""
    return f"plan_{plan}_{price}"


def source_fields_for(engine_kind: str) -> tuple[str, ...]:
    """The source fields the engine kind uses (the catalog service's rule, which also says that
    every other source field must be empty)."""
    allowed = services.ALLOWED_SOURCE.get(engine_kind, ())  # the rule, kept in one place
    return tuple(name for name in SOURCE_FIELDS if name in allowed)


def uses_upstream_key(engine_kind: str) -> bool:
    return "upstream_api_key" in services.ALLOWED_SOURCE.get(engine_kind, ())


def show_service_errors(form: forms.Form, error: ValidationError) -> None:
    """Put a service's ``ValidationError`` next to the fields it names (the rest on top)."""
    if not hasattr(error, "error_dict"):
        form.add_error(None, error)
        return
    for field, field_errors in error.error_dict.items():
        form.add_error(field if field in form.fields else None, field_errors)


class CatalogModelForm(forms.Form):
    """A catalog model's settings, except its engine arguments (``EngineArgsForm``)."""

    def __init__(self, *args: Any, model: CatalogModel | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model = model
        generated = [name for name in _MODEL_FORM_FIELDS if name != "upstream_base_url"]
        self.fields.update(forms.fields_for_model(CatalogModel, fields=generated))
        for name, (label, help_text) in _LABELS.items():
            self.fields[name].label = label
            self.fields[name].help_text = help_text or self.fields[name].help_text
        self.fields["description"].widget.attrs["rows"] = 2
        self.fields["request_router"].required = False  # not posted: Serve's default
        self.fields["upstream_base_url"] = forms.URLField(
            required=False,
            label="Upstream base URL",
            max_length=1024,
            assume_scheme="https",
            help_text="OpenAI-compatible upstream, e.g. https://api.example.com/v1.",
        )
        self.fields["upstream_api_key"] = forms.CharField(
            required=False,
            max_length=upstream_secrets.MAX_KEY_CHARS,
            label="Upstream API key",
            widget=forms.PasswordInput(render_value=False),
            help_text=(
                f"{'A key is set' if model is not None and model.upstream_api_key else 'No key'}"
                ". Never shown; leave empty to keep the current key."
            ),
        )
        self.fields["clear_upstream_api_key"] = forms.BooleanField(
            required=False, label="Remove the stored upstream API key"
        )
        self.fields["organizations"] = forms.ModelMultipleChoiceField(
            queryset=Organization.objects.order_by("name"),
            required=False,
            help_text="For visibility “Listed organisations only”: who may use the model "
            "(none listed: nobody yet). A public model lists none.",
        )
        for plan, label in Plan.choices:
            for price, what in (
                ("price_input_per_mtok", "input"),
                ("price_output_per_mtok", "output"),
            ):
                text = f"{label}: {what} price (USD per million tokens)"
                self.fields[plan_field(plan, price)] = forms.DecimalField(
                    required=False,
                    max_digits=12,
                    decimal_places=6,
                    min_value=Decimal(0),
                    label=text,
                    # Shown in a table without its label: the label is the input's name.
                    widget=forms.NumberInput(attrs={"aria-label": text}),
                )
        engine = self.fields["engine_kind"]
        engine.widget.attrs.update(
            {
                "hx-post": reverse_lazy("console:staff-model-engine-fields"),
                "hx-trigger": "change",
                "hx-target": "#engine-fields",
                "hx-swap": "outerHTML",
                "hx-include": "closest form",
            }
        )
        if model is None:
            self.initial.setdefault("engine_kind", EngineKind.VLLM)  # the fields shown first
        else:
            self.initial = {
                **{name: getattr(model, name) for name in _MODEL_FORM_FIELDS},
                "organizations": list(model.organizations.all()),
                **{
                    plan_field(row.plan, price): getattr(row, price)
                    for row in model.plan_prices.all()
                    for price in PRICE_FIELDS
                },
                **self.initial,
            }

    # Groups of bound fields for the template.
    def _group(self, names: tuple[str, ...]) -> list[forms.BoundField]:
        return [self[name] for name in names]

    @property
    def general_fields(self) -> list[forms.BoundField]:
        return self._group(GENERAL_FIELDS)

    @property
    def price_fields(self) -> list[forms.BoundField]:
        return self._group(PRICE_FIELDS)

    @property
    def plan_price_rows(self) -> list[tuple[str, forms.BoundField, forms.BoundField]]:
        return [
            (
                label,
                self[plan_field(plan, "price_input_per_mtok")],
                self[plan_field(plan, "price_output_per_mtok")],
            )
            for plan, label in Plan.choices
        ]

    @property
    def cost_fields(self) -> list[forms.BoundField]:
        return self._group(COST_FIELDS)

    @property
    def cache_fields(self) -> list[forms.BoundField]:
        return self._group(CACHE_FIELDS)

    @property
    def scaling_fields(self) -> list[forms.BoundField]:
        return self._group(SCALING_FIELDS + LOAD_FIELDS)

    def engine_kind_value(self) -> str:
        """The engine kind the form shows (posted, else initial, else vLLM)."""
        value = self["engine_kind"].value()
        return value if value in EngineKind.values else EngineKind.VLLM

    def source_bound_fields(self, engine_kind: str) -> list[forms.BoundField]:
        return [self[name] for name in source_fields_for(engine_kind)]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        for plan, _label in Plan.choices:
            names = [plan_field(plan, price) for price in PRICE_FIELDS]
            given = [data.get(name) is not None for name in names]
            if any(given) and not all(given):
                for name, present in zip(names, given, strict=True):
                    if not present:
                        self.add_error(name, "Give both prices, or neither (catalog prices).")
        return data

    # What the services are given.
    def service_fields(self) -> dict[str, Any]:
        """The ``catalog_model_create``/``_update`` keyword arguments (without ``engine_args``
        and ``organizations``): every edited field; source fields the engine kind does not use
        are emptied (the service refuses them otherwise), the upstream key is sent only when
        given, cleared or no longer used by the engine."""
        data = self.cleaned_data
        kind = data["engine_kind"]
        fields = {
            name: data[name]
            for name in _MODEL_FORM_FIELDS
            if name in services.CATALOG_MODEL_FIELDS and name != "name"
        }
        fields["request_router"] = data.get("request_router") or RequestRouter.DEFAULT
        for name in SOURCE_FIELDS:
            if name not in source_fields_for(kind):
                fields[name] = ""
        has_key = self.model is not None and bool(self.model.upstream_api_key)
        if not uses_upstream_key(kind) or data.get("clear_upstream_api_key"):
            if has_key:
                fields["upstream_api_key"] = ""
        elif data.get("upstream_api_key"):
            fields["upstream_api_key"] = data["upstream_api_key"]
        return fields

    def load_fields(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in LOAD_FIELDS}

    def plan_prices(self) -> list[dict[str, Any]]:
        """The rows for ``plan_prices.plan_prices_set`` (plans with both prices given)."""
        rows = []
        for plan, _label in Plan.choices:
            price_in = self.cleaned_data.get(plan_field(plan, "price_input_per_mtok"))
            price_out = self.cleaned_data.get(plan_field(plan, "price_output_per_mtok"))
            if price_in is not None and price_out is not None:
                rows.append(
                    {
                        "plan": plan,
                        "price_input_per_mtok": price_in,
                        "price_output_per_mtok": price_out,
                    }
                )
        return rows


class ModelAliasForm(forms.Form):
    """An alias: a public name, the model it points at, a description; with weighted targets
    (``splits``, one ``model = weight`` a line), a canary or an A/B test (docs/model-catalog.md,
    "Weighted aliases"). The services check the weights as a whole."""

    name = forms.CharField(max_length=128, help_text="Another public name clients may use.")
    target = forms.ModelChoiceField(
        queryset=CatalogModel.objects.order_by("name"),
        help_text="The catalog model this name serves.",
    )
    weight = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=10000,
        initial=100,
        help_text="The model's weight when the alias has weighted targets below (else unused); "
        "empty keeps it (100 for a new alias).",
    )
    splits = forms.CharField(
        required=False,
        label="Weighted targets",
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "new-model = 10"}),
        help_text="Further models, one “model = weight” a line (a canary: 10 beside a weight of "
        "90 above). Each gets weight / total of the requests; 0 drains it; empty: a plain alias.",
    )
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, *args: Any, alias: ModelAlias | None = None, **kwargs: Any) -> None:
        if alias is not None:
            kwargs["initial"] = {
                "name": alias.name,
                "target": alias.target,
                "weight": alias.weight,
                "splits": "\n".join(
                    f"{row.catalog_model.name} = {row.weight}"
                    for row in alias.splits.select_related("catalog_model").order_by(
                        "catalog_model__name"
                    )
                ),
                "description": alias.description,
                **(kwargs.get("initial") or {}),
            }
        super().__init__(*args, **kwargs)

    def clean_splits(self) -> list[tuple[CatalogModel, int]]:
        """``model = weight`` lines -> (model, weight) pairs; the rules are the services'."""
        pairs: list[tuple[CatalogModel, int]] = []
        errors: list[str] = []
        for number, line in enumerate(str(self.cleaned_data["splits"]).splitlines(), start=1):
            if not line.strip():
                continue
            name, sep, weight = line.rpartition("=")
            model = CatalogModel.objects.filter(name=name.strip()).first() if sep else None
            if not sep or not weight.strip().isdigit():
                errors.append(f"Line {number}: write “model = weight” (a whole number).")
            elif model is None:
                errors.append(f"Line {number}: no catalog model is named “{name.strip()}”.")
            else:
                pairs.append((model, int(weight)))
        if errors:
            raise forms.ValidationError(errors)
        return pairs


class ConfirmForm(forms.Form):
    """The confirmation step of a destructive action: it happens only with ``confirm=yes``."""

    confirm = forms.ChoiceField(choices=[("yes", "yes")])
