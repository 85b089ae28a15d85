"""Writes of the model catalog: models and aliases.

Every write validates the whole row against the catalog's rules (below), runs in one transaction,
and — when it can change which public names an organisation may use — republishes every
organisation's access-snapshot record after the transaction commits
(``tenants.snapshot.publish_all_organizations_on_commit``).

Rules of a catalog model (``catalog_model_validate``):

- the model's own field validation (``full_clean``: name syntax, choices, URLs, minimums);
- models and aliases share one namespace of public names: a name used by either is taken;
- ``engine_args`` match the JSON Schema of the engine kind (``inference.engine_args``);
- engine source: ``vllm`` needs ``source_path``; ``llamacpp`` needs a ``source_path`` ending in
  ``.gguf`` and an ``n_ctx`` (when set) within ``context_length``; ``openai`` needs
  ``upstream_base_url`` and ``upstream_model`` (``upstream_api_key`` is optional, at most 1,024
  characters); ``synthetic`` needs no source. Source fields that the engine kind does not use
  must be empty, so a stale upstream key or path never lingers on a row that does not use it;
- ``min_replicas <= max_replicas``;
- scale to zero: ``scale_to_zero`` is true exactly when ``min_replicas == 0``. A model that may
  scale to zero says so twice on purpose (a 0 typed by mistake does not silently make the first
  request after an idle period wait for a cold start), and a model that says ``scale_to_zero``
  cannot keep a warm replica;
- vLLM context: ``engine_args.max_model_len``, when set, does not exceed ``context_length``;
- vLLM parallelism: when ``replica_gpus > 0``, ``tensor_parallel_size * pipeline_parallel_size``
  (each 1 when absent) must not exceed ``replica_gpus``; a single worker (product 1) may run on
  a fraction of a GPU. CPU replicas (``replica_gpus == 0``) are not checked;
- request router: ``prefix_affinity`` only for ``vllm`` models (an upstream has no replicas of
  ours to prefer, the synthetic engine no cache, llama.cpp's was not measured);
- visibility: ``public`` models list no organisations; ``restricted`` models list the
  organisations that may use them (an empty list means nobody yet — fails closed).

Rules of an alias (``model_alias_validate``): ``full_clean`` and the shared namespace. An alias
never widens access: it is visible only to organisations that may use one of its targets of a
weight above 0, and the gateway spreads their requests only over the targets they may use.

Rules of a weighted alias (``model_alias_splits_validate``; docs/model-catalog.md, "Weighted
aliases"): the primary target has ``weight``, each split a model and a weight, each weight
0..10,000 (0 drains a target); a model appears once (never the primary target again); the
weights add up to more than 0. A disabled target is allowed and gets no traffic while disabled.

The upstream API key is given in plain text and stored encrypted (``inference.upstream_secrets``);
after the transaction commits it is published, encrypted, to Redis for the model server, and its
record is deleted when the key is cleared or the model renamed, deleted or moved off the
``openai`` engine.

Catalog writes are serialised by one transaction-scoped Postgres advisory lock, so two concurrent
writes cannot both claim the same public name across the two tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, transaction

from inference import upstream_secrets
from inference.engine_args import validate_engine_args
from inference.models import (
    CatalogModel,
    EngineKind,
    ModelAlias,
    ModelAliasSplit,
    RequestRouter,
    Visibility,
)
from inference.selectors import public_name_taken
from tenants.models import Organization
from tenants.snapshot import publish_all_organizations_on_commit

# The fields of a catalog model that ``catalog_model_create``/``catalog_model_update`` accept
# (besides ``organizations``, which is a relation).
CATALOG_MODEL_FIELDS = (
    "name",
    "description",
    "engine_kind",
    "source_path",
    "upstream_base_url",
    "upstream_model",
    "upstream_api_key",
    "engine_args",
    "context_length",
    "price_input_per_mtok",
    "price_output_per_mtok",
    "cost_per_replica_hour",
    "min_replicas",
    "max_replicas",
    "target_ongoing_requests",
    "scale_to_zero",
    "replica_cpus",
    "replica_gpus",
    "accelerator_type",
    "max_queued_requests",
    "request_timeout_s",
    "request_router",
    # The response cache (docs/response-cache.md): entries' TTL (0 = off) and a hit's price.
    "cache_ttl_s",
    "price_cache_hit_per_mtok",
    "status",
    "visibility",
)

# Which source fields each engine kind needs; every other source field must be empty.
_SOURCE_FIELDS = ("source_path", "upstream_base_url", "upstream_model", "upstream_api_key")
_REQUIRED_SOURCE: dict[str, tuple[str, ...]] = {
    EngineKind.VLLM: ("source_path",),
    EngineKind.OPENAI: ("upstream_base_url", "upstream_model"),
    EngineKind.SYNTHETIC: (),
    EngineKind.LLAMACPP: ("source_path",),
}
ALLOWED_SOURCE: dict[str, tuple[str, ...]] = {
    EngineKind.VLLM: ("source_path",),
    EngineKind.OPENAI: ("upstream_base_url", "upstream_model", "upstream_api_key"),
    EngineKind.SYNTHETIC: (),
    EngineKind.LLAMACPP: ("source_path",),
}

# Key of the advisory lock that serialises writes of public names (any fixed 63-bit number).
_CATALOG_NAMES_LOCK = int.from_bytes(b"vl-names", "big") & ((1 << 63) - 1)


class _Errors:
    """Collects field -> messages so one response names every problem at once."""

    def __init__(self) -> None:
        self.by_field: dict[str, list[str]] = {}

    def add(self, field: str, message: str) -> None:
        self.by_field.setdefault(field, []).append(message)

    def merge(self, error: ValidationError) -> None:
        for field, messages in error.message_dict.items():
            for message in messages:
                self.add(field, message)

    def raise_if_any(self) -> None:
        if self.by_field:
            raise ValidationError(self.by_field)


def _lock_catalog_names() -> None:
    """Serialise catalog writes until the current transaction ends (Postgres; SQLite already
    serialises writers)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CATALOG_NAMES_LOCK])


