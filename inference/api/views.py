"""Catalog administration: ``/api/v1/models/`` and ``/api/v1/aliases/``, for platform staff only.

Models and aliases are addressed by their public name (``/api/v1/models/meta/llama-3.1-8b/``),
the name clients put in ``model``; names may contain ``/``, ``.``, ``:`` and ``-``, and the
trailing slash ends the name. Renaming changes the URL. Tenants read the models they may use
through the organisation-scoped API, not here.

``POST /api/v1/models/{name}/scale/`` scales a model and applies the catalog to Ray at once
(``inference.scaling.catalog_model_scale``): the operator's answer to the seed's cluster scale
API.

Views are thin: serializers parse, ``inference.services`` validates and writes (and republishes
the access snapshot); a service's ``ValidationError`` becomes a 400 naming the field.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import generics, permissions, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from inference import plan_prices, scaling, scaling_schedule, services
from inference.api.serializers import (
    CatalogModelSerializer,
    DeploymentRevisionSerializer,
    ModelAliasSerializer,
    ModelDeploymentStatusSerializer,
    ScaleRequestSerializer,
    ScaleResultSerializer,
)
from inference.models import CatalogModel, DeploymentRevision, ModelAlias, ModelDeploymentStatus

# A public name in a URL path (the syntax itself is checked by ``model_name_validator``).
NAME_IN_PATH = r"[A-Za-z0-9][A-Za-z0-9._:/-]*"


@extend_schema_view(
    list=extend_schema(summary="List catalog models", tags=["catalog"]),
    retrieve=extend_schema(summary="Show a catalog model", tags=["catalog"]),
    create=extend_schema(summary="Add a catalog model", tags=["catalog"]),
    update=extend_schema(summary="Replace a catalog model's settings", tags=["catalog"]),
    partial_update=extend_schema(summary="Change a catalog model's settings", tags=["catalog"]),
    destroy=extend_schema(summary="Remove a catalog model and its aliases", tags=["catalog"]),
)
class CatalogModelViewSet(viewsets.ModelViewSet[CatalogModel]):
    permission_classes = [permissions.IsAdminUser]
    serializer_class = CatalogModelSerializer
    queryset = CatalogModel.objects.prefetch_related(
        "organizations", "aliases", "plan_prices", "scaling_windows"
    )
    lookup_field = "name"
    lookup_value_regex = NAME_IN_PATH

    def perform_create(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        prices = data.pop("plan_prices", None)
        windows = data.pop("scaling_windows", None)
        with transaction.atomic():
            serializer.instance = services.catalog_model_create(**data)
            if prices is not None:
                plan_prices.plan_prices_set(model=serializer.instance, prices=prices)
            if windows is not None:
                scaling_schedule.scaling_windows_set(
                    model=serializer.instance, windows=windows, actor=self.request.user
                )

    def perform_update(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        prices = data.pop("plan_prices", None)
        windows = data.pop("scaling_windows", None)
        with transaction.atomic():
            serializer.instance = services.catalog_model_update(model=serializer.instance, **data)
            if prices is not None:
                plan_prices.plan_prices_set(model=serializer.instance, prices=prices)
            if windows is not None:
                scaling_schedule.scaling_windows_set(
                    model=serializer.instance, windows=windows, actor=self.request.user
                )
        # The response reads the prices and windows again, not the lists prefetched before.
        for name in ("plan_prices", "scaling_windows"):
            getattr(serializer.instance, "_prefetched_objects_cache", {}).pop(name, None)

    def perform_destroy(self, instance: CatalogModel) -> None:
        services.catalog_model_delete(model=instance)


@extend_schema_view(
    list=extend_schema(summary="List model aliases", tags=["catalog"]),
    retrieve=extend_schema(summary="Show a model alias", tags=["catalog"]),
    create=extend_schema(summary="Add a model alias", tags=["catalog"]),
    update=extend_schema(summary="Replace a model alias", tags=["catalog"]),
    partial_update=extend_schema(summary="Change a model alias", tags=["catalog"]),
    destroy=extend_schema(summary="Remove a model alias", tags=["catalog"]),
)
class ModelAliasViewSet(viewsets.ModelViewSet[ModelAlias]):
    permission_classes = [permissions.IsAdminUser]
    serializer_class = ModelAliasSerializer
    queryset = ModelAlias.objects.select_related("target").prefetch_related("splits__catalog_model")
    lookup_field = "name"
    lookup_value_regex = NAME_IN_PATH

    @staticmethod
    def _alias_data(validated: dict[str, Any]) -> dict[str, Any]:
        """The services' arguments: ``splits`` as (model, weight) pairs."""
        data = dict(validated)
        if "splits" in data:
            data["splits"] = [(row["catalog_model"], row["weight"]) for row in data["splits"]]
        return data

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = services.model_alias_create(
            **self._alias_data(serializer.validated_data)
        )

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = services.model_alias_update(
            alias=serializer.instance, **self._alias_data(serializer.validated_data)
        )
        # The response reads the splits again, not the list prefetched before the write.
        getattr(serializer.instance, "_prefetched_objects_cache", {}).pop("splits", None)

    def perform_destroy(self, instance: ModelAlias) -> None:
        services.model_alias_delete(alias=instance)


