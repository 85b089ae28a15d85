"""What the tenants app needs to know about the model catalog, without importing it.

``inference`` depends on ``tenants`` (a restricted model lists organisations; catalog changes
republish the access snapshot). The reverse is needed too: the snapshot lists the model names an
organisation may use, key validation refuses names it may not use, and the tenants API lists the
models on offer. Importing ``inference`` from here would make the two apps a cycle, so the
dependency is inverted: this module defines the questions (``CatalogProvider``) and the
``inference`` app registers the answers in its ``AppConfig.ready()``
(``inference.apps.InferenceConfig``). Nothing in ``tenants`` imports ``inference``;
``tests/tenants/test_no_inference_imports.py`` keeps it so.

Asking before a provider is registered raises ``ImproperlyConfigured``: a snapshot that silently
listed no models would refuse every request, and an empty list would hide the cause.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol

from django.core.exceptions import ImproperlyConfigured

from tenants.models import Organization


@dataclass(frozen=True)
class AvailableModel:
    """A model or alias an organisation may use, as tenants see it (no engine details)."""

    name: str
    kind: Literal["model", "alias"]
    target: str | None  # the model an alias points at; None for a model
    description: str
    context_length: int
    price_input_per_mtok: Decimal
    price_output_per_mtok: Decimal


class CatalogProvider(Protocol):
    """The answers the catalog app gives the tenants app."""

    def model_names_for(self, organization: Organization) -> list[str]:
        """Every public name (models and aliases) the organisation may use, sorted."""
        ...

    def available_models_for(self, organization: Organization) -> list[AvailableModel]:
        """The models and aliases the organisation may use, sorted by name."""
        ...


_provider: CatalogProvider | None = None


def register_catalog_provider(provider: CatalogProvider) -> None:
    """Install the catalog's answers (the ``inference`` app does, once, at start-up)."""
    global _provider
    _provider = provider


def _registered() -> CatalogProvider:
    if _provider is None:
        raise ImproperlyConfigured(
            "No model catalog is registered with tenants.catalog: the 'inference' app must be "
            "in INSTALLED_APPS (its AppConfig.ready() registers it)."
        )
    return _provider


def model_names_for_organization(organization: Organization) -> list[str]:
    """Every public name (models and aliases) ``organization`` may put in ``model``, sorted."""
    return _registered().model_names_for(organization)


def available_models_for_organization(organization: Organization) -> list[AvailableModel]:
    """The models and aliases ``organization`` may use, with the prices it is charged (its
    plan's own prices where the price book has them, else the catalog's), sorted by name."""
    return _registered().available_models_for(organization)