def _check_fields(fields: dict[str, Any]) -> None:
    unknown = sorted(set(fields) - set(CATALOG_MODEL_FIELDS))
    if unknown:
        raise TypeError(f"Not catalog model fields: {', '.join(unknown)}")


def _stored(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` as the row stores them: a given upstream key (plain text, ``""`` to clear)
    becomes its Fernet token, so no plain key is ever saved."""
    if "upstream_api_key" not in fields:
        return fields
    key = fields["upstream_api_key"] or ""
    if len(key) > upstream_secrets.MAX_KEY_CHARS:
        raise ValidationError(
            {"upstream_api_key": [f"At most {upstream_secrets.MAX_KEY_CHARS} characters."]}
        )
    return {**fields, "upstream_api_key": upstream_secrets.encrypt(key)}


def _stored_name_and_engine(model: CatalogModel) -> tuple[str, str] | None:
    return CatalogModel.objects.filter(pk=model.pk).values_list("name", "engine_kind").first()


# --- catalog models ----------------------------------------------------------------------------


def catalog_model_validate(
    *, model: CatalogModel, organizations: Iterable[Organization] | None = None
) -> None:
    """Raise ``ValidationError`` (field -> messages) unless ``model`` obeys the catalog's rules.

    ``organizations`` is the list the model will have; ``None`` means its current list (none for
    an unsaved model). Rules: see the module docstring.
    """
    errors = _Errors()
    try:
        model.full_clean()
    except ValidationError as exc:
        errors.merge(exc)

    if "name" not in errors.by_field and public_name_taken(model.name, exclude_model=model):
        errors.add("name", f"The name {model.name!r} is already used by a model or an alias.")

    kind = model.engine_kind
    if kind in _REQUIRED_SOURCE:
        try:
            validate_engine_args(kind, model.engine_args)
        except ValidationError as exc:
            errors.merge(exc)
        for field in _REQUIRED_SOURCE[kind]:
            if not getattr(model, field) and field not in errors.by_field:
                errors.add(field, f"Required for the {kind} engine.")
        for field in _SOURCE_FIELDS:
            if field not in ALLOWED_SOURCE[kind] and getattr(model, field):
                errors.add(field, f"Not used by the {kind} engine; leave it empty.")
        if kind == EngineKind.VLLM and "engine_args" not in errors.by_field:
            _check_vllm_parallelism(model, errors)
            _check_vllm_context(model, errors)
        if kind == EngineKind.LLAMACPP:
            _check_llamacpp(model, errors)
    if model.request_router == RequestRouter.PREFIX_AFFINITY and kind != EngineKind.VLLM:
        errors.add(
            "request_router",
            "Prefix-cache affinity is for vLLM models (it sends a prompt to the replica whose "
            f"prefix cache holds it); the {kind} engine has no such cache to reuse.",
        )

    min_replicas, max_replicas = model.min_replicas, model.max_replicas
    if isinstance(min_replicas, int) and isinstance(max_replicas, int):
        if min_replicas > max_replicas:
            errors.add(
                "min_replicas",
                f"Must not exceed max_replicas ({max_replicas}); got {min_replicas}.",
            )
        if min_replicas == 0 and not model.scale_to_zero:
            errors.add(
                "min_replicas", "0 replicas means scaling to zero: set scale_to_zero as well."
            )
        if model.scale_to_zero and min_replicas != 0:
            errors.add("scale_to_zero", "A model that scales to zero has min_replicas 0.")

    if organizations is None:
        has_organizations = not model._state.adding and model.organizations.exists()
    else:
        has_organizations = bool(list(organizations))
    if model.visibility == Visibility.PUBLIC and has_organizations:
        errors.add(
            "organizations",
            "A public model is open to every organisation; list organisations only with "
            "visibility 'restricted'.",
        )

    errors.raise_if_any()


def _check_vllm_parallelism(model: CatalogModel, errors: _Errors) -> None:
    args = model.engine_args if isinstance(model.engine_args, dict) else {}
    workers = int(args.get("tensor_parallel_size", 1)) * int(args.get("pipeline_parallel_size", 1))
    gpus = model.replica_gpus
    if isinstance(gpus, Decimal | int | float) and gpus > 0 and workers > 1 and workers > gpus:
        errors.add(
            "engine_args",
            f"tensor_parallel_size * pipeline_parallel_size = {workers} exceeds replica_gpus "
            f"({gpus}).",
        )


def _check_vllm_context(model: CatalogModel, errors: _Errors) -> None:
    """The engine's ``max_model_len`` must not exceed the advertised ``context_length``: the
    gateway reserves tokens against the advertised length, so a longer engine window would let a
    request past the budget it reserved."""
    max_model_len = model.engine_args.get("max_model_len")
    context = model.context_length
    if isinstance(max_model_len, int) and isinstance(context, int) and max_model_len > context:
        errors.add(
            "engine_args", f"max_model_len ({max_model_len}) exceeds context_length ({context})."
        )


def _check_llamacpp(model: CatalogModel, errors: _Errors) -> None:
    """llama.cpp serves one GGUF file: ``source_path`` names a ``.gguf`` (where the replicas
    run, so its existence is not checked here); its ``n_ctx`` must not exceed the advertised
    ``context_length`` (the gateway reserves against that, as for vLLM's ``max_model_len``)."""
    path = model.source_path or ""
    if path and not path.lower().endswith(".gguf") and "source_path" not in errors.by_field:
        errors.add("source_path", "The llama.cpp engine serves a GGUF file: a path to a .gguf.")
    args = model.engine_args if isinstance(model.engine_args, dict) else {}
    n_ctx, context = args.get("n_ctx"), model.context_length
    if isinstance(n_ctx, int) and isinstance(context, int) and n_ctx > context:
        errors.add("engine_args", f"n_ctx ({n_ctx}) exceeds context_length ({context}).")


def _access_state(model: CatalogModel) -> tuple[Any, ...]:
    """What of a model decides which names organisations may use (as stored)."""
    row = CatalogModel.objects.filter(pk=model.pk).values_list("name", "status", "visibility")
    org_ids = CatalogModel.organizations.through.objects.filter(catalogmodel_id=model.pk)
    return (
        tuple(row.first() or ()),
        frozenset(org_ids.values_list("organization_id", flat=True)),
    )


@transaction.atomic
def catalog_model_create(
    *,
    name: str,
    engine_kind: str,
    context_length: int,
    organizations: list[Organization] | None = None,
    **fields: Any,
) -> CatalogModel:
    """Add a model to the catalog. ``fields`` are other ``CATALOG_MODEL_FIELDS`` (model
    defaults apply to the rest; ``upstream_api_key`` in plain text); ``organizations`` matters
    for restricted visibility."""
    _check_fields(fields)
    fields = _stored(fields)
    _lock_catalog_names()
    model = CatalogModel(
        name=name, engine_kind=engine_kind, context_length=context_length, **fields
    )
    organizations = list(organizations or [])
    catalog_model_validate(model=model, organizations=organizations)
    model.save()
    model.organizations.set(organizations)
    publish_all_organizations_on_commit()
    if model.engine_kind == EngineKind.OPENAI:
        upstream_secrets.upstream_credentials_publish_on_commit(model_ids=[model.pk])
    return model


@transaction.atomic
def catalog_model_update(
    *,
    model: CatalogModel,
    organizations: list[Organization] | None = None,
    **fields: Any,
) -> CatalogModel:
    """Change ``fields`` (any of ``CATALOG_MODEL_FIELDS``) and, unless ``None``, replace the
    organisations. Republishes the snapshot when names, status, visibility or organisations
    changed; ``model`` may already carry the new values (the admin's form sets them), except
    ``upstream_api_key``, which is given here in plain text (or ``""`` to clear it) or not at
    all to keep it."""
    _check_fields(fields)
    fields = _stored(fields)
    _lock_catalog_names()
    before = _access_state(model)
    stored = _stored_name_and_engine(model)
    previous = {field: getattr(model, field) for field in fields}
    for field, value in fields.items():
        setattr(model, field, value)
    if organizations is not None:
        organizations = list(organizations)
    try:
        catalog_model_validate(model=model, organizations=organizations)
    except ValidationError:
        for field, value in previous.items():  # leave the caller's instance as it was
            setattr(model, field, value)
        raise
    model.save()
    if organizations is not None:
        model.organizations.set(organizations)
    if _access_state(model) != before:
        publish_all_organizations_on_commit()
    if model.engine_kind == EngineKind.OPENAI or (stored and stored[1] == EngineKind.OPENAI):
        renamed = [stored[0]] if stored and stored[0] != model.name else []
        upstream_secrets.upstream_credentials_publish_on_commit(
            model_ids=[model.pk], removed_names=renamed
        )
    return model


@transaction.atomic
def catalog_model_delete(*, model: CatalogModel) -> None:
    """Remove a model and its aliases from the catalog."""
    catalog_models_delete(models=[model])


@transaction.atomic
def catalog_models_delete(*, models: Iterable[CatalogModel]) -> int:
    """Remove several models (and their aliases) with one republish; returns how many."""
    _lock_catalog_names()
    rows = CatalogModel.objects.filter(pk__in=[model.pk for model in models])
    upstream_names = list(rows.filter(engine_kind=EngineKind.OPENAI).values_list("name", flat=True))
    _, deleted = rows.delete()
    publish_all_organizations_on_commit()
    if upstream_names:
        upstream_secrets.upstream_credentials_publish_on_commit(removed_names=upstream_names)
    return deleted.get(CatalogModel._meta.label, 0)


# --- aliases -----------------------------------------------------------------------------------


# A weighted alias's further targets: (model, weight) pairs.
Splits = Sequence[tuple[CatalogModel, int]]
MAX_ALIAS_WEIGHT = 10000


def _current_splits(alias: ModelAlias) -> list[tuple[CatalogModel, int]]:
    if alias._state.adding:
        return []
    rows = ModelAliasSplit.objects.filter(alias=alias).select_related("catalog_model")
    return [(row.catalog_model, row.weight) for row in rows]


def model_alias_splits_validate(*, alias: ModelAlias, splits: Splits) -> None:
    """Raise ``ValidationError`` (fields ``weight``, ``splits``) unless ``alias.weight`` and
    ``splits`` make a valid weighted alias (the rules in the module docstring)."""
    errors = _Errors()
    if not 0 <= alias.weight <= MAX_ALIAS_WEIGHT:
        errors.add("weight", f"A weight is from 0 to {MAX_ALIAS_WEIGHT}.")
    seen: set[object] = set()
    for model, weight in splits:
        if not isinstance(weight, int) or not 0 <= weight <= MAX_ALIAS_WEIGHT:
            errors.add("splits", f"{model.name}: a weight is from 0 to {MAX_ALIAS_WEIGHT}.")
        if model.pk == alias.target_id:
            errors.add("splits", f"{model.name} is the alias's primary target already.")
        elif model.pk in seen:
            errors.add("splits", f"{model.name} is listed twice.")
        seen.add(model.pk)
    if not errors.by_field and alias.weight + sum(weight for _, weight in splits) <= 0:
        errors.add("weight", "The weights add up to 0: at least one target must take traffic.")
    errors.raise_if_any()


def model_alias_validate(*, alias: ModelAlias, splits: Splits | None = None) -> None:
    """Raise ``ValidationError`` unless ``alias`` is valid and its name is free, and, with its
    ``splits`` (the stored ones when ``None``), a valid weighted alias."""
    errors = _Errors()
    try:
        alias.full_clean()
    except ValidationError as exc:
        errors.merge(exc)
    if "name" not in errors.by_field and public_name_taken(alias.name, exclude_alias=alias):
        errors.add("name", f"The name {alias.name!r} is already used by a model or an alias.")
    if "weight" not in errors.by_field and "target" not in errors.by_field:
        try:
            model_alias_splits_validate(
                alias=alias, splits=_current_splits(alias) if splits is None else splits
            )
        except ValidationError as exc:
            errors.merge(exc)
    errors.raise_if_any()


def _write_splits(alias: ModelAlias, splits: Splits) -> bool:
    """Replace the alias's splits; whether they changed."""
    before = sorted((model.pk, weight) for model, weight in _current_splits(alias))
    if before == sorted((model.pk, weight) for model, weight in splits):
        return False
    ModelAliasSplit.objects.filter(alias=alias).delete()
    ModelAliasSplit.objects.bulk_create(
        ModelAliasSplit(alias=alias, catalog_model=model, weight=weight) for model, weight in splits
    )
    return True


@transaction.atomic
def model_alias_create(
    *,
    name: str,
    target: CatalogModel,
    description: str = "",
    weight: int = 100,
    splits: Splits = (),
) -> ModelAlias:
    """Give ``target`` another public name; with ``splits``, a weighted alias (``target`` at
    ``weight``, each split at its own)."""
    _lock_catalog_names()
    alias = ModelAlias(name=name, target=target, description=description, weight=weight)
    model_alias_validate(alias=alias, splits=splits)
    alias.save()
    _write_splits(alias, splits)
    publish_all_organizations_on_commit()
    return alias


@transaction.atomic
def model_alias_splits_set(
    *, alias: ModelAlias, splits: Splits, weight: int | None = None
) -> ModelAlias:
    """Set a weighted alias's targets: the primary target's ``weight`` (``None`` keeps it) and
    the further targets ``splits`` (replacing the stored ones; empty: a plain alias again).
    Validated whole; the new weights reach the gateway with the next apply, in place."""
    return model_alias_update(alias=alias, weight=weight, splits=splits)


@transaction.atomic
def model_alias_update(
    *,
    alias: ModelAlias,
    name: str | None = None,
    target: CatalogModel | None = None,
    description: str | None = None,
    weight: int | None = None,
    splits: Splits | None = None,
) -> ModelAlias:
    """Rename, repoint, describe or re-weight an alias (``None`` leaves a field as it is;
    ``splits`` replaces the stored splits)."""
    _lock_catalog_names()
    before = (
        ModelAlias.objects.filter(pk=alias.pk).values_list("name", "target_id", "weight").first()
    )
    previous = (alias.name, alias.target_id, alias.description, alias.weight)
    if name is not None:
        alias.name = name
    if target is not None:
        alias.target = target
    if description is not None:
        alias.description = description
    if weight is not None:
        alias.weight = weight
    try:
        model_alias_validate(alias=alias, splits=splits)
    except ValidationError:
        alias.name, alias.target_id, alias.description, alias.weight = previous
        raise
    alias.save()
    changed = splits is not None and _write_splits(alias, splits)
    if changed or before != (alias.name, alias.target_id, alias.weight):
        publish_all_organizations_on_commit()
    return alias


@transaction.atomic
def model_alias_delete(*, alias: ModelAlias) -> None:
    """Remove an alias (its target stays)."""
    model_aliases_delete(aliases=[alias])


@transaction.atomic
def model_aliases_delete(*, aliases: Iterable[ModelAlias]) -> int:
    """Remove several aliases with one republish; returns how many."""
    _lock_catalog_names()
    _, deleted = ModelAlias.objects.filter(pk__in=[alias.pk for alias in aliases]).delete()
    publish_all_organizations_on_commit()
    return deleted.get(ModelAlias._meta.label, 0)
