"""Reads of the model catalog."""

from __future__ import annotations

from typing import Literal

from django.db.models import Q, QuerySet

from inference.models import CatalogModel, EngineKind, ModelAlias, PlanModelPrice, Visibility
from tenants.catalog import AvailableModel
from tenants.models import Organization


def models_for_organization(organization: Organization) -> QuerySet[CatalogModel]:
    """Active models the organisation may use: public ones and those restricted to it."""
    return (
        CatalogModel.objects.filter(status=CatalogModel.Status.ACTIVE)
        .filter(Q(visibility=Visibility.PUBLIC) | Q(organizations=organization))
        .distinct()
    )


def aliases_for_organization(organization: Organization) -> QuerySet[ModelAlias]:
    """Aliases with a target the organisation may use at a weight above 0: the primary target
    or a split (a weighted alias). An alias never widens access: the gateway spreads an
    organisation's requests only over the targets it may use (docs/model-catalog.md,
    "Weighted aliases")."""
    usable = models_for_organization(organization)
    return (
        ModelAlias.objects.filter(
            Q(target__in=usable, weight__gt=0)
            | Q(splits__catalog_model__in=usable, splits__weight__gt=0)
        )
        .distinct()
        .select_related("target")
        .prefetch_related("splits__catalog_model")
    )


def alias_shown_target(alias: ModelAlias, usable: set[object]) -> CatalogModel:
    """The model an alias is described by (description, context length, prices) to an
    organisation that may use the models ``usable`` (their ids): its primary target when that
    takes traffic for it, else its heaviest split it may use, so a target the organisation may
    not use is never shown."""
    if alias.target_id in usable and alias.weight > 0:
        return alias.target
    splits = [s for s in alias.splits.all() if s.catalog_model_id in usable and s.weight > 0]
    if not splits:
        return alias.target
    return max(splits, key=lambda split: split.weight).catalog_model


def model_names_for_organization(organization: Organization) -> list[str]:
    """Every public name (models and aliases) the organisation may put in ``model``, sorted."""
    names = set(models_for_organization(organization).values_list("name", flat=True))
    names.update(aliases_for_organization(organization).values_list("name", flat=True))
    return sorted(names)


def available_models_for_organization(organization: Organization) -> list[AvailableModel]:
    """The models and aliases the organisation may use, with the target's description, context
    length and prices (an alias is sold at its target's price), sorted by name. The prices are
    the ones the organisation is charged: its plan's own prices of the model where the price
    book has them (``PlanModelPrice``), else the catalog's (the gateway's rule,
    ``RouteSpec.prices_for``)."""
    own = {
        row.catalog_model_id: row for row in PlanModelPrice.objects.filter(plan=organization.plan)
    }
    models = list(models_for_organization(organization))
    rows = [_available(model.name, "model", None, model, own.get(model.pk)) for model in models]
    usable: set[object] = {model.pk for model in models}
    for alias in aliases_for_organization(organization):
        shown = alias_shown_target(alias, usable)
        rows.append(_available(alias.name, "alias", shown.name, shown, own.get(shown.pk)))
    return sorted(rows, key=lambda row: row.name)


def _available(
    name: str,
    kind: Literal["model", "alias"],
    target: str | None,
    model: CatalogModel,
    own: PlanModelPrice | None = None,
) -> AvailableModel:
    prices: CatalogModel | PlanModelPrice = own if own is not None else model
    return AvailableModel(
        name=name,
        kind=kind,
        target=target,
        description=model.description,
        context_length=model.context_length,
        price_input_per_mtok=prices.price_input_per_mtok,
        price_output_per_mtok=prices.price_output_per_mtok,
    )


# The OpenAI endpoints a model serves, as far as the catalog can tell from its engine: vLLM runs
# one task per model (``engine_args.task``: ``generate`` by default, or ``embed``, vLLM's pooling
# runner), the synthetic engine generates text only; an ``openai`` upstream serves what the
# server behind it serves, which the catalog does not know.
GENERATE_ENDPOINTS = ("chat.completions", "completions")
EMBED_ENDPOINTS = ("embeddings",)


def model_endpoints(model: CatalogModel) -> tuple[str, ...] | None:
    """The endpoints ``model`` serves (``None``: the catalog cannot tell)."""
    if model.engine_kind == EngineKind.VLLM:
        task = (model.engine_args or {}).get("task") or "generate"
        return EMBED_ENDPOINTS if task == "embed" else GENERATE_ENDPOINTS
    if model.engine_kind in (EngineKind.SYNTHETIC, EngineKind.LLAMACPP):
        return GENERATE_ENDPOINTS  # llama.cpp: chat and completions; embeddings are refused
    return None


def endpoints_for_organization(organization: Organization) -> dict[str, tuple[str, ...] | None]:
    """The endpoints of every name (model or alias: its target's) the organisation may use,
    by name: the same names as ``available_models_for_organization``."""
    models = list(models_for_organization(organization))
    out = {model.name: model_endpoints(model) for model in models}
    usable: set[object] = {model.pk for model in models}
    for alias in aliases_for_organization(organization):
        out[alias.name] = model_endpoints(alias_shown_target(alias, usable))
    return out


class TenantsCatalogProvider:
    """The catalog's answers to ``tenants.catalog`` (registered by ``InferenceConfig.ready``),
    so the tenants app can ask without importing this one."""

    def model_names_for(self, organization: Organization) -> list[str]:
        return model_names_for_organization(organization)

    def available_models_for(self, organization: Organization) -> list[AvailableModel]:
        return available_models_for_organization(organization)


def public_name_taken(
    name: str, *, exclude_model: CatalogModel | None = None, exclude_alias: ModelAlias | None = None
) -> bool:
    """Whether ``name`` is already a model's or an alias's public name (they share one space)."""
    models = CatalogModel.objects.filter(name=name)
    aliases = ModelAlias.objects.filter(name=name)
    if exclude_model is not None:
        models = models.exclude(pk=exclude_model.pk)
    if exclude_alias is not None:
        aliases = aliases.exclude(pk=exclude_alias.pk)
    return models.exists() or aliases.exists()
