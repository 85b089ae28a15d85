"""Serializers of the catalog administration API (platform staff only): the catalog, its
deployments and scaling.

They are thin: they turn JSON into typed values (syntax, types, references) and back. Every
business rule lives in ``inference.services``, which the views call.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from inference.models import (
    CatalogModel,
    DeploymentRevision,
    ModelAlias,
    ModelDeploymentStatus,
    PlanModelPrice,
    ScalingWindow,
    model_name_validator,
)
from inference.scaling import MAX_REPLICAS_LIMIT
from inference.services import CATALOG_MODEL_FIELDS
from tenants.models import Organization
from vlinders.strict_json import StrictJSONTypes


@extend_schema_field({"type": "object", "additionalProperties": {}})
class _JSONObjectField(serializers.JSONField):
    """A JSON object (never ``null``, a list or a scalar), as the schema says; what it may hold
    is the service's rule (the engine kind's argument schema)."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        return super().to_internal_value(data)


class PlanPriceSerializer(StrictJSONTypes, serializers.ModelSerializer[PlanModelPrice]):
    """A plan's own prices of the model (USD per million tokens), overriding the catalog's."""

    class Meta:
        model = PlanModelPrice
        fields = ("plan", "price_input_per_mtok", "price_output_per_mtok")
        # One row per plan is checked on the list (``validate_plan_prices``), not per row.
        validators: list[Any] = []


class ScalingWindowSerializer(StrictJSONTypes, serializers.ModelSerializer[ScalingWindow]):
    """A scheduled-scaling window: between ``starts_at`` and ``ends_at`` (platform time zone,
    wrapping past midnight), at least ``min_replicas`` (docs/deployment-spec.md)."""

    class Meta:
        model = ScalingWindow
        fields = ("starts_at", "ends_at", "min_replicas")


class CatalogModelSerializer(StrictJSONTypes, serializers.ModelSerializer[CatalogModel]):
    """A catalog model. ``upstream_api_key`` is write-only: it is accepted, never returned
    (``has_upstream_api_key`` says whether one is set). ``organizations`` are slugs."""

    organizations = serializers.SlugRelatedField(
        many=True,
        slug_field="slug",
        queryset=Organization.objects.all(),
        required=False,
        help_text="Slugs of the organisations that may use a restricted model.",
    )
    aliases: serializers.SlugRelatedField[ModelAlias] = serializers.SlugRelatedField(
        many=True, slug_field="name", read_only=True
    )
    has_upstream_api_key = serializers.SerializerMethodField()
    engine_args = _JSONObjectField(
        required=False, help_text="Arguments of the engine kind (`inference.engine_args`)."
    )
    plan_prices = PlanPriceSerializer(
        many=True,
        required=False,
        help_text="The price book's overrides of the two prices, one per plan; a write replaces "
        "them all (plans left out pay the catalog's prices).",
    )
    scaling_windows = ScalingWindowSerializer(
        many=True,
        required=False,
        help_text="Scheduled scaling: the minimum replicas by time of day; a write replaces "
        "them all, applied by the scheduler within a minute (overlaps: the largest minimum).",
    )

    class Meta:
        model = CatalogModel
        fields = (
            "id",
            *CATALOG_MODEL_FIELDS,
            "has_upstream_api_key",
            "organizations",
            "aliases",
            "plan_prices",
            "scaling_windows",
            "scheduled_min_replicas",
            "created_at",
            "updated_at",
        )
        read_only_fields = ("id", "scheduled_min_replicas", "created_at", "updated_at")
        extra_kwargs: dict[str, dict[str, Any]] = {
            # The shared model/alias namespace is checked by the service (one rule, one message).
            "name": {"validators": [model_name_validator]},
            # Plain text in, never out; the service stores it encrypted (upstream_secrets).
            "upstream_api_key": {
                "write_only": True,
                "max_length": 1024,
                "style": {"input_type": "password"},
            },
        }

    def get_has_upstream_api_key(self, obj: CatalogModel) -> bool:
        return bool(obj.upstream_api_key)

    def validate_plan_prices(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        plans = [row["plan"] for row in rows]
        if len(set(plans)) != len(plans):
            raise serializers.ValidationError("Each plan may be listed once.")
        return rows


class AliasSplitSerializer(StrictJSONTypes, serializers.Serializer[Any]):
    """A further weighted target of an alias (a canary, an A/B arm)."""

    model = serializers.SlugRelatedField(
        source="catalog_model",
        slug_field="name",
        queryset=CatalogModel.objects.all(),
        help_text="Name of the catalog model that takes this share of the alias's requests.",
    )
    weight = serializers.IntegerField(
        min_value=0, max_value=10000, help_text="Its weight; 0 drains it (no new requests)."
    )


class ModelAliasSerializer(StrictJSONTypes, serializers.ModelSerializer[ModelAlias]):
    """An alias: another public name of a catalog model, named by the model's name; with
    ``splits``, a weighted alias that spreads requests over several models by weight
    (docs/model-catalog.md, "Weighted aliases")."""

    target = serializers.SlugRelatedField(
        slug_field="name",
        queryset=CatalogModel.objects.all(),
        help_text="Name of the catalog model this alias points at (its primary target).",
    )
    weight = serializers.IntegerField(
        min_value=0,
        max_value=10000,
        required=False,
        help_text="The primary target's weight (default 100); matters only with splits.",
    )
    splits = AliasSplitSerializer(
        many=True,
        required=False,
        help_text="Further targets with their weights; [] makes a plain alias again, and "
        "leaving it out keeps the stored ones.",
    )

    class Meta:
        model = ModelAlias
        fields = ("id", "name", "target", "weight", "splits", "description", "created_at")
        read_only_fields = ("id", "created_at")
        extra_kwargs: dict[str, dict[str, Any]] = {
            "name": {"validators": [model_name_validator]},
        }


class DeploymentRevisionSerializer(serializers.ModelSerializer[DeploymentRevision]):
    """One apply of the catalog to Ray Serve. The config itself is not returned (it holds
    upstream API keys); ``manage.py serve render`` shows what the catalog renders now."""

    # Null when applied by a command or task rather than a person.
    applied_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )

    class Meta:
        model = DeploymentRevision
        fields = (
            "id",
            "revision",
            "config_hash",
            "outcome",
            "error",
            "applied_by",
            "created_at",
            "finished_at",
        )
        read_only_fields = fields


