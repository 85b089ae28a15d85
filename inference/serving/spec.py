"""The deployment spec (contract 1, ``docs/deployment-spec.md``) as typed, validated values.

The builder refuses a spec it cannot read, so a bad config fails the apply instead of a replica.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SPEC_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySpec(_Strict):
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: int = Field(64, ge=1)
    max_ongoing_requests: int = Field(256, ge=1)
    num_cpus: float = Field(0.5, ge=0)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    access_cache_ttl_s: float = Field(30.0, gt=0)


class ScalingSpec(_Strict):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: int = Field(16, ge=1)


class ResourcesSpec(_Strict):
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    accelerator_type: str | None = None


class ModelSpec(_Strict):
    name: str
    deployment: str
    engine: Literal["vllm", "openai", "synthetic"]
    source: dict[str, Any] = Field(default_factory=dict)
    engine_args: dict[str, Any] = Field(default_factory=dict)
    context_length: int = Field(ge=1)
    price_input_per_mtok: Decimal = Field(Decimal(0), ge=0)
    price_output_per_mtok: Decimal = Field(Decimal(0), ge=0)
    aliases: list[str] = Field(default_factory=list)
    scaling: ScalingSpec = ScalingSpec()
    resources: ResourcesSpec = ResourcesSpec()


class DeploymentSpec(_Strict):
    spec_version: Literal[1]
    revision: str
    redis_url: str
    redis_prefix: str = "vl:"
    broker_url: str
    usage_task: str = "billing.ingest_usage"
    usage_queue: str = "usage"
    usage_spool_dir: str
    gateway: GatewaySpec = GatewaySpec()
    models: list[ModelSpec] = Field(default_factory=list)

    def routes(self) -> dict[str, ModelSpec]:
        """Every public name (model names and aliases) to the model that serves it."""
        table: dict[str, ModelSpec] = {}
        for model in self.models:
            for name in (model.name, *model.aliases):
                if name in table:
                    raise ValueError(f"public name {name!r} is routed twice")
                table[name] = model
        return table
