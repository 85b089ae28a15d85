"""The model catalog: what can be served, how, at what price, and to whom."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

from tenants.models import Organization

# Public names are what clients put in ``model``: letters, digits and ``._-/:``.
model_name_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$",
    "Use 1-128 letters, digits and . _ - / : (starting with a letter or digit).",
)


class EngineKind(models.TextChoices):
    VLLM = "vllm", "vLLM"
    OPENAI = "openai", "OpenAI-compatible upstream"
    SYNTHETIC = "synthetic", "Synthetic (tests and benchmarks only, not a model)"


class Visibility(models.TextChoices):
    PUBLIC = "public", "All organisations"
    RESTRICTED = "restricted", "Listed organisations only"


class CatalogModel(models.Model):
    """A model the platform can serve: engine, source, engine arguments, price and scaling."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active (deployed and served)"
        DISABLED = "disabled", "Disabled (not deployed)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=128, unique=True, validators=[model_name_validator])
    description = models.TextField(blank=True)
    engine_kind = models.CharField(max_length=16, choices=EngineKind.choices)
    # Engine source: a local path (vLLM) or an upstream OpenAI-compatible server.
    source_path = models.CharField(max_length=1024, blank=True)
    upstream_base_url = models.URLField(max_length=1024, blank=True)
    upstream_model = models.CharField(max_length=256, blank=True)
    upstream_api_key = models.CharField(max_length=1024, blank=True)
    engine_args = models.JSONField(default=dict, blank=True)
    context_length = models.PositiveIntegerField(validators=[MinValueValidator(16)])
    price_input_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, default=Decimal(0), validators=[MinValueValidator(0)]
    )
    price_output_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, default=Decimal(0), validators=[MinValueValidator(0)]
    )
    # Deployment settings (rendered into the Ray Serve config).
    min_replicas = models.PositiveIntegerField(default=1)
    max_replicas = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])
    target_ongoing_requests = models.PositiveIntegerField(
        default=16, validators=[MinValueValidator(1)]
    )
    scale_to_zero = models.BooleanField(default=False)
    replica_cpus = models.DecimalField(
        max_digits=6, decimal_places=2, default=Decimal(1), validators=[MinValueValidator(0)]
    )
    replica_gpus = models.DecimalField(
        max_digits=6, decimal_places=2, default=Decimal(0), validators=[MinValueValidator(0)]
    )
    accelerator_type = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    visibility = models.CharField(
        max_length=16, choices=Visibility.choices, default=Visibility.PUBLIC
    )
    organizations = models.ManyToManyField(
        Organization, blank=True, related_name="restricted_models"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "model"

    def __str__(self) -> str:
        return self.name


class ModelAlias(models.Model):
    """A public name that points at a catalog model (e.g. ``gpt-4`` -> a Llama 3 70B model).

    An organisation sees an alias only if it may use the target.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=128, unique=True, validators=[model_name_validator])
    target = models.ForeignKey(CatalogModel, on_delete=models.CASCADE, related_name="aliases")
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name = "model alias"
        verbose_name_plural = "model aliases"

    def __str__(self) -> str:
        return f"{self.name} -> {self.target.name}"
