"""The deployment spec (contract 1, ``docs/deployment-spec.md``) as typed, validated values.

``DeploymentSpec`` is the whole desired state of the data plane, as the control plane renders it.
It is not deployed as one piece: Ray Serve gives every deployment of an application the same code
version, a hash of the application's ``args``, so one application holding the whole catalog
restarts every model whenever anything in the catalog changes. The spec is therefore split into
pieces with one concern each (``DeploymentSpec.gateway_args``, ``gateway_config``,
``model_args``):

- the gateway application's ``args`` (``GatewayArgs``): only what a gateway replica needs to
  start (Redis, the broker, the spool folder, its concurrency), which catalog changes never touch;
- the gateway's ``user_config`` (``GatewayConfig``): routes, aliases, prices, timeouts, applied
  in place through Serve's ``reconfigure`` (no restart);
- one application per model, whose ``args`` (``ModelArgs``) hold only what its engine needs to
  start, so a change restarts only that model; its scaling and queue bound travel as deployment
  options, which Serve also applies in place.

The builders refuse a piece they cannot read, so a bad config fails the apply, not a replica.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inference.serving.pricing import Prices

SPEC_VERSION = 1

# Every engine kind a model may name (``model_server.make_engine`` builds each).
EngineName = Literal["vllm", "openai", "synthetic", "llamacpp"]
# How Serve routes among a model's replicas: its default router, or prefix-cache affinity.
RequestRouterName = Literal["default", "prefix_affinity"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySpec(_Strict):
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: int = Field(64, ge=1)
    # An async replica that mostly waits on Redis and model servers: 1,000 concurrent requests
    # per replica is the tested load (tests/serving/test_load.py).
    max_ongoing_requests: int = Field(1024, ge=1)
    num_cpus: float = Field(0.5, ge=0)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    access_cache_ttl_s: float = Field(30.0, gt=0)
    # How long a concurrency/budget lease lives without renewal (renewed while the request
    # runs; a crashed replica's leases are reclaimed after it).
    lease_s: float = Field(600.0, gt=0)


class ScalingSpec(_Strict):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: int = Field(16, ge=1)
    # A scale-to-zero model: seconds idle before its last replica stops (Serve's
    # ``downscale_to_zero_delay_s``). Absent for a model that keeps a replica.
    scale_to_zero_idle_s: float | None = Field(None, ge=0)


class ResourcesSpec(_Strict):
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    accelerator_type: str | None = None


class PlanPrice(_Strict):
    """A plan's own prices of one model (the price book's override of the catalog price)."""

    price_input_per_mtok: Decimal = Field(ge=0)
    price_output_per_mtok: Decimal = Field(ge=0)


class ModelSpec(_Strict):
    name: str
    deployment: str
    engine: EngineName
    source: dict[str, Any] = Field(default_factory=dict)
    engine_args: dict[str, Any] = Field(default_factory=dict)
    context_length: int = Field(ge=1)
    price_input_per_mtok: Decimal = Field(Decimal(0), ge=0)
    price_output_per_mtok: Decimal = Field(Decimal(0), ge=0)
    # Per plan name (``free``, ``standard``, ``premium``): that plan's prices of this model; a
    # plan not listed pays the two prices above. Optional: a spec without it has no overrides.
    plan_prices: dict[str, PlanPrice] = Field(default_factory=dict)
    aliases: list[str] = Field(default_factory=list)
    scaling: ScalingSpec = ScalingSpec()
    resources: ResourcesSpec = ResourcesSpec()
    # Requests waiting for a replica, per gateway replica, beyond which the gateway answers 503.
    max_queued_requests: int = Field(128, ge=1)
    # The longest a request may run; then it is cancelled in the engine.
    request_timeout_s: float = Field(300.0, gt=0)
    request_router: RequestRouterName = "default"
    # Response cache: 0 = off for this model; a hit is metered at ``price_cache_hit_per_mtok``
    # (input and output tokens alike). Optional, so an older spec still validates.
    cache_ttl_s: int = Field(0, ge=0)
    price_cache_hit_per_mtok: Decimal = Field(Decimal(0), ge=0)

    @property
    def max_ongoing_requests(self) -> int:
        """Requests one replica takes at once (the engine batches them); more wait in the
        gateway's handle queue, up to ``max_queued_requests``."""
        return max(self.scaling.target_ongoing_requests * 4, 8)

    @property
    def model_revision(self) -> str:
        """A hash of what decides this model's answers (engine, source, engine arguments; not
        an ``api_key``, which does not): the response cache keys entries by it, so a model that
        changed never replays an older answer (``docs/response-cache.md``). Not in
        ``ModelArgs``: it changes only when they do."""
        what = {
            "engine": self.engine,
            "source": {k: v for k, v in self.source.items() if k != "api_key"},
            "engine_args": self.engine_args,
        }
        canonical = json.dumps(what, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def route(self) -> RouteSpec:
        """The gateway's part of this model: its fields of the same names, and its revision."""
        return RouteSpec(
            **self.model_dump(include=set(RouteSpec.model_fields)),
            model_revision=self.model_revision,
            upstream=self.upstream(),
        )

    def upstream(self) -> UpstreamSpec | None:
        """An ``openai`` model's upstream, which the gateway calls itself (no model
        application, no Ray hop); never its key (``credentials.py`` reads it from Redis)."""
        if self.engine != "openai":
            return None
        return UpstreamSpec(
            base_url=self.source["base_url"],
            model=self.source["model"],
            engine_args=self.engine_args,
        )


class UpstreamSpec(_Strict):
    """What the gateway needs to call an ``openai`` model's upstream in its own process."""

    base_url: str
    model: str
    engine_args: dict[str, Any] = Field(default_factory=dict)


# The stub ingress deployment of a model application whose server has its own request router
# (``routers.py``): here, in the module without Ray, so the gateway and the cluster overview can
# name it without loading Ray's router classes.
ROUTER_INGRESS_DEPLOYMENT = "RouterIngress"


class RouteSpec(_Strict):
    """What the gateway needs to route, reserve for and bill one model (no engine details)."""

    name: str
    deployment: str  # the model's Serve application and deployment name
    engine: EngineName
    context_length: int = Field(ge=1)
    price_input_per_mtok: Decimal = Field(Decimal(0), ge=0)
    price_output_per_mtok: Decimal = Field(Decimal(0), ge=0)
    plan_prices: dict[str, PlanPrice] = Field(default_factory=dict)
    aliases: list[str] = Field(default_factory=list)
    request_timeout_s: float = Field(300.0, gt=0)
    cache_ttl_s: int = Field(0, ge=0)
    price_cache_hit_per_mtok: Decimal = Field(Decimal(0), ge=0)
    # ``ModelSpec.model_revision``; empty (an older spec): the response cache stays off.
    model_revision: str = ""
    # An ``openai`` model: the gateway calls its upstream itself (``ModelSpec.upstream``).
    upstream: UpstreamSpec | None = None
    # The model's request router: a change makes the gateway take a new handle once the
    # model's application is rebuilt (a handle keeps the router it was built with).
    request_router: RequestRouterName = "default"

    def prices_for(self, plan: str | None) -> Prices:
        """The prices a request of an organisation on ``plan`` is charged: the plan's own prices
        of this model if the price book has them, else the catalog's. The one rule: the
        gateway reserves, settles and writes the usage event at what this returns."""
        own = self.plan_prices.get(plan) if plan else None
        if own is not None:
            return Prices(own.price_input_per_mtok, own.price_output_per_mtok)
        return Prices(self.price_input_per_mtok, self.price_output_per_mtok)


class AliasTarget(_Strict):
    """One target of a weighted alias: a model of the spec and its weight (0 drains it)."""

    model: str
    weight: int = Field(ge=0, le=10000)


class AliasSpec(_Strict):
    """A weighted alias (docs/deployment-spec.md, "Weighted aliases"): requests to ``name`` are
    spread over ``targets`` by weight (``inference/serving/splits.py`` chooses). An alias with
    one target is a plain one, listed in its model's ``aliases`` instead."""

    name: str
    targets: list[AliasTarget] = Field(min_length=1)

    @model_validator(mode="after")
    def _weights(self) -> AliasSpec:
        names = [target.model for target in self.targets]
        if len(set(names)) != len(names):
            raise ValueError(f"alias {self.name!r} lists a target twice")
        if sum(target.weight for target in self.targets) <= 0:
            raise ValueError(f"alias {self.name!r}: the weights add up to 0")
        return self


def route_table(
    models: list[RouteSpec], aliases: list[AliasSpec] | None = None
) -> dict[str, RouteSpec]:
    """Every public name (model names, aliases, weighted aliases) to the model that serves it;
    a weighted alias to its heaviest target (what ``/v1/models`` describes; the gateway chooses
    the served one per request). Refuses a name routed twice and a weighted alias whose target
    is not a model of the table."""
    table: dict[str, RouteSpec] = {}
    for model in models:
        for name in (model.name, *model.aliases):
            if name in table:
                raise ValueError(f"public name {name!r} is routed twice")
            table[name] = model
    by_model = {model.name: model for model in models}
    for alias in aliases or []:
        if alias.name in table:
            raise ValueError(f"public name {alias.name!r} is routed twice")
        unknown = [target.model for target in alias.targets if target.model not in by_model]
        if unknown:
            raise ValueError(f"alias {alias.name!r} targets unknown models {unknown}")
        heaviest = max(alias.targets, key=lambda target: target.weight)
        table[alias.name] = by_model[heaviest.model]
    return table


class GatewayArgs(_Strict):
    """The gateway application's ``args``: what a replica needs to start. A change restarts
    the gateway's replicas (and nothing else); catalog changes never touch it."""

    spec_version: Literal[1]
    redis_url: str
    redis_prefix: str = "vl:"
    broker_url: str
    usage_task: str = "billing.ingest_usage"
    usage_queue: str = "usage"
    usage_spool_dir: str
    num_cpus: float = Field(0.5, ge=0)
    max_ongoing_requests: int = Field(1024, ge=1)
    lease_s: float = Field(600.0, gt=0)


class GatewayConfig(_Strict):
    """The gateway's ``user_config``: applied in place by ``Gateway.reconfigure``."""

    revision: str
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    access_cache_ttl_s: float = Field(30.0, gt=0)
    models: list[RouteSpec] = Field(default_factory=list)
    aliases: list[AliasSpec] = Field(default_factory=list)  # weighted aliases

    def routes(self) -> dict[str, RouteSpec]:
        return route_table(self.models, self.aliases)


class ModelArgs(_Strict):
    """One model application's ``args``: what its engine needs to start, nothing else, so
    only a change of these restarts the model. No secret is ever here (an upstream's API key
    reaches the engine from Redis, ``credentials.py``)."""

    spec_version: Literal[1]
    name: str
    deployment: str
    engine: EngineName
    source: dict[str, Any] = Field(default_factory=dict)
    engine_args: dict[str, Any] = Field(default_factory=dict)
    resources: ResourcesSpec = ResourcesSpec()
    request_timeout_s: float = Field(300.0, gt=0)
    redis_url: str
    redis_prefix: str = "vl:"
    # The application's shape, not only an option: under Serve's HAProxy ingress a deployment
    # with its own request router may not be its application's ingress, so ``build_model``
    # puts a stub ingress in front of it (``routers.py``); a change restarts the model.
    request_router: RequestRouterName = "default"


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
    # Weighted aliases (several targets); optional, so an older spec still validates.
    aliases: list[AliasSpec] = Field(default_factory=list)

    def routes(self) -> dict[str, RouteSpec]:
        """Every public name (model names and aliases) to the model that serves it."""
        return route_table([model.route() for model in self.models], self.aliases)

    def gateway_args(self) -> GatewayArgs:
        return GatewayArgs(
            spec_version=self.spec_version,
            redis_url=self.redis_url,
            redis_prefix=self.redis_prefix,
            broker_url=self.broker_url,
            usage_task=self.usage_task,
            usage_queue=self.usage_queue,
            usage_spool_dir=self.usage_spool_dir,
            num_cpus=self.gateway.num_cpus,
            max_ongoing_requests=self.gateway.max_ongoing_requests,
            lease_s=self.gateway.lease_s,
        )

    def gateway_config(self) -> GatewayConfig:
        return GatewayConfig(
            revision=self.revision,
            max_body_bytes=self.gateway.max_body_bytes,
            access_cache_ttl_s=self.gateway.access_cache_ttl_s,
            models=[model.route() for model in self.models],
            aliases=self.aliases,
        )

    def model_args(self, model: ModelSpec) -> ModelArgs:
        """A model's engine part: its fields of the same names, with the spec's Redis (never
        a secret: an ``api_key`` in a source is dropped)."""
        fields = model.model_dump(include=set(ModelArgs.model_fields))
        fields["source"] = {k: v for k, v in model.source.items() if k != "api_key"}
        return ModelArgs(
            **fields,
            spec_version=self.spec_version,
            redis_url=self.redis_url,
            redis_prefix=self.redis_prefix,
        )
