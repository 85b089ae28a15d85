"""The model catalog: what can be served, how, at what price, and to whom."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

from tenants.models import Organization
from tenants.plans import Plan

# Public names are what clients put in ``model``: letters, digits and ``._-/:``.
model_name_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$",
    "Use 1-128 letters, digits and . _ - / : (starting with a letter or digit).",
)


class EngineKind(models.TextChoices):
    VLLM = "vllm", "vLLM"
    OPENAI = "openai", "OpenAI-compatible upstream"
    SYNTHETIC = "synthetic", "Synthetic (tests and benchmarks only, not a model)"
    LLAMACPP = "llamacpp", "llama.cpp (GGUF file, CPU)"


class RequestRouter(models.TextChoices):
    """How Ray Serve picks the replica of a model with several (``docs/deployment-spec.md``)."""

    DEFAULT = "default", "Ray Serve's default (power of two choices, fewest queued)"
    PREFIX_AFFINITY = "prefix_affinity", "Prefix-cache affinity (vLLM, several replicas)"


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
    # A Fernet token of the upstream's API key, never the key itself ("" for none): the services
    # encrypt what they are given (inference/upstream_secrets.py). Write-only everywhere.
    upstream_api_key = models.TextField(blank=True)
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
    # Load shedding: requests waiting for a replica beyond this many (per gateway replica) are
    # refused at once with a 503 and Retry-After, instead of queueing for minutes.
    max_queued_requests = models.PositiveIntegerField(
        default=128, validators=[MinValueValidator(1)]
    )
    # A request still running after this many seconds is cancelled in the engine and metered
    # for what it produced (504 if nothing was sent yet).
    request_timeout_s = models.PositiveIntegerField(
        default=300, validators=[MinValueValidator(1), MaxValueValidator(3600)]
    )
    replica_cpus = models.DecimalField(
        max_digits=6, decimal_places=2, default=Decimal(1), validators=[MinValueValidator(0)]
    )
    replica_gpus = models.DecimalField(
        max_digits=6, decimal_places=2, default=Decimal(0), validators=[MinValueValidator(0)]
    )
    accelerator_type = models.CharField(max_length=64, blank=True)
    # What one replica costs the operator per hour (hardware, cloud), in the platform currency:
    # the operator's margin report divides it over the tokens served (docs/billing.md, "Reports").
    cost_per_replica_hour = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Operator's cost of one replica for one hour; empty: unknown (no margin shown).",
    )
    # Routing among this model's replicas (Ray Serve request routers).
    request_router = models.CharField(
        max_length=32, choices=RequestRouter.choices, default=RequestRouter.DEFAULT
    )
    # Scheduled scaling: the minimum replicas the current ``ScalingWindow`` asks for, written by
    # the beat task (``inference.scaling_schedule``); null outside every window, when
    # ``min_replicas`` applies. The renderer uses it in place of ``min_replicas`` (a night-time
    # window scales down as well as a busy-hours one scales up).
    scheduled_min_replicas = models.PositiveIntegerField(null=True, blank=True, editable=False)
    # Response cache (docs/response-cache.md): 0 turns it off for this model; otherwise how long
    # a deterministic response may be served again to the same organisation, and the price per
    # million tokens (input and output alike) that a cache hit is metered at.
    cache_ttl_s = models.PositiveIntegerField(
        default=0, validators=[MaxValueValidator(30 * 24 * 3600)]
    )
    price_cache_hit_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, default=Decimal(0), validators=[MinValueValidator(0)]
    )
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

    An organisation sees an alias only if it may use the target. ``target`` is the primary
    target, with ``weight``; ``splits`` add weighted targets (a canary, an A/B arm): requests
    are spread by weight, deterministically per ``user`` when the client sends one, and a
    weight of 0 drains a target (docs/deployment-spec.md, "Weighted aliases").
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=128, unique=True, validators=[model_name_validator])
    target = models.ForeignKey(CatalogModel, on_delete=models.CASCADE, related_name="aliases")
    weight = models.PositiveIntegerField(default=100, validators=[MaxValueValidator(10000)])
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name = "model alias"
        verbose_name_plural = "model aliases"

    def __str__(self) -> str:
        return f"{self.name} -> {self.target.name}"


class ModelAliasSplit(models.Model):
    """A further weighted target of an alias, beside its primary ``target``."""

    id = models.BigAutoField(primary_key=True)
    alias = models.ForeignKey(ModelAlias, on_delete=models.CASCADE, related_name="splits")
    catalog_model = models.ForeignKey(
        CatalogModel, on_delete=models.CASCADE, related_name="alias_splits"
    )
    weight = models.PositiveIntegerField(validators=[MaxValueValidator(10000)])

    class Meta:
        ordering = ["alias__name", "catalog_model__name"]
        verbose_name = "alias split"
        constraints = [
            models.UniqueConstraint(fields=["alias", "catalog_model"], name="alias_split_once")
        ]

    def __str__(self) -> str:
        return f"{self.alias_id} -> {self.catalog_model_id} ({self.weight})"


class ScalingWindow(models.Model):
    """Scheduled scaling: between ``starts_at`` and ``ends_at`` (platform time zone, wrapping
    past midnight when ``ends_at`` is earlier), the model's minimum replicas are
    ``min_replicas`` instead of the catalog's own. A beat task applies the change through the
    catalog path (scaling is a deployment option: no restarts)."""

    id = models.BigAutoField(primary_key=True)
    catalog_model = models.ForeignKey(
        CatalogModel, on_delete=models.CASCADE, related_name="scaling_windows"
    )
    starts_at = models.TimeField()
    ends_at = models.TimeField()
    min_replicas = models.PositiveIntegerField()

    class Meta:
        ordering = ["catalog_model__name", "starts_at"]
        verbose_name = "scaling window"

    def __str__(self) -> str:
        return f"{self.catalog_model_id} {self.starts_at}-{self.ends_at}: {self.min_replicas}"


# --- Deployments (contract 1: the catalog applied to Ray Serve) --------------------------------


class DeploymentRevision(models.Model):
    """One apply of the rendered Serve config to Ray: what was sent, by whom, and the outcome.

    ``applied`` means Ray accepted the config (it then deploys asynchronously; a later
    ``DEPLOY_FAILED`` found by the reconciler turns it ``failed``). ``failed`` means the dashboard
    refused it or could not be reached, and Ray kept serving the previous revision.
    """

    class Outcome(models.TextChoices):
        PENDING = "pending", "Pending (being sent)"
        APPLIED = "applied", "Applied (accepted by Ray)"
        FAILED = "failed", "Failed"

    id = models.BigAutoField(primary_key=True)
    # The spec's revision (SHA-256 of the args without revision): same catalog, same revision.
    revision = models.CharField(max_length=64, db_index=True)
    # SHA-256 of the whole config (also covers http_options and anything outside the args).
    config_hash = models.CharField(max_length=64)
    config = models.JSONField()
    applied_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="deployment_revisions",
    )
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.PENDING)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.revision[:12]} ({self.outcome})"


class ModelDeploymentStatus(models.Model):
    """What Ray Serve reports for one catalog model's deployment (one row per model), written by
    the reconciler (``inference.deploy_services.deployment_reconcile``)."""

    class State(models.TextChoices):
        DEPLOYING = "deploying", "Deploying"
        RUNNING = "running", "Running"
        UNHEALTHY = "unhealthy", "Unhealthy"
        FAILED = "failed", "Failed"
        ABSENT = "absent", "Absent (not deployed)"
        UNKNOWN = "unknown", "Unknown (Ray's dashboard unreachable)"

    catalog_model = models.OneToOneField(
        CatalogModel, on_delete=models.CASCADE, related_name="deployment_status"
    )
    deployment = models.CharField(max_length=128)
    state = models.CharField(max_length=16, choices=State.choices, default=State.ABSENT)
    replicas_running = models.PositiveIntegerField(default=0)
    replicas_target = models.PositiveIntegerField(default=0)
    message = models.TextField(blank=True)
    # The spec revision Ray reports as deployed for the application (empty if none).
    revision = models.CharField(max_length=64, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["catalog_model__name"]
        verbose_name = "model deployment status"
        verbose_name_plural = "model deployment statuses"

    def __str__(self) -> str:
        return f"{self.deployment}: {self.state}"


class PlanModelPrice(models.Model):
    """A plan's own token prices for one model, overriding the catalog's prices for the
    organisations on that plan (docs/billing.md, "Price book"). The gateway charges the price of
    the requesting organisation's plan; a change applies to requests from then on (every usage
    event keeps the prices it was served at)."""

    plan = models.CharField(max_length=16, choices=Plan.choices)
    catalog_model = models.ForeignKey(
        CatalogModel, on_delete=models.CASCADE, related_name="plan_prices"
    )
    price_input_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, validators=[MinValueValidator(0)]
    )
    price_output_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, validators=[MinValueValidator(0)]
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["catalog_model__name", "plan"]
        verbose_name = "plan price override"
        constraints = [
            models.UniqueConstraint(fields=["plan", "catalog_model"], name="plan_model_price_once")
        ]

    def __str__(self) -> str:
        return f"{self.plan} {self.catalog_model_id}"


class ReplicaHours(models.Model):
    """Replica-seconds a model's deployment ran per UTC hour, accumulated by the deployment
    reconciler from the replicas Ray Serve reports running (``replicas_running`` times the time
    since its previous observation). The operator's cost and margin report reads these."""

    catalog_model = models.ForeignKey(
        CatalogModel, on_delete=models.CASCADE, related_name="replica_hours"
    )
    hour = models.DateTimeField(help_text="Start of the UTC hour.")
    replica_seconds = models.FloatField(default=0)

    class Meta:
        ordering = ["-hour"]
        verbose_name = "replica hours"
        verbose_name_plural = "replica hours"
        constraints = [
            models.UniqueConstraint(fields=["catalog_model", "hour"], name="replica_hours_once")
        ]

    def __str__(self) -> str:
        return f"{self.catalog_model_id} {self.hour:%Y-%m-%d %H}h"
