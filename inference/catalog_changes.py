"""The catalog's writes as an operator makes them in the console, each with its audit record.

``inference.services`` (``catalog_model_*``, ``model_alias_*``) holds every rule of the catalog
and writes no audit record (it takes no actor). These functions call those services unchanged
and, in the same transaction, record who changed what (``tenants.audit.audit_record``, as a
platform-level record: ``organization`` is ``None``, since a catalog model belongs to no
organisation), so a change never commits without its record. The records' actions are listed in
``ACTIONS`` below; ``tenants.audit.ACTIONS`` must name them (it refuses unknown actions).

What a record holds: the model's settings (``audited_state``: every catalog field except the
upstream API key, of which only whether one is set; the organisations by slug; the plans' prices)
before and after; for an alias its name, target, description, weight and splits
(``alias_state``). Never the key itself.

``catalog_model_save`` also writes what the services take no argument for: the load-shedding
fields (``max_queued_requests``, ``request_timeout_s``: set on the row, which
``catalog_model_update`` validates and saves, as its docstring allows) and the plans' prices
(``inference.plan_prices.plan_prices_set``, as the management API does), in the same
transaction as the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import transaction

from inference import plan_prices, services
from inference.models import CatalogModel, ModelAlias
from tenants.audit import audit_record, fields_of
from tenants.models import Organization

MODEL_CREATED = "catalog_model.created"
MODEL_UPDATED = "catalog_model.updated"
MODEL_DELETED = "catalog_model.deleted"
ALIAS_CREATED = "model_alias.created"
ALIAS_UPDATED = "model_alias.updated"
ALIAS_DELETED = "model_alias.deleted"
ACTIONS = (MODEL_CREATED, MODEL_UPDATED, MODEL_DELETED, ALIAS_CREATED, ALIAS_UPDATED, ALIAS_DELETED)

# The model fields the services take no argument for (see the module docstring).
LOAD_FIELDS = ("max_queued_requests", "request_timeout_s")
_AUDITED_FIELDS = tuple(
    dict.fromkeys(
        [name for name in services.CATALOG_MODEL_FIELDS if name != "upstream_api_key"]
        + list(LOAD_FIELDS)
    )
)
_ALIAS_FIELDS = ("name", "target", "description")


def alias_state(alias: ModelAlias) -> dict[str, Any]:
    """What an audit record keeps of an alias (as stored): its fields, its primary target's
    weight and its splits (model name -> weight; a weighted alias's canary or A/B arms)."""
    stored = ModelAlias.objects.get(pk=alias.pk)
    return {
        **fields_of(stored, _ALIAS_FIELDS),
        "weight": stored.weight,
        "splits": {
            row.catalog_model.name: row.weight
            for row in stored.splits.select_related("catalog_model").order_by("catalog_model__name")
        },
    }


def _record_change(actor: Any, action: str, target: Any, before: Any, after: Any) -> None:
    """The platform-level audit record of a change; a save that changed nothing records
    nothing (as the tenants services do)."""
    if before != after:
        audit_record(
            organization=None, actor=actor, action=action, target=target, before=before, after=after
        )


def audited_state(model: CatalogModel) -> dict[str, Any]:
    """What an audit record keeps of a model (as stored): no secret."""
    return {
        **fields_of(model, _AUDITED_FIELDS),
        "has_upstream_api_key": bool(model.upstream_api_key),
        "organizations": sorted(model.organizations.values_list("slug", flat=True)),
        "plan_prices": {
            row.plan: [f"{row.price_input_per_mtok:f}", f"{row.price_output_per_mtok:f}"]
            for row in model.plan_prices.order_by("plan")
        },
    }


def _stored_state(model: CatalogModel) -> dict[str, Any]:
    return audited_state(CatalogModel.objects.get(pk=model.pk))


@transaction.atomic
def catalog_model_save(
    *,
    actor: Any,
    model: CatalogModel | None,
    name: str,
    fields: Mapping[str, Any],
    organizations: list[Organization],
    load: Mapping[str, Any] | None = None,
    prices: list[dict[str, Any]] | None = None,
) -> CatalogModel:
    """Create (``model`` ``None``) or update a model: ``fields`` are ``CATALOG_MODEL_FIELDS``
    other than ``name`` (the upstream key in plain text, or left out to keep it), ``load`` the
    ``LOAD_FIELDS``, ``prices`` the plans' prices (``plan_prices_set`` rows; ``None`` leaves
    them). Raises the services' ``ValidationError``; nothing is written then."""
    if model is None:
        before = None
        model = services.catalog_model_create(name=name, organizations=organizations, **fields)
        fields = {}  # written; only the load fields remain for the update below
    else:
        before = _stored_state(model)
        fields = {**fields, "name": name}
    for field, value in (load or {}).items():
        if field not in LOAD_FIELDS:
            raise TypeError(f"Not a load field: {field}")
        setattr(model, field, value)
    model = services.catalog_model_update(model=model, organizations=organizations, **fields)
    if prices is not None:
        plan_prices.plan_prices_set(model=model, prices=prices)
    after = _stored_state(model)
    _record_change(actor, MODEL_CREATED if before is None else MODEL_UPDATED, model, before, after)
    return model


@transaction.atomic
def catalog_model_status_set(*, actor: Any, model: CatalogModel, status: str) -> CatalogModel:
    """Disable or enable a model (``CatalogModel.Status``)."""
    before = _stored_state(model)
    model = services.catalog_model_update(model=model, status=status)
    after = _stored_state(model)
    _record_change(actor, MODEL_UPDATED, model, before, after)
    return model


@transaction.atomic
def catalog_model_remove(*, actor: Any, model: CatalogModel) -> None:
    """Delete a model and its aliases (``catalog_model_delete``)."""
    before = {
        **_stored_state(model),
        "aliases": sorted(model.aliases.values_list("name", flat=True)),
    }
    target = CatalogModel(pk=model.pk)  # the record keeps the id; the row goes
    services.catalog_model_delete(model=model)
    audit_record(organization=None, actor=actor, action=MODEL_DELETED, target=target, before=before)


@transaction.atomic
def model_alias_save(
    *,
    actor: Any,
    alias: ModelAlias | None,
    name: str,
    target: CatalogModel,
    description: str = "",
    weight: int | None = None,
    splits: services.Splits | None = None,
) -> ModelAlias:
    """Create (``alias`` ``None``) or change an alias; ``weight`` (the primary target's) and
    ``splits`` (the further weighted targets) are left as they are when ``None``."""
    if alias is None:
        alias = services.model_alias_create(
            name=name,
            target=target,
            description=description,
            weight=100 if weight is None else weight,
            splits=splits or (),
        )
        before = None
    else:
        before = alias_state(alias)
        alias = services.model_alias_update(
            alias=alias,
            name=name,
            target=target,
            description=description,
            weight=weight,
            splits=splits,
        )
    after = alias_state(alias)
    _record_change(actor, ALIAS_CREATED if before is None else ALIAS_UPDATED, alias, before, after)
    return alias


@transaction.atomic
def model_alias_remove(*, actor: Any, alias: ModelAlias) -> None:
    """Delete an alias (its target stays)."""
    before = alias_state(alias)
    target = ModelAlias(pk=alias.pk)
    services.model_alias_delete(alias=alias)
    audit_record(organization=None, actor=actor, action=ALIAS_DELETED, target=target, before=before)