class ModelDeploymentStatusSerializer(serializers.ModelSerializer[ModelDeploymentStatus]):
    """What Ray Serve last reported for one catalog model's deployment."""

    model: serializers.SlugRelatedField[CatalogModel] = serializers.SlugRelatedField(
        source="catalog_model", slug_field="name", read_only=True
    )

    class Meta:
        model = ModelDeploymentStatus
        fields = (
            "model",
            "deployment",
            "state",
            "replicas_running",
            "replicas_target",
            "message",
            "revision",
            "updated_at",
        )
        read_only_fields = fields


class ScaleRequestSerializer(StrictJSONTypes, serializers.Serializer[Any]):
    """A fixed replica count (``replicas``), or autoscaling bounds (``min_replicas`` and
    ``max_replicas``, with ``scale_to_zero`` to allow ``min_replicas`` 0) — not both."""

    replicas = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_REPLICAS_LIMIT,
        help_text="A fixed count: min and max replicas both become it (no autoscaling).",
    )
    min_replicas = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_REPLICAS_LIMIT,
        help_text="Autoscaling's lower bound (0: scale to zero, with `scale_to_zero`).",
    )
    max_replicas = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_REPLICAS_LIMIT,
        help_text="Autoscaling's upper bound.",
    )
    scale_to_zero = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Confirms that `min_replicas` 0 is meant (idle: no replica, cold start).",
    )


class ScaleResultSerializer(serializers.Serializer[Any]):
    """The scaling as stored, and how its apply to Ray went."""

    model = serializers.CharField(help_text="The catalog model's name.")
    min_replicas = serializers.IntegerField()
    max_replicas = serializers.IntegerField()
    scale_to_zero = serializers.BooleanField()
    applied = serializers.BooleanField(
        help_text="Whether Ray accepted the catalog with the new scaling. False: the scaling is "
        "stored and goes out with the next apply; `revision.error` says why this one failed."
    )
    revision = DeploymentRevisionSerializer(help_text="The apply this scale recorded.")
    capacity_note = serializers.CharField(
        help_text="What `max_replicas` replicas ask for against the cluster's CPUs and GPUs."
    )
