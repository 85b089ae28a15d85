"""Reads of the model catalog."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from inference.models import CatalogModel, ModelAlias, Visibility
from tenants.models import Organization


def models_for_organization(organization: Organization) -> QuerySet[CatalogModel]:
    """Active models the organisation may use: public ones and those restricted to it."""
    return (
        CatalogModel.objects.filter(status=CatalogModel.Status.ACTIVE)
        .filter(Q(visibility=Visibility.PUBLIC) | Q(organizations=organization))
        .distinct()
    )


def aliases_for_organization(organization: Organization) -> QuerySet[ModelAlias]:
    """Aliases whose target the organisation may use (an alias never widens access)."""
    return ModelAlias.objects.filter(
        target__in=models_for_organization(organization)
    ).select_related("target")


def model_names_for_organization(organization: Organization) -> list[str]:
    """Every public name (models and aliases) the organisation may put in ``model``, sorted."""
    names = set(models_for_organization(organization).values_list("name", flat=True))
    names.update(aliases_for_organization(organization).values_list("name", flat=True))
    return sorted(names)


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