@extend_schema_view(
    get=extend_schema(summary="List deployment revisions (applies to Ray Serve)", tags=["deploy"])
)
class DeploymentRevisionListView(generics.ListAPIView[DeploymentRevision]):
    """Every apply of the catalog to Ray Serve, newest first, with its outcome."""

    permission_classes = [permissions.IsAdminUser]
    serializer_class = DeploymentRevisionSerializer
    queryset = DeploymentRevision.objects.select_related("applied_by")


@extend_schema_view(
    get=extend_schema(summary="Show each model's deployment status in Ray", tags=["deploy"])
)
class ModelDeploymentStatusListView(generics.ListAPIView[ModelDeploymentStatus]):
    """Per catalog model, what the reconciler last read from Ray Serve."""

    permission_classes = [permissions.IsAdminUser]
    serializer_class = ModelDeploymentStatusSerializer
    queryset = ModelDeploymentStatus.objects.select_related("catalog_model")


@extend_schema(
    summary="Scale a catalog model and apply the catalog to Ray",
    description="A fixed count (`replicas`) or autoscaling bounds (`min_replicas`, "
    "`max_replicas`). The scaling is stored in the catalog, then the whole catalog is applied "
    "to Ray Serve at once; `applied` says whether Ray accepted it (if not, the scaling stays "
    "stored and goes out with the next apply).",
    tags=["deploy"],
    request=ScaleRequestSerializer,
    responses={200: ScaleResultSerializer},
)
class CatalogModelScaleView(generics.GenericAPIView[CatalogModel]):
    """Scale one model (``inference.scaling``); a bad request is a 400 naming the fields."""

    permission_classes = [permissions.IsAdminUser]
    serializer_class = ScaleRequestSerializer
    queryset = CatalogModel.objects.all()
    lookup_field = "name"

    def post(self, request: Request, name: str) -> Response:
        model = self.get_object()
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            outcome = scaling.catalog_model_scale(
                model=model,
                min_replicas=data.get("min_replicas"),
                max_replicas=data.get("max_replicas"),
                fixed=data.get("replicas"),
                scale_to_zero=data.get("scale_to_zero", False),
                actor=request.user,
            )
        except ValidationError as exc:
            # The service calls the fixed count ``fixed``; this API calls it ``replicas``.
            if not hasattr(exc, "error_dict"):
                raise
            raise ValidationError(
                {
                    ("replicas" if field == "fixed" else field): messages
                    for field, messages in exc.message_dict.items()
                }
            ) from exc
        stored = outcome.model
        result = {
            "model": stored.name,
            "min_replicas": stored.min_replicas,
            "max_replicas": stored.max_replicas,
            "scale_to_zero": stored.scale_to_zero,
            "applied": outcome.applied,
            "revision": outcome.revision,
            "capacity_note": outcome.capacity_note,
        }
        return Response(ScaleResultSerializer(result).data)
